"""EG3D super-resolution modules: two StyleGAN2 synthesis blocks driven by the last w, on the raw feature image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import setup_filter
from .synthesis import SynthesisBlock

# name -> (input_resolution, block0 (out_channels, resolution, up), block1 (out_channels, resolution), has
# top-level resample_filter buffer, resize only when smaller than input_resolution)
_SR_SPECS = {
    "SuperresolutionHybrid2X": (64, (128, 64, 1), (64, 128), True, False),
    "SuperresolutionHybrid4X": (128, (128, 128, 1), (64, 256), True, True),
    "SuperresolutionHybrid8X": (128, (128, 256, 2), (64, 512), True, False),
    "SuperresolutionHybrid8XDC": (128, (256, 256, 2), (128, 512), False, False),
}
SR_OUTPUT_RESOLUTION = {name: spec[2][1] for name, spec in _SR_SPECS.items()}


def sr_module_name(name: str) -> str:
    """Accept the original dotted class path (``training.superresolution.SuperresolutionHybrid8XDC``) or the bare name."""
    short = name.rsplit(".", 1)[-1]
    if short not in _SR_SPECS:
        raise ValueError(f"unsupported superresolution_module {name!r}; expected one of {sorted(_SR_SPECS)}")
    return short


class Superresolution(nn.Module):
    """One class for the 2X (128 out), 4X (256 out), 8X and 8XDC (512 out) variants, with the original block layout."""

    def __init__(
        self,
        variant: str,
        channels: int,
        img_resolution: int,
        sr_num_fp16_res: int,
        sr_antialias: bool,
        w_dim: int = 512,
        fused_modconv_default="inference_only",
        block_channels=None,
        **block_kwargs,
    ):
        """``block_channels`` (c0, c1) overrides the original's fixed block widths (e.g. (128, 64) for 2X); only
        for new small models, since released checkpoints need the original widths."""
        super().__init__()
        self.variant = sr_module_name(variant)
        in_res, (c0, r0, up0), (c1, r1), has_filter, only_up = _SR_SPECS[self.variant]
        if block_channels is not None:
            c0, c1 = (int(c) for c in block_channels)
        if img_resolution != r1:
            raise ValueError(f"{self.variant} produces {r1}x{r1} images, but img_resolution is {img_resolution}")
        block_kwargs.pop("channel_base", None)  # ignored by the original SR modules
        block_kwargs.pop("channel_max", None)
        block_kwargs.pop("num_fp16_res", None)
        block_kwargs.pop("conv_clamp", None)
        use_fp16 = sr_num_fp16_res > 0
        conv_clamp = 256 if use_fp16 else None  # the original ties the clamp to fp16, also when running in fp32
        self.input_resolution, self.sr_antialias, self.only_upsample = in_res, sr_antialias, only_up
        common = dict(use_fp16=use_fp16, conv_clamp=conv_clamp, fused_modconv_default=fused_modconv_default, **block_kwargs)
        self.block0 = SynthesisBlock(channels, c0, w_dim, r0, 3, is_last=False, up=up0, **common)
        self.block1 = SynthesisBlock(c0, c1, w_dim, r1, 3, is_last=True, **common)
        if has_filter:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, **block_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb [N, 3, r, r], x [N, C, r, r] (raw feature image), ws [N, num_ws, w_dim] -> (image [N, 3, R, R],
        raw image as the original returns it [N, 3, r, r]).

        The original accumulates ToRGB outputs in place (``img.add_(y)``). When no resize happens and block0 does
        not up-sample (2X at 64, 4X at 128: e.g. the ShapeNet models), that writes block0's ToRGB output into the
        caller's raw image, so the original's ``image_raw`` is ``rgb + torgb0``. It is reproduced here so outputs
        match the released models; ``image`` is unaffected.
        """
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        raw = rgb
        size = x.shape[-1]
        resized = (size < self.input_resolution) if self.only_upsample else (size != self.input_resolution)
        if resized:
            resize = dict(size=(self.input_resolution, self.input_resolution), mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            x = F.interpolate(x, **resize)
            rgb = F.interpolate(rgb, **resize)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        if not resized and self.block0.up == 1:
            raw = rgb
        x, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return rgb, raw

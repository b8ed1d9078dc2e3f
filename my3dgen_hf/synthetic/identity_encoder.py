"""The SynthHeads identity encoder: the role ArcFace plays for real faces, for the SynthHeads world.

A small residual CNN trained on SynthHeads identity labels with an additive angular-margin (ArcFace) loss, so that
views of one identity (any pose, expression, lighting, background or occluder) map close together on the unit
sphere and different identities map apart. The ID similarity metrics use it on SynthHeads images::

    from my3dgen_hf.synthetic.identity_encoder import load_synthheads_identity_encoder

    encoder = load_synthheads_identity_encoder().eval()     # the copy that ships in my3dgen_hf/assets/
    emb = encoder(images)                                    # images [N, 3, H, W] in [-1, 1] -> [N, D], unit norm
    sim = (emb[0] * emb[1]).sum()                            # cosine similarity

Inputs of any size are resized to the training resolution (``config.resolution``) with antialiased bilinear
interpolation. Training: ``training/train_identity_encoder.py``; the shipped copy's data, command and verification
results are in ``my3dgen_hf/assets/synthheads-identity-encoder/README.md`` and ``eval.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = [
    "SHIPPED_IDENTITY_ENCODER",
    "SynthHeadsIdentityEncoder",
    "load_synthheads_identity_encoder",
]

SHIPPED_IDENTITY_ENCODER = Path(__file__).resolve().parent.parent / "assets" / "synthheads-identity-encoder"


class _BasicBlock(nn.Module):
    """ResNet basic block (conv-BN-ReLU-conv-BN + shortcut, ReLU after the sum)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


class SynthHeadsIdentityEncoder(ModelMixin, ConfigMixin):
    """Images ``[N, 3, H, W]`` in ``[-1, 1]`` -> L2-normalised identity embeddings ``[N, embedding_dim]``.

    Architecture: a stride-2 3x3 stem, then one residual stage per entry of ``channels`` (the first at the stem's
    resolution, every later one halving it, ``blocks_per_stage`` basic blocks each), then a global depthwise
    convolution over the final ``resolution / 2**len(channels)`` map (MobileFaceNet's GDC: keeps where on the face a
    feature is, unlike average pooling), a linear projection and BatchNorm1d, as in ArcFace's output head.

    Args:
        resolution: training resolution; every input is resized to ``resolution x resolution`` (antialiased
            bilinear) first. Must be divisible by ``2**len(channels)``.
        channels: widths of the residual stages.
        blocks_per_stage: basic blocks per stage (an int for all stages, or one per stage).
        embedding_dim: D.
        dropout: dropout before the projection (training only).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        resolution: int = 64,
        channels: Sequence[int] = (32, 64, 128, 192),
        blocks_per_stage: int | Sequence[int] = 1,
        embedding_dim: int = 128,
        dropout: float = 0.0,
        stem_channels: int | None = None,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if isinstance(blocks_per_stage, int):
            blocks = [blocks_per_stage] * len(channels)
        else:
            blocks = [int(b) for b in blocks_per_stage]
        if len(blocks) != len(channels):
            raise ValueError(f"blocks_per_stage has {len(blocks)} entries for {len(channels)} stages")
        final = int(resolution) // (2 ** len(channels))
        if final < 1 or final * 2 ** len(channels) != int(resolution):
            raise ValueError(f"resolution {resolution} must be a multiple of 2**len(channels) = {2 ** len(channels)}")
        stem = int(stem_channels or channels[0])
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        layers = []
        cin = stem
        for s, (cout, nb) in enumerate(zip(channels, blocks)):
            for b in range(nb):
                layers.append(_BasicBlock(cin, cout, stride=2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.gdc = nn.Sequential(nn.Conv2d(cin, cin, final, groups=cin, bias=False), nn.BatchNorm2d(cin))
        self.drop = nn.Dropout(float(dropout))
        self.proj = nn.Linear(cin, int(embedding_dim), bias=False)
        self.bn_out = nn.BatchNorm1d(int(embedding_dim))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Clamp to [-1, 1] and resize to ``config.resolution`` (antialiased bilinear) when the size differs."""
        if images.ndim == 3:
            images = images.unsqueeze(0)
        p = self.stem[0].weight
        x = images.to(device=p.device, dtype=p.dtype).clamp(-1, 1)
        r = int(self.config.resolution)
        if tuple(x.shape[-2:]) != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings ``[N, D]`` (what the margin loss's normalisation sees)."""
        x = self.body(self.stem(self.preprocess(images)))
        x = self.gdc(x).flatten(1)
        return self.bn_out(self.proj(self.drop(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(images), dim=1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The :class:`~my3dgen_hf.metrics.identity.IdentityBackbone` interface (same as ``forward``)."""
        return self(images)


def load_synthheads_identity_encoder(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> SynthHeadsIdentityEncoder:
    """Load an identity encoder folder (``config.json`` + safetensors), in eval mode.

    ``path=None`` loads the copy that ships with the package (``my3dgen_hf/assets/synthheads-identity-encoder``);
    the Hub-style name ``"my3dgen-hf/synthheads-identity-encoder"`` also resolves to it.
    """
    if path is None:
        path = SHIPPED_IDENTITY_ENCODER
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"the SynthHeads identity encoder should ship at {path}, but it is missing: reinstall the package "
                "or train one with training/train_identity_encoder.py"
            )
    else:
        from my3dgen_hf.assets import resolve_pretrained

        path = resolve_pretrained(path if not isinstance(path, Path) else str(path))
    model = SynthHeadsIdentityEncoder.from_pretrained(str(path), use_safetensors=True)
    if device is not None:
        model = model.to(device)
    return model.eval()

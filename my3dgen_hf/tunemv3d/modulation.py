"""Multi-view modulation: encoder O, a trainable copy of the frozen UNet's encoder, turns the rendered x0^i into
residuals for the frozen UNet's decoder.

    h_0     = conv_in(x0^i) + E_xt(x_t^i)               E_xt: the lightweight encoder of the raw x_t (zero output conv)
    h_1..L  = down blocks + mid block of O (initialized from the UNet)
    r_l     = zero_conv_l(h_l)                          1x1 convolutions, weights and bias 0
    eps     = UNet(x_t, t, c; skip_l += r_l, mid += r_mid)

At initialization every r_l is exactly 0, so the model is the frozen 2D model. This is diffusers' ControlNet
with ``sample = x0 render``, ``controlnet_cond = x_t`` and a one-level conditioning encoder that keeps the latent
resolution; the frozen ``UNet2DConditionModel`` takes the residuals through its
``down_block_additional_residuals`` / ``mid_block_additional_residual`` arguments.

Two switches reproduce the ablations of TuneMV3D's supplement (Sec. D); both are stored in the config:

* ``use_raw_xt=False``: O sees only the renders, ``h_0 = conv_in(x0^i)``; the raw-x_t encoder is removed.
* ``in_channels = F`` (``from_unet(..., render_channels=F)``): O takes F-channel rendered *features* instead of the
  4-channel x0 (the interactive module's ``render_target="features"``); ``conv_in`` is then freshly initialized.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' loader looks the base class up in this module
from torch import nn


class NoRawXtEncoder(nn.Module):
    """Stands in for the raw-x_t encoder when ``use_raw_xt=False``: adds nothing to O's input."""

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        return x_t.new_zeros(())


class TuneMV3DModulationModel(ControlNetModel):
    """Encoder O + raw-x_t encoder + zero convolutions (a ``ControlNetModel``; ModelMixin, ConfigMixin, PeftAdapterMixin).

    ``use_raw_xt`` (config, default True): feed the raw x_t into O through the x_t encoder. False is the
    supplement's ablation; O's input is then the render alone. The other arguments are ``ControlNetModel``'s.
    """

    def __init__(self, *args, use_raw_xt: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_use_raw_xt(use_raw_xt)

    def _set_use_raw_xt(self, use_raw_xt: bool) -> None:
        self.register_to_config(use_raw_xt=bool(use_raw_xt))
        if not use_raw_xt:
            self.controlnet_cond_embedding = NoRawXtEncoder()

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        xt_encoder_channels: Sequence[int] = (16,),
        load_weights_from_unet: bool = True,
        use_raw_xt: bool = True,
        render_channels: Optional[int] = None,
        **kwargs,
    ) -> "TuneMV3DModulationModel":
        """Copy the UNet's encoder (conv_in, time embedding, down blocks, mid block) and add zero-initialized 1x1
        output convolutions. ``xt_encoder_channels``: widths of the raw-x_t encoder (one entry: no downsampling).
        ``use_raw_xt=False``: no raw-x_t encoder (ablation). ``render_channels``: channels of the renders O takes
        when they are not the UNet's latents (the rendered-features ablation): ``conv_in`` is then a fresh
        convolution from that many channels; the rest of O is still the UNet's encoder."""
        model = super().from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(xt_encoder_channels),
            load_weights_from_unet=load_weights_from_unet,
            conditioning_channels=unet.config.in_channels,
            **kwargs,
        )
        if not use_raw_xt:
            model._set_use_raw_xt(False)
        if render_channels is not None and int(render_channels) != model.config.in_channels:
            old = model.conv_in
            model.conv_in = nn.Conv2d(int(render_channels), old.out_channels, old.kernel_size, padding=old.padding).to(old.weight)
            model.register_to_config(in_channels=int(render_channels))
        return model

    def residuals(
        self, x0_render: torch.Tensor, x_t: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, conditioning_scale: float = 1.0
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """x0 renders and x_t [N, C, h, w] -> (down residuals per UNet skip connection, mid residual)."""
        return self(
            sample=x0_render, timestep=timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=x_t,
            conditioning_scale=conditioning_scale, return_dict=False,
        )


def _with_use_raw_xt(init, parent_init):
    """``__init__``'s signature as diffusers reads it (config keys): ControlNetModel's parameters + ``use_raw_xt``."""
    params = list(inspect.signature(parent_init).parameters.values())
    extra = inspect.Parameter("use_raw_xt", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool)
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    init.__signature__ = inspect.Signature([p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD] + [extra] + var_kw)
    return init


_with_use_raw_xt(TuneMV3DModulationModel.__init__, ControlNetModel.__init__)

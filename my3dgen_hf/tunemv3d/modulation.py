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
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' loader looks the base class up in this module


class TuneMV3DModulationModel(ControlNetModel):
    """Encoder O + raw-x_t encoder + zero convolutions (a ``ControlNetModel``; ModelMixin, ConfigMixin, PeftAdapterMixin)."""

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        xt_encoder_channels: Sequence[int] = (16,),
        load_weights_from_unet: bool = True,
        **kwargs,
    ) -> "TuneMV3DModulationModel":
        """Copy the UNet's encoder (conv_in, time embedding, down blocks, mid block) and add zero-initialized 1x1
        output convolutions. ``xt_encoder_channels``: widths of the raw-x_t encoder (one entry: no downsampling)."""
        return super().from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(xt_encoder_channels),
            load_weights_from_unet=load_weights_from_unet,
            conditioning_channels=unet.config.in_channels,
            **kwargs,
        )

    def residuals(
        self, x0_render: torch.Tensor, x_t: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, conditioning_scale: float = 1.0
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """x0 renders and x_t [N, C, h, w] -> (down residuals per UNet skip connection, mid residual)."""
        return self(
            sample=x0_render, timestep=timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=x_t,
            conditioning_scale=conditioning_scale, return_dict=False,
        )

"""One TuneMV3D denoising step: interactive diffusion -> multi-view modulation -> frozen UNet.

Shared by the pipeline and the training script (which passes its accelerate-wrapped modules).
"""

from __future__ import annotations

from typing import Optional

import torch

from .interactive import TuneMV3DInteractiveModel, TuneMV3DInteractiveOutput
from .modulation import TuneMV3DModulationModel


def predict_noise(
    unet,
    interactive: TuneMV3DInteractiveModel,
    modulation: TuneMV3DModulationModel,
    sample: torch.Tensor,
    timestep,
    encoder_hidden_states: torch.Tensor,
    cameras: torch.Tensor,
    novel_cameras: Optional[torch.Tensor] = None,
    view_chunk_size: Optional[int] = None,
    ray_chunk_size: Optional[int] = None,
    conditioning_scale: float = 1.0,
) -> tuple[torch.Tensor, TuneMV3DInteractiveOutput]:
    """x_t [B, n, C, h, w], t [B] or scalar, text [B, L, D], cameras [B, n, 25] (novel [B, n', 25])
    -> the UNet's prediction (eps or v) [B, n, C, h, w] and the interactive output (renders of n + n' views)."""
    B, n = sample.shape[:2]
    inter = interactive(sample, timestep, encoder_hidden_states, cameras, novel_cameras, view_chunk_size, ray_chunk_size)
    x0 = inter.x0[:, :n].flatten(0, 1)  # renders of the input views [B n, C, h, w]
    x_t = sample.flatten(0, 1)
    t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(B).repeat_interleave(n)  # [B n]
    text = encoder_hidden_states.repeat_interleave(n, 0)  # [B n, L, D]
    unet_dtype, modulation_dtype = _dtype(unet), _dtype(modulation)

    c = view_chunk_size or x_t.shape[0]
    preds = []
    for i in range(0, x_t.shape[0], c):
        s = slice(i, i + c)
        down, mid = modulation(
            sample=x0[s].to(modulation_dtype), timestep=t[s], encoder_hidden_states=text[s].to(modulation_dtype),
            controlnet_cond=x_t[s].to(modulation_dtype), conditioning_scale=conditioning_scale, return_dict=False,
        )
        preds.append(
            unet(
                x_t[s].to(unet_dtype), t[s], encoder_hidden_states=text[s].to(unet_dtype),
                down_block_additional_residuals=[r.to(unet_dtype) for r in down], mid_block_additional_residual=mid.to(unet_dtype),
                return_dict=False,
            )[0]
        )
    return torch.cat(preds).unflatten(0, (B, n)), inter


def _dtype(model: torch.nn.Module) -> torch.dtype:
    """The parameter dtype of a model, also through DDP / compile wrappers."""
    return next(model.parameters()).dtype

"""OSGDecoder: tri-plane features -> (sigma, rgb/features)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import FullyConnectedLayer


class OSGDecoder(nn.Module):
    def __init__(self, n_features: int = 32, hidden_dim: int = 64, output_dim: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor) -> dict[str, torch.Tensor]:
        # sampled_features: [N, 3 planes, M, C]; directions are unused (view-independent colour).
        x = sampled_features.mean(1)  # [N, M, C]
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # MipNeRF's widened sigmoid
        sigma = x[..., 0:1]
        return {"rgb": rgb, "sigma": sigma}

"""The latent NeuS field of interactive diffusion and its volume renderer.

For a 3D point p the field gathers the features f^i of the n views that see it (mean and variance across
them), and maps

    [gamma(p), p]  +  lin_z([mean, var, t_emb])  --ResNetFC-->  h,
    sdf(p)  = ||p|| - r0 + w_sdf . h          (a sphere of radius r0 at initialization),
    x0(p,d) = MLP([h, d])                     (the latent's channels, view direction d unencoded),

with gamma(p) = (sin(omega 2^k p), cos(omega 2^k p)), k < M (M = 6; omega = 1.5 for chair-like data, 2.0 for
Objaverse-like data). The SDF never sees d, so it is a proper scalar field (mesh extraction needs one).

The renderer integrates x0 along pixel rays with the NeuS unbiased discrete opacity (NeuS eq. 13)

    alpha_i = max((Phi_s(sdf_i) - Phi_s(sdf_{i+1})) / Phi_s(sdf_i), 0),   Phi_s(x) = sigmoid(s x),

between consecutive samples, with s = exp(10 v) learned, and NeuS's hierarchical up-sampling (fixed s = 64 2^k).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cameras import project_points

# field_fn(points [B, R, S, 3], dirs [B, R, S, 3] | None) -> (sdf [B, R, S], values [B, R, S, C] | None)
FieldFn = Callable[[torch.Tensor, Optional[torch.Tensor]], tuple]


class PositionalEncoding(nn.Module):
    """[p, sin(omega 2^k p), cos(omega 2^k p)] for k < num_freqs: [..., 3] -> [..., 3 + 6 num_freqs]."""

    def __init__(self, num_freqs: int = 6, omega: float = 1.5):
        super().__init__()
        self.register_buffer("freqs", omega * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)
        self.out_dim = 3 + 6 * num_freqs

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        angles = (p[..., None, :] * self.freqs[:, None]).flatten(-2)  # [..., 3M]
        return torch.cat([p, angles.sin(), angles.cos()], dim=-1)


class ResnetBlockFC(nn.Module):
    """pixelNeRF's fully connected residual block: x + fc_1(relu(fc_0(relu(x)))), fc_1 zero-initialized."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc_0 = nn.Linear(dim, dim)
        self.fc_1 = nn.Linear(dim, dim)
        nn.init.zeros_(self.fc_1.weight)
        nn.init.zeros_(self.fc_1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc_1(F.relu(self.fc_0(F.relu(x))))


def aggregate_view_features(points: torch.Tensor, features: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """Mean and variance of the view features at each point, over the views that see it.

    points [B, P, 3], features [B, n, F, h, w], cameras [B, n, 25] -> [B, P, 2F] (zeros where no view sees p).
    """
    B, n = features.shape[:2]
    uv, z = project_points(points, cameras)  # [B, n, P, 2], [B, n, P]
    visible = (z > 1e-4) & (uv >= 0).all(-1) & (uv <= 1).all(-1)  # [B, n, P]
    grid = (2 * uv - 1).flatten(0, 1)[:, :, None].to(features.dtype)  # [B n, P, 1, 2]
    f = F.grid_sample(features.flatten(0, 1), grid, align_corners=False, padding_mode="border")  # [B n, F, P, 1]
    f = f[..., 0].unflatten(0, (B, n)).transpose(-1, -2)  # [B, n, P, F]
    w = visible[..., None].to(f.dtype)
    count = w.sum(1).clamp(min=1.0)  # [B, P, 1]
    mean = (w * f).sum(1) / count
    var = (w * (f - mean[:, None]) ** 2).sum(1) / count
    return torch.cat([mean, var], dim=-1)


class NeuSField(nn.Module):
    """(points, aggregated view features, timestep embedding, view direction) -> (sdf, x0)."""

    def __init__(
        self,
        feature_channels: int,
        time_embed_dim: int,
        out_channels: int,
        hidden_dim: int = 128,
        num_blocks: int = 5,
        num_freqs: int = 6,
        omega: float = 1.5,
        init_radius: float = 0.5,
    ):
        super().__init__()
        self.init_radius = init_radius
        self.encoding = PositionalEncoding(num_freqs, omega)
        self.lin_in = nn.Linear(self.encoding.out_dim, hidden_dim)
        self.lin_z = nn.ModuleList([nn.Linear(2 * feature_channels + time_embed_dim, hidden_dim) for _ in range(num_blocks)])
        self.blocks = nn.ModuleList([ResnetBlockFC(hidden_dim) for _ in range(num_blocks)])
        self.sdf_out = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.sdf_out.weight)
        nn.init.zeros_(self.sdf_out.bias)
        self.x0_out = nn.Sequential(nn.Linear(hidden_dim + 3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_channels))

    def forward(self, points: torch.Tensor, condition: torch.Tensor, dirs: Optional[torch.Tensor] = None):
        """points [B, P, 3], condition [B, P, 2F + T], dirs [B, P, 3] or None -> sdf [B, P], x0 [B, P, C] or None."""
        h = self.lin_in(self.encoding(points))
        for block, lin_z in zip(self.blocks, self.lin_z):
            h = block(h + lin_z(condition))
        sdf = points.norm(dim=-1) - self.init_radius + self.sdf_out(h)[..., 0]
        x0 = self.x0_out(torch.cat([F.relu(h), dirs], dim=-1)) if dirs is not None else None
        return sdf, x0


# ------------------------------------------------------------------------------------------------- rendering
def ray_sphere_bounds(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float):
    """near, far [...] where the rays enter and leave the sphere |p| = radius, and which rays hit it."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius**2
    disc = b * b - c
    sq = disc.clamp(min=0).sqrt()
    near, far = (-b - sq).clamp(min=0), -b + sq
    hit = (disc > 0) & (far > near)
    return torch.where(hit, near, torch.zeros_like(near)), torch.where(hit, far, torch.ones_like(far)), hit


def neus_alpha(sdf: torch.Tensor, inv_s) -> torch.Tensor:
    """Unbiased discrete opacity of the sections between consecutive samples: [..., S] -> [..., S-1]."""
    phi = torch.sigmoid(sdf * inv_s)
    prev, nxt = phi[..., :-1], phi[..., 1:]
    return ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0.0, 1.0)


def alpha_to_weights(alpha: torch.Tensor) -> torch.Tensor:
    """w_i = alpha_i prod_{j<i} (1 - alpha_j)."""
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-7], dim=-1), dim=-1)
    return alpha * transmittance[..., :-1]


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """Deterministic inverse-CDF samples [..., n] from piecewise-constant weights [..., S-1] on bins [..., S]."""
    pdf = weights + 1e-5
    pdf = pdf / pdf.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], dim=-1)  # [..., S]
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=bins.device, dtype=bins.dtype).expand(*cdf.shape[:-1], n).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    below, above = (idx - 1).clamp(0, cdf.shape[-1] - 1), idx.clamp(0, cdf.shape[-1] - 1)
    cdf0, cdf1 = cdf.gather(-1, below), cdf.gather(-1, above)
    bin0, bin1 = bins.gather(-1, below), bins.gather(-1, above)
    denom = torch.where(cdf1 - cdf0 < 1e-5, torch.ones_like(cdf0), cdf1 - cdf0)
    return bin0 + (u - cdf0) / denom * (bin1 - bin0)


class NeuSRenderer(nn.Module):
    """Volume rendering of an SDF field inside the sphere of radius ``bound`` with NeuS opacity."""

    def __init__(self, num_samples: int = 64, num_importance: int = 64, up_sample_steps: int = 4, bound: float = 1.0, init_variance: float = 0.3):
        super().__init__()
        if num_importance and num_importance % up_sample_steps:
            raise ValueError("num_importance must be a multiple of up_sample_steps")
        self.num_samples, self.num_importance, self.up_sample_steps, self.bound = num_samples, num_importance, up_sample_steps, bound
        self.variance = nn.Parameter(torch.tensor(float(init_variance)))

    @property
    def inv_s(self) -> torch.Tensor:
        """The sharpness s of the logistic density, exp(10 v)."""
        return torch.exp(10.0 * self.variance).clamp(1e-6, 1e6)

    def forward(self, field_fn: FieldFn, rays_o: torch.Tensor, rays_d: torch.Tensor, background: Optional[torch.Tensor] = None) -> dict:
        """rays [B, R, 3] -> values [B, R, C] (composited over ``background`` [C]), opacity [B, R], depth [B, R]."""
        near, far, hit = ray_sphere_bounds(rays_o, rays_d, self.bound)  # [B, R]
        steps = torch.linspace(0.0, 1.0, self.num_samples, device=rays_o.device, dtype=rays_o.dtype)
        z = near[..., None] + (far - near)[..., None] * steps  # [B, R, S]

        def points(z):
            return rays_o[..., None, :] + rays_d[..., None, :] * z[..., None]  # [B, R, S, 3]

        if self.num_importance > 0:
            with torch.no_grad():
                sdf = field_fn(points(z), None)[0]
                for k in range(self.up_sample_steps):
                    weights = alpha_to_weights(neus_alpha(sdf, 64.0 * 2**k))
                    z_new = sample_pdf(z, weights, self.num_importance // self.up_sample_steps)
                    sdf_new = field_fn(points(z_new), None)[0]
                    z, order = torch.sort(torch.cat([z, z_new], -1), dim=-1)
                    sdf = torch.cat([sdf, sdf_new], -1).gather(-1, order)
            z = z.detach()

        dirs = rays_d[..., None, :].expand(*z.shape, 3)
        sdf, values = field_fn(points(z), dirs)  # [B, R, S], [B, R, S, C]
        weights = alpha_to_weights(neus_alpha(sdf, self.inv_s)) * hit[..., None]  # [B, R, S-1]
        values_mid = 0.5 * (values[..., :-1, :] + values[..., 1:, :])
        z_mid = 0.5 * (z[..., :-1] + z[..., 1:])
        opacity = weights.sum(-1)
        out = (weights[..., None] * values_mid).sum(-2)
        if background is not None:
            out = out + (1.0 - opacity[..., None]) * background
        depth = (weights * z_mid).sum(-1) / opacity.clamp(min=1e-6)
        return {"values": out, "opacity": opacity, "depth": depth}

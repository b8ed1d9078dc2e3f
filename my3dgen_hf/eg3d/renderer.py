"""Tri-plane volume rendering: ray sampler, plane sampling, importance renderer and the Mip ray marcher."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


def generate_planes() -> torch.Tensor:
    """Plane axes of the original: XY, XZ and ZX. The third should have been YZ, but the released weights were
    trained with this projection (NVlabs/eg3d#67), so it is kept."""
    return torch.tensor(
        [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]],
        dtype=torch.float32,
    )


def project_onto_planes(plane_axes: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """coordinates [N, M, 3] -> 2-D plane coordinates [N * n_planes, M, 2]."""
    n, m, _ = coordinates.shape
    n_planes = plane_axes.shape[0]
    coordinates = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3)
    inv_planes = torch.linalg.inv(plane_axes).unsqueeze(0).expand(n, -1, -1, -1).reshape(n * n_planes, 3, 3)
    return torch.bmm(coordinates, inv_planes)[..., :2]


def sample_from_planes(plane_axes: torch.Tensor, plane_features: torch.Tensor, coordinates: torch.Tensor, box_warp: float) -> torch.Tensor:
    """plane_features [N, 3, C, H, W], coordinates [N, M, 3] -> features [N, 3, M, C] (bilinear, zeros outside)."""
    n, n_planes, c, h, w = plane_features.shape
    m = coordinates.shape[1]
    plane_features = plane_features.reshape(n * n_planes, c, h, w)
    projected = project_onto_planes(plane_axes, (2 / box_warp) * coordinates).unsqueeze(1)  # [N*3, 1, M, 2]
    out = F.grid_sample(plane_features, projected.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)


def ray_limits_box(rays_o: torch.Tensor, rays_d: torch.Tensor, box_side_length: float):
    """Entry/exit distances [..., 1] of rays with the axis-aligned box of the given side (slab method);
    misses get start -1 and end -2."""
    shape = rays_o.shape
    rays_o = rays_o.detach().reshape(-1, 3)
    rays_d = rays_d.detach().reshape(-1, 3)
    half = box_side_length / 2
    with torch.no_grad():
        inv = 1 / rays_d
        t0 = (-half - rays_o) * inv
        t1 = (half - rays_o) * inv
        tmin = torch.minimum(t0, t1).amax(dim=-1)
        tmax = torch.maximum(t0, t1).amin(dim=-1)
        valid = tmax >= tmin
        tmin = torch.where(valid, tmin, torch.full_like(tmin, -1.0))
        tmax = torch.where(valid, tmax, torch.full_like(tmax, -2.0))
    return tmin.reshape(*shape[:-1], 1), tmax.reshape(*shape[:-1], 1)


class RaySampler(nn.Module):
    """One ray per pixel centre for OpenCV cam2world [N, 4, 4] and normalized intrinsics [N, 3, 3]."""

    def forward(self, cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int):
        n, m = cam2world.shape[0], resolution**2
        cam_locs = cam2world[:, :3, 3]
        fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]
        cx, cy, sk = intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 0, 1]
        ar = torch.arange(resolution, dtype=torch.float32, device=cam2world.device)
        uv = torch.stack(torch.meshgrid(ar, ar, indexing="ij")) * (1.0 / resolution) + (0.5 / resolution)
        uv = uv.flip(0).reshape(2, -1).transpose(1, 0).unsqueeze(0).repeat(n, 1, 1)  # [N, M, (x=col, y=row)]
        x_cam, y_cam = uv[:, :, 0], uv[:, :, 1]
        z_cam = torch.ones((n, m), device=cam2world.device)
        fx, fy, cx, cy, sk = (t.unsqueeze(-1) for t in (fx, fy, cx, cy, sk))
        x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
        y_lift = (y_cam - cy) / fy * z_cam
        cam_rel = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
        world_rel = torch.bmm(cam2world, cam_rel.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
        ray_dirs = F.normalize(world_rel - cam_locs[:, None, :], dim=2)
        ray_origins = cam_locs.unsqueeze(1).repeat(1, m, 1)
        return ray_origins, ray_dirs  # [N, M, 3] each


class MipRayMarcher(nn.Module):
    """Quadrature at interval midpoints with sigma = softplus(sigma_raw - 1) (the original ``MipRayMarcher2``)."""

    def forward(self, colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, rendering_options: dict):
        # colors [N, M, S, C], densities/depths [N, M, S, 1]
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
        if rendering_options.get("clamp_mode", "softplus") != "softplus":
            raise ValueError("MipRayMarcher only supports clamp_mode='softplus'")
        densities_mid = F.softplus(densities_mid - 1)
        alpha = 1 - torch.exp(-densities_mid * deltas)
        alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
        weights = alpha * torch.cumprod(alpha_shifted, -2)[:, :, :-1]  # [N, M, S-1, 1]
        composite_rgb = torch.sum(weights * colors_mid, -2)
        weight_total = weights.sum(2)
        composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
        composite_depth = torch.nan_to_num(composite_depth, float("inf"))
        composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
        if rendering_options.get("white_back", False):
            composite_rgb = composite_rgb + 1 - weight_total
        return composite_rgb * 2 - 1, composite_depth, weights


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, deterministic: bool = False, eps: float = 1e-5):
    """Inverse-CDF sampling of ``n_samples`` depths per ray from piecewise-constant ``weights`` over ``bins``.
    ``deterministic`` uses u = linspace(0, 1) instead of uniform random u."""
    n_rays, n_bins = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [R, n_bins + 1]
    if deterministic:
        u = torch.linspace(0, 1, n_samples, device=bins.device).expand(n_rays, n_samples)
    else:
        u = torch.rand(n_rays, n_samples, device=bins.device)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, n_bins)
    inds_sampled = torch.stack([below, above], -1).view(n_rays, 2 * n_samples)
    cdf_g = torch.gather(cdf, 1, inds_sampled).view(n_rays, n_samples, 2)
    bins_g = torch.gather(bins, 1, inds_sampled).view(n_rays, n_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)  # empty bins are never sampled
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


class ImportanceRenderer(nn.Module):
    """Two-pass volume rendering of tri-planes: stratified coarse samples, then importance samples."""

    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher()
        self.register_buffer("plane_axes", generate_planes(), persistent=False)

    def forward(
        self,
        planes: torch.Tensor,  # [N, 3, C, H, W]
        decoder: nn.Module,
        ray_origins: torch.Tensor,  # [N, M, 3]
        ray_directions: torch.Tensor,  # [N, M, 3]
        rendering_options: dict,
        deterministic: bool = False,
    ):
        opts = rendering_options
        if opts["ray_start"] == opts["ray_end"] == "auto":
            ray_start, ray_end = ray_limits_box(ray_origins, ray_directions, opts["box_warp"])
            valid = ray_end > ray_start
            if torch.any(valid).item():
                ray_start[~valid] = ray_start[valid].min()
                ray_end[~valid] = ray_start[valid].max()
        else:
            ray_start, ray_end = opts["ray_start"], opts["ray_end"]
        depths_coarse = self.sample_stratified(
            ray_origins, ray_start, ray_end, opts["depth_resolution"], opts.get("disparity_space_sampling", False), deterministic
        )
        n, m, s, _ = depths_coarse.shape
        colors_coarse, densities_coarse = self._query(planes, decoder, ray_origins, ray_directions, depths_coarse, opts)

        n_importance = opts.get("depth_resolution_importance", 0)
        if n_importance > 0:
            _, _, weights = self.ray_marcher(colors_coarse, densities_coarse, depths_coarse, opts)
            depths_fine = self.sample_importance(depths_coarse, weights, n_importance, deterministic)
            colors_fine, densities_fine = self._query(planes, decoder, ray_origins, ray_directions, depths_fine, opts)
            depths, colors, densities = self.unify_samples(
                depths_coarse, colors_coarse, densities_coarse, depths_fine, colors_fine, densities_fine
            )
        else:
            depths, colors, densities = depths_coarse, colors_coarse, densities_coarse
        rgb, depth, weights = self.ray_marcher(colors, densities, depths, opts)
        return rgb, depth, weights.sum(2)  # [N, M, C], [N, M, 1], [N, M, 1]

    def _query(self, planes, decoder, ray_origins, ray_directions, depths, opts):
        n, m, s, _ = depths.shape
        coords = (ray_origins.unsqueeze(-2) + depths * ray_directions.unsqueeze(-2)).reshape(n, -1, 3)
        dirs = ray_directions.unsqueeze(-2).expand(-1, -1, s, -1).reshape(n, -1, 3)
        out = self.run_model(planes, decoder, coords, dirs, opts)
        return out["rgb"].reshape(n, m, s, -1), out["sigma"].reshape(n, m, s, 1)

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options) -> dict[str, torch.Tensor]:
        features = sample_from_planes(self.plane_axes.to(planes.device), planes, sample_coordinates, box_warp=options["box_warp"])
        out = decoder(features, sample_directions)
        if options.get("density_noise", 0) > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * options["density_noise"]
        return out

    @staticmethod
    def unify_samples(depths1, colors1, densities1, depths2, colors2, densities2):
        depths = torch.cat([depths1, depths2], dim=-2)
        colors = torch.cat([colors1, colors2], dim=-2)
        densities = torch.cat([densities1, densities2], dim=-2)
        _, idx = torch.sort(depths, dim=-2)
        depths = torch.gather(depths, -2, idx)
        colors = torch.gather(colors, -2, idx.expand(-1, -1, -1, colors.shape[-1]))
        densities = torch.gather(densities, -2, idx.expand(-1, -1, -1, 1))
        return depths, colors, densities

    @staticmethod
    def sample_stratified(ray_origins, ray_start, ray_end, depth_resolution, disparity_space_sampling=False, deterministic=False):
        """Depths [N, M, S, 1]: linspace(ray_start, ray_end) plus (unless deterministic) U(0, 1) * spacing jitter."""
        n, m, _ = ray_origins.shape
        device = ray_origins.device

        def jitter(d, delta):
            return d if deterministic else d + torch.rand_like(d) * delta

        if disparity_space_sampling:
            t = torch.linspace(0, 1, depth_resolution, device=device).reshape(1, 1, depth_resolution, 1).repeat(n, m, 1, 1)
            t = jitter(t, 1 / (depth_resolution - 1))
            return 1.0 / (1.0 / ray_start * (1.0 - t) + 1.0 / ray_end * t)
        if isinstance(ray_start, torch.Tensor):
            steps = torch.arange(depth_resolution, dtype=torch.float32, device=device) / (depth_resolution - 1)
            depths = ray_start.unsqueeze(-2) + steps.reshape(1, 1, -1, 1) * (ray_end - ray_start).unsqueeze(-2)
            return jitter(depths, ((ray_end - ray_start) / (depth_resolution - 1)).unsqueeze(-2))
        depths = torch.linspace(ray_start, ray_end, depth_resolution, device=device).reshape(1, 1, depth_resolution, 1).repeat(n, m, 1, 1)
        return jitter(depths, (ray_end - ray_start) / (depth_resolution - 1))

    @staticmethod
    def sample_importance(z_vals: torch.Tensor, weights: torch.Tensor, n_importance: int, deterministic: bool = False):
        """Importance depths [N, M, n_importance, 1] from coarse weights, smoothed as the original (max-pool, avg-pool, +0.01)."""
        with torch.no_grad():
            n, m, s, _ = z_vals.shape
            z_vals = z_vals.reshape(n * m, s)
            weights = weights.reshape(n * m, 1, -1).float()
            weights = F.max_pool1d(weights, 2, 1, padding=1)
            weights = F.avg_pool1d(weights, 2, 1).squeeze(1) + 0.01
            z_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
            fine = sample_pdf(z_mid, weights[:, 1:-1], n_importance, deterministic=deterministic)
        return fine.detach().reshape(n, m, n_importance, 1)

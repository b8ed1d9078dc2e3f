"""Cameras for TuneMV3D: EG3D-style 25-value labels, camera rings, pixel rays and point projection.

Conventions (the same as EG3D and the dataset's ``cameras.json``):

* a pose is an OpenCV cam2world matrix: camera x right, y down, z forward (the viewing direction);
* the world is y-up and objects sit around the origin, inside the unit sphere;
* intrinsics are normalized by the image size: ``K = [[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``,
  so a pixel's normalized coordinate ``u = (col + 0.5) / W`` lies in [0, 1] and does not depend on resolution;
* a camera label is ``[cam2world.flatten() (16), K.flatten() (9)]``, shape [..., 25].
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from ..eg3d.camera import create_cam2world_matrix

Number = Union[float, Sequence[float], torch.Tensor]


def camera_labels(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """cam2world [..., 4, 4] and K [..., 3, 3] (broadcast) -> labels [..., 25]."""
    batch = torch.broadcast_shapes(cam2world.shape[:-2], intrinsics.shape[:-2])
    c2w = cam2world.expand(*batch, 4, 4).reshape(*batch, 16)
    k = intrinsics.to(cam2world).expand(*batch, 3, 3).reshape(*batch, 9)
    return torch.cat([c2w, k], dim=-1)


def split_labels(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [..., 25] -> (cam2world [..., 4, 4], K [..., 3, 3])."""
    if cameras.shape[-1] != 25:
        raise ValueError(f"camera labels must have 25 values in the last dimension, got shape {tuple(cameras.shape)}")
    return cameras[..., :16].unflatten(-1, (4, 4)), cameras[..., 16:25].unflatten(-1, (3, 3))


def fov_intrinsics(fov_degrees: float = 40.0, device=None) -> torch.Tensor:
    """Normalized K [3, 3] of a pinhole camera with the given (vertical = horizontal) field of view."""
    focal = 0.5 / math.tan(math.radians(fov_degrees) / 2)
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device)


def orbit_cameras(
    azimuth_deg: Number,
    elevation_deg: Number = 20.0,
    radius: float = 2.0,
    fov_degrees: float = 40.0,
    device=None,
) -> torch.Tensor:
    """Labels [N, 25] of cameras on a sphere of ``radius`` looking at the origin.

    Azimuth 0 looks from +z toward the origin, azimuth grows toward +x; elevation is above the xz-plane.
    """
    az = torch.as_tensor(azimuth_deg, dtype=torch.float32, device=device).reshape(-1)
    el = torch.as_tensor(elevation_deg, dtype=torch.float32, device=device).reshape(-1)
    az, el = torch.broadcast_tensors(torch.deg2rad(az), torch.deg2rad(el).clamp(-1.55, 1.55))
    origin = radius * torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], dim=-1)  # [N, 3]
    cam2world = create_cam2world_matrix(-origin, origin)
    return camera_labels(cam2world, fov_intrinsics(fov_degrees, device))


def ring_cameras(
    num_views: int = 8, elevation_deg: float = 20.0, radius: float = 2.0, fov_degrees: float = 40.0, azimuth_offset_deg: float = 0.0, device=None
) -> torch.Tensor:
    """The default cameras [n, 25]: n views evenly spaced in azimuth at a fixed elevation."""
    if num_views < 1:
        raise ValueError("num_views must be >= 1")
    azimuths = azimuth_offset_deg + torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
    return orbit_cameras(azimuths, elevation_deg, radius, fov_degrees, device)


def pixel_rays(cameras: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres of every camera: origins and unit directions [..., H*W, 3] (row-major)."""
    cam2world, K = split_labels(cameras)
    v, u = torch.meshgrid(
        (torch.arange(height, device=cameras.device, dtype=cameras.dtype) + 0.5) / height,
        (torch.arange(width, device=cameras.device, dtype=cameras.dtype) + 0.5) / width,
        indexing="ij",
    )
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)  # [HW, 2]
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]  # [..., 1]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = (uv[:, 0] - cx) / fx  # [..., HW]
    y = (uv[:, 1] - cy) / fy
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [..., HW, 3]
    dirs = torch.nn.functional.normalize(dirs_cam @ cam2world[..., :3, :3].transpose(-1, -2), dim=-1)
    origins = cam2world[..., None, :3, 3].expand_as(dirs)
    return origins, dirs


def project_points(points: torch.Tensor, cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points [B, P, 3] into cameras [B, n, 25].

    Returns normalized image coordinates uv [B, n, P, 2] (in [0, 1] inside the image) and camera depth z [B, n, P].
    """
    cam2world, K = split_labels(cameras)
    R, t = cam2world[..., :3, :3], cam2world[..., :3, 3]  # [B, n, 3, 3], [B, n, 3]
    p_cam = (points[:, None] - t[:, :, None]) @ R  # world -> camera: R^T (p - t), [B, n, P, 3]
    z = p_cam[..., 2]
    xy = p_cam[..., :2] / z.clamp(min=1e-6)[..., None]
    uv = xy * torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)[:, :, None] + K[..., :2, 2][:, :, None]
    return uv, z


def view_colors(points: torch.Tensor, normals: torch.Tensor, images: torch.Tensor, cameras: torch.Tensor, sharpness: float = 4.0) -> torch.Tensor:
    """Colours of surface points [P, 3] (unit ``normals`` [P, 3]) from the n views that face them.

    Each view's pixel at the point's projection is weighted by max(0, normal . direction to the camera)^``sharpness``
    (views looking straight at the surface dominate; the views' blur at grazing angles is kept out). Occlusion is
    not tested: a point hidden from a view by another part of the object can take that part's colour.
    ``images`` [n, 3, H, W] in [0, 1] at ``cameras`` [n, 25]; points no view faces get the views' mean colour.
    Returns [P, 3] in [0, 1].
    """
    uv, z = project_points(points[None].float(), cameras[None].float())  # [1, n, P, 2], [1, n, P]
    uv, z = uv[0], z[0]
    # grid_sample's (x, y) in [-1, 1] spans the image edges when align_corners=False: x = 2u - 1, y = 2v - 1
    sampled = torch.nn.functional.grid_sample(images.float(), (2 * uv - 1)[:, :, None], align_corners=False, padding_mode="border")
    sampled = sampled[..., 0].permute(0, 2, 1)  # [n, P, 3]
    cam2world, _ = split_labels(cameras.float())
    to_camera = torch.nn.functional.normalize(cam2world[:, None, :3, 3] - points[None].float(), dim=-1)  # [n, P, 3]
    weight = (to_camera * normals[None].float()).sum(-1).clamp(min=0) ** sharpness  # [n, P]
    weight = weight * ((z > 0) & (uv >= 0).all(-1) & (uv <= 1).all(-1))
    total = weight.sum(0)  # [P]
    colors = (weight[..., None] * sampled).sum(0) / total.clamp(min=1e-8)[:, None]
    fallback = images.float().mean(dim=(0, 2, 3))
    return torch.where(total[:, None] > 1e-8, colors, fallback).clamp(0, 1)

"""EG3D camera conventions.

Poses are OpenCV cam2world matrices (x right, y down, z forward); the world is y-up and the face looks
toward +z. Intrinsics are normalized (focal and principal point divided by the image size). A camera label
is the 25-vector ``[cam2world.flatten() (16), K.flatten() (9)]`` that EG3D datasets and the generator use.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch

FFHQ_PIVOT = (0.0, 0.0, 0.2)
FFHQ_RADIUS = 2.7
# Focal of the FFHQ dataset labels (2985.29 / 700); gen_samples.py uses FOV 18.837 deg, i.e. 4.2634.
FFHQ_FOCAL = 4.2647
DEFAULT_FOV_DEG = 18.837

Number = Union[float, torch.Tensor]


def _as_tensor(x: Number, device=None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)


def create_cam2world_matrix(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """cam2world [N, 4, 4] for cameras at ``origin`` [N, 3] looking along ``forward`` [N, 3] (world up = +y)."""
    forward = torch.nn.functional.normalize(forward, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], device=origin.device).expand_as(forward)
    right = -torch.nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    up = torch.nn.functional.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    cam2world = torch.eye(4, device=origin.device).repeat(forward.shape[0], 1, 1)
    cam2world[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    cam2world[:, :3, 3] = origin
    return cam2world


def look_at_pose(
    yaw: Number = 0.0,
    pitch: Number = 0.0,
    radius: float = FFHQ_RADIUS,
    lookat: Sequence[float] = FFHQ_PIVOT,
    device=None,
) -> torch.Tensor:
    """cam2world [N, 4, 4] on a sphere of ``radius`` (around the world origin) looking at ``lookat``.

    ``yaw``/``pitch`` are offsets in radians from the frontal view (EG3D's LookAtPoseSampler with
    horizontal = pi/2 + yaw, vertical = pi/2 + pitch); positive yaw moves the camera toward +x,
    positive pitch moves it down (vertical angle measured from +y).
    """
    h = math.pi / 2 + _as_tensor(yaw, device)
    v = math.pi / 2 + _as_tensor(pitch, device)
    h, v = torch.broadcast_tensors(h, v)
    v = v.clamp(1e-5, math.pi - 1e-5)
    theta = h
    phi = torch.arccos(1 - 2 * (v / math.pi))
    origin = torch.stack(
        (
            radius * torch.sin(phi) * torch.cos(math.pi - theta),
            radius * torch.cos(phi),
            radius * torch.sin(phi) * torch.sin(math.pi - theta),
        ),
        dim=-1,
    )
    target = torch.tensor(list(lookat), dtype=torch.float32, device=origin.device)
    return create_cam2world_matrix(target - origin, origin)


def fov_to_intrinsics(fov_degrees: float = DEFAULT_FOV_DEG, device=None) -> torch.Tensor:
    """Normalized 3x3 intrinsics for a vertical field of view (the original's constants kept)."""
    focal = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return focal_to_intrinsics(focal, device)


def focal_to_intrinsics(focal: float = FFHQ_FOCAL, device=None) -> torch.Tensor:
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device)


def camera_label(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """The 25-value label [N, 25] from cam2world [N, 4, 4] and intrinsics [3, 3] or [N, 3, 3]."""
    n = cam2world.shape[0]
    k = intrinsics.reshape(-1, 9).expand(n, 9)
    return torch.cat([cam2world.reshape(n, 16), k.to(cam2world)], dim=1)


def split_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`camera_label`: (cam2world [N, 4, 4], intrinsics [N, 3, 3])."""
    if c.ndim != 2 or c.shape[1] != 25:
        raise ValueError(f"camera labels must have shape [N, 25], got {tuple(c.shape)}")
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


def sample_camera_label(
    yaw: Number = 0.0,
    pitch: Number = 0.0,
    radius: float = FFHQ_RADIUS,
    lookat: Sequence[float] = FFHQ_PIVOT,
    fov_degrees: float | None = None,
    focal: float | None = None,
    device=None,
) -> torch.Tensor:
    """Camera label(s) [N, 25] for yaw/pitch offsets from the frontal view. Give ``fov_degrees`` or ``focal``
    (default: FOV 18.837 degrees as in the original ``gen_samples.py``)."""
    if fov_degrees is not None and focal is not None:
        raise ValueError("give either fov_degrees or focal, not both")
    K = focal_to_intrinsics(focal, device) if focal is not None else fov_to_intrinsics(fov_degrees or DEFAULT_FOV_DEG, device)
    return camera_label(look_at_pose(yaw, pitch, radius, lookat, device), K)


def frontal_conditioning_label(
    rendering_kwargs: dict | None = None, fov_degrees: float | None = None, focal: float | None = None, device=None
) -> torch.Tensor:
    """The fixed frontal camera [1, 25] used for generator pose conditioning at inference (and for w_avg)."""
    rk = rendering_kwargs or {}
    return sample_camera_label(
        0.0,
        0.0,
        radius=rk.get("avg_camera_radius", FFHQ_RADIUS),
        lookat=rk.get("avg_camera_pivot", FFHQ_PIVOT),
        fov_degrees=fov_degrees,
        focal=focal,
        device=device,
    )


def orbit_camera_labels(
    num_frames: int = 60,
    yaw_range: float = 0.35,
    pitch_range: float = 0.25,
    radius: float = FFHQ_RADIUS,
    lookat: Sequence[float] = FFHQ_PIVOT,
    fov_degrees: float | None = None,
    focal: float | None = None,
    device=None,
) -> torch.Tensor:
    """An elliptic orbit [num_frames, 25] as in the original ``gen_videos.py``: yaw = r_y sin(t), pitch = r_p cos(t)."""
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    t = torch.arange(num_frames, dtype=torch.float32) * (2 * math.pi / num_frames)
    return sample_camera_label(
        yaw_range * torch.sin(t), -0.05 + pitch_range * torch.cos(t), radius, lookat, fov_degrees, focal, device
    )


def camera_yaw_pitch(c: torch.Tensor, lookat: Sequence[float] = FFHQ_PIVOT) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover (yaw, pitch) offsets [N] of camera labels made by :func:`look_at_pose` (inverse of it)."""
    cam2world, _ = split_label(c)
    origin = cam2world[:, :3, 3]
    r = origin.norm(dim=-1)
    phi = torch.arccos((origin[:, 1] / r).clamp(-1, 1))
    v = math.pi * (1 - torch.cos(phi)) / 2
    theta = math.pi - torch.atan2(origin[:, 2], origin[:, 0])
    return theta - math.pi / 2, v - math.pi / 2

"""Mesh and video export shared by the EG3D and TuneMV3D pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .io import PathLike, atomic_path

MESH_FORMATS = (".ply", ".glb", ".obj", ".stl")


@torch.no_grad()
def sample_grid(
    field: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    bbox_min: Sequence[float],
    bbox_max: Sequence[float],
    chunk: int = 262144,
    device=None,
) -> np.ndarray:
    """Evaluate ``field(points [M, 3]) -> values [M]`` on a resolution^3 grid; returns [R, R, R] indexed (x, y, z)."""
    axes = [torch.linspace(float(lo), float(hi), resolution, device=device) for lo, hi in zip(bbox_min, bbox_max)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    values = torch.cat([field(grid[i : i + chunk]).reshape(-1).float().cpu() for i in range(0, grid.shape[0], chunk)])
    return values.reshape(resolution, resolution, resolution).numpy()


def marching_cubes_mesh(
    volume: np.ndarray, level: float, bbox_min: Sequence[float], bbox_max: Sequence[float], inside: str = "below"
):
    """Iso-surface of ``volume`` (indexed x, y, z) at ``level`` as a ``trimesh.Trimesh`` in world coordinates, with
    outward-facing triangles. ``inside="below"`` for SDFs (negative inside), ``"above"`` for densities."""
    if inside not in ("below", "above"):
        raise ValueError(f"inside must be 'below' (SDF) or 'above' (density), got {inside!r}")
    import trimesh
    from skimage.measure import marching_cubes

    lo, hi = float(volume.min()), float(volume.max())
    if not lo < level < hi:
        raise ValueError(f"iso level {level} is outside the field's range [{lo:.4g}, {hi:.4g}]; pass a level inside it")
    bbox_min = np.asarray(bbox_min, dtype=np.float64)
    spacing = (np.asarray(bbox_max, dtype=np.float64) - bbox_min) / (np.asarray(volume.shape) - 1)
    verts, faces, normals, _ = marching_cubes(volume, level=level, spacing=tuple(spacing))
    if inside == "above":  # skimage orients faces toward decreasing values: flip them to face outward
        faces, normals = faces[:, ::-1], -normals
    return trimesh.Trimesh(vertices=verts + bbox_min, faces=np.ascontiguousarray(faces), vertex_normals=normals, process=False)


def export_mesh(mesh, path: PathLike) -> Path:
    """Write a mesh as PLY, GLB, OBJ or STL (chosen by the extension), atomically."""
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}; use one of {MESH_FORMATS}")
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=path.suffix.lower().lstrip("."))
    return path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_video(frames: Iterable[np.ndarray], path: PathLike, fps: int = 24, quality: int = 8) -> Path:
    """Write uint8 [H, W, 3] frames to an MP4 (H.264 through the ffmpeg that imageio-ffmpeg ships), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=quality, macro_block_size=1)
        try:
            for frame in frames:
                writer.append_data(np.asarray(frame))
        finally:
            writer.close()
    return path

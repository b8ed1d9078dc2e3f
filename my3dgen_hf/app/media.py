"""Rendering helpers for the app: colour-mapped depth, coloured GLB meshes, orbit and interpolation videos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

DEFAULT_MESH_LEVEL = 10.0  # the original shape export's iso level on raw sigma


def colorize_depth(depth: torch.Tensor, size: Optional[int] = None, cmap: str = "inferno") -> Image.Image:
    """Ray depth [1, r, r] or [r, r] -> an RGB picture, near = bright, background (far plane) = dark."""
    import matplotlib

    d = depth.detach().float().cpu().reshape(depth.shape[-2], depth.shape[-1]).numpy()
    d = np.nan_to_num(d, nan=float(np.nanmax(d)) if np.isfinite(d).any() else 0.0, posinf=0.0)
    lo, hi = np.percentile(d, 1), np.percentile(d, 99)
    if hi - lo < 1e-6:
        t = np.zeros_like(d)
    else:
        t = 1.0 - np.clip((d - lo) / (hi - lo), 0, 1)
    rgb = (matplotlib.colormaps[cmap](t)[..., :3] * 255).round().astype(np.uint8)
    img = Image.fromarray(rgb)
    if size and size != img.width:
        img = img.resize((size, size), Image.BILINEAR)
    return img


@torch.no_grad()
def _sigma_range(pipe, ws: torch.Tensor, planes: torch.Tensor, resolution: int = 24) -> tuple[float, float, np.ndarray]:
    G = pipe.generator
    half = float(G.rendering_kwargs["box_warp"]) / 2
    ax = torch.linspace(-half, half, resolution)
    pts = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(1, -1, 3).to(pipe.device)
    sigma = G.sample_mixed(pts, torch.zeros_like(pts), ws, planes=planes)["sigma"].reshape(-1).float().cpu().numpy()
    return float(sigma.min()), float(sigma.max()), sigma


def choose_mesh_level(pipe, ws: torch.Tensor) -> float:
    """The original's iso level (10 on raw sigma) when the field crosses it, else a level inside the field's range
    (an untrained or very smooth prior), so that a mesh always comes out."""
    G = pipe.generator
    planes = G.synthesize_planes(ws[:1].to(pipe.device), noise_mode="const")
    lo, hi, sigma = _sigma_range(pipe, ws[:1].to(pipe.device), planes)
    if lo < DEFAULT_MESH_LEVEL < hi and (sigma > DEFAULT_MESH_LEVEL).mean() > 1e-3:
        return DEFAULT_MESH_LEVEL
    return float(np.quantile(sigma, 0.85))


def drop_floaters(mesh, keep_fraction: float = 0.1):
    """Keep the connected parts with at least ``keep_fraction`` of the largest part's faces (small blobs of density
    away from the head are dropped); the mesh is returned unchanged when it has one part or cannot be split."""
    try:
        parts = mesh.split(only_watertight=False)
    except Exception:  # splitting needs scipy / networkx; a mesh with floaters is still a mesh
        return mesh
    if len(parts) <= 1:
        return mesh
    import trimesh

    biggest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= keep_fraction * biggest]
    return trimesh.util.concatenate(kept)


@torch.no_grad()
def colored_mesh(pipe, ws: torch.Tensor, path: Path, resolution: int = 96, level: Optional[float] = None) -> Path:
    """Marching cubes on the density field (``pipe.extract_mesh``), vertex colours from the decoder's RGB, written
    as GLB (EG3D's world is +Y up with the face toward +Z, as glTF expects)."""
    import trimesh

    ws = ws[:1].to(pipe.device)
    if level is None:
        level = choose_mesh_level(pipe, ws)
    mesh = pipe.extract_mesh(ws=ws, resolution=int(resolution), level=float(level))
    mesh = drop_floaters(mesh)
    G = pipe.generator
    planes = G.synthesize_planes(ws, noise_mode="const")
    verts = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=pipe.device)
    colors = []
    for i in range(0, len(verts), 65536):
        p = verts[i : i + 65536].unsqueeze(0)
        rgb = G.sample_mixed(p, torch.zeros_like(p), ws, planes=planes)["rgb"][0, :, :3]
        colors.append(rgb.clamp(0, 1).cpu())
    rgb = (torch.cat(colors).numpy() * 255).round().astype(np.uint8) if colors else np.zeros((0, 3), np.uint8)
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    out = trimesh.Trimesh(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces), vertex_colors=rgba, process=False)
    # EG3D's world (as SynthHeads' landmarks show) is already glTF's: +Y up, the face looks toward +Z.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.export(path, file_type="glb")
    return path


def write_mp4(frames: np.ndarray, path: Path, fps: int = 24) -> Path:
    from ..utils.export import write_video

    return write_video(frames, path, fps=fps)

"""A tiny multi-view dataset of coloured spheres and boxes, ray-cast analytically, in the layout of ``data.py``.

For tests and smoke runs of the training script; a richer procedural dataset can use the same layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .cameras import orbit_cameras, pixel_rays
from .data import write_cameras

COLOURS = {"red": (0.85, 0.15, 0.1), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.85), "yellow": (0.9, 0.8, 0.15)}
LIGHT = torch.nn.functional.normalize(torch.tensor([0.4, 0.8, 0.45]), dim=0)


def _hit_sphere(o, d, radius):
    """Ray parameter of the first hit [R] (inf on a miss) and the unit normal there [R, 3]."""
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius**2)
    t = torch.where(disc > 0, -b - disc.clamp(min=0).sqrt(), torch.full_like(b, float("inf")))
    return t, torch.nn.functional.normalize(o + t.clamp(max=1e3)[:, None] * d, dim=-1)


def _hit_box(o, d, half):
    """Slab test against the box |x| <= half (axis-aligned, centred)."""
    half = torch.as_tensor(half, dtype=o.dtype)
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (-half - o) * inv, (half - o) * inv
    t_near = torch.minimum(t0, t1).max(-1).values
    t_far = torch.maximum(t0, t1).min(-1).values
    t = torch.where((t_far > t_near) & (t_far > 0), t_near, torch.full_like(t_near, float("inf")))
    axis = torch.minimum(t0, t1).argmax(-1)
    normal = torch.zeros_like(o)
    normal[torch.arange(len(o)), axis] = -torch.sign(d[torch.arange(len(o)), axis])
    return t, normal


def render_object(shape: str, size, colour, cameras: torch.Tensor, resolution: int) -> np.ndarray:
    """RGBA uint8 [V, R, R, 4] of one object seen from cameras [V, 25] (Lambertian, light from above)."""
    o, d = pixel_rays(cameras, resolution, resolution)  # [V, R R, 3]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    t, normal = _hit_sphere(o, d, size) if shape == "sphere" else _hit_box(o, d, size)
    hit = torch.isfinite(t)
    shade = 0.35 + 0.65 * (normal @ LIGHT).clamp(min=0)
    rgb = torch.tensor(colour)[None] * shade[:, None]
    rgba = torch.cat([torch.where(hit[:, None], rgb, torch.ones_like(rgb)), hit[:, None].float()], -1)
    return (rgba.reshape(len(cameras), resolution, resolution, 4) * 255).round().to(torch.uint8).numpy()


def make_toy_dataset(
    root: str | Path,
    num_objects: int = 4,
    num_views: int = 12,
    resolution: int = 32,
    seed: int = 0,
    captions_json: bool = False,
    camera_distance: float = 2.0,
    fov: float = 40.0,
) -> Path:
    """Write ``num_objects`` spheres/boxes with ``num_views`` views each (random elevations in [5, 40] degrees)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions = {}
    for i in range(num_objects):
        shape = ("sphere", "box")[i % 2]
        name = list(COLOURS)[(i // 2) % len(COLOURS)]
        size = float(rng.uniform(0.35, 0.5)) if shape == "sphere" else rng.uniform(0.22, 0.4, size=3).tolist()
        azimuth = rng.uniform(0, 360) + np.arange(num_views) * 360.0 / num_views
        elevation = rng.uniform(5, 40, size=num_views)
        cameras = orbit_cameras(azimuth, elevation, camera_distance, fov)
        folder = root / f"{i:04d}"
        folder.mkdir(exist_ok=True)
        files = [f"{v:03d}.png" for v in range(num_views)]
        for f, im in zip(files, render_object(shape, size, COLOURS[name], cameras, resolution)):
            PIL.Image.fromarray(im).save(folder / f)
        write_cameras(folder / "cameras.json", files, cameras)
        captions[folder.name] = f"a {name} {shape}"
        if not captions_json:
            (folder / "caption.txt").write_text(captions[folder.name] + "\n")
    if captions_json:
        (root / "captions.json").write_text(json.dumps(captions, indent=1))
    return root

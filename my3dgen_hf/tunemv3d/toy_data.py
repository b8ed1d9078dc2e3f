"""A tiny multi-view dataset of coloured spheres and boxes, ray-cast analytically, in the layout of ``data.py``.

For tests and smoke runs of the training script; a richer procedural dataset can use the same layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..synthetic.synthobjects import Primitive, render_primitives
from .cameras import orbit_cameras
from .data import write_cameras

COLOURS = {"red": (0.85, 0.15, 0.1), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.85), "yellow": (0.9, 0.8, 0.15)}


def render_object(shape: str, size, colour, cameras: torch.Tensor, resolution: int) -> np.ndarray:
    """RGBA uint8 [V, R, R, 4] of one centred sphere (radius ``size``) or box (half extents ``size``) seen from
    cameras [V, 25], with the shading of ``my3dgen_hf.synthetic.synthobjects`` (Lambertian, light from above)."""
    half = (float(size),) * 3 if shape == "sphere" else tuple(float(v) for v in size)
    return render_primitives([Primitive(shape, (0.0, 0.0, 0.0), half, tuple(colour))], cameras, resolution)


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

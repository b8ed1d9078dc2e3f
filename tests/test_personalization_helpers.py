"""Shared tiny fixtures for the personalization tests (no tests here)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from tiny import tiny_pipeline

# Smaller than tests/tiny.py's default: 32 px tri-planes, 16 px neural rendering, narrow SR (~0.05 s per
# forward + backward on one CPU thread).
TINY = dict(triplane_resolution=32, neural_rendering_resolution=16, sr_kwargs={"block_channels": [16, 8]})
YAWS = (-0.3, 0.0, 0.3, 0.15, -0.15, 0.05)
PITCHES = (0.0, 0.1, -0.1, 0.0, 0.05, -0.05)


def tiny_prior(seed: int = 0):
    return tiny_pipeline(seed, **TINY)


@functools.lru_cache(maxsize=4)
def _identity(n: int, seed: int):
    src = tiny_prior(seed)
    ws = src.get_ws(seed=[seed + 2]).repeat(n, 1, 1)
    c = src.camera(yaw=list(YAWS[:n]), pitch=list(PITCHES[:n]))
    with torch.no_grad():
        images = src.generator.synthesis(ws, c, noise_mode="const", deterministic=True)["image"].clamp(-1, 1)
    # Quantize like a saved PNG, so in-memory and on-disk copies are the same data.
    images = ((images + 1) * 127.5).round().div(127.5).sub(1)
    return images, c


def identity_images(n: int = 4, seed: int = 1):
    """(images [n, 3, 128, 128] in [-1, 1], labels [n, 25]): views of one head of another tiny generator."""
    images, labels = _identity(n, seed)
    return images.clone(), labels.clone()


def write_eg3d_dataset(folder: Path, images, labels, names=None) -> Path:
    from my3dgen_hf.personalization.data import tensor_to_pil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img_{i:05d}.png" for i in range(len(images))]
    for name, img in zip(names, images):
        tensor_to_pil(img).save(folder / name)
    (folder / "dataset.json").write_text(json.dumps({"labels": [[n, [float(v) for v in c]] for n, c in zip(names, labels)]}))
    return folder


def quick_anchors(pipe, images, labels, steps: int = 2, **kw):
    from my3dgen_hf.personalization import project_to_w

    return project_to_w(pipe, images, labels, steps=steps, progress=False, **kw)


def train_like(pipe, name, seed, rank=1):
    """An adapter with random LoRA factors and random extras, as if trained."""
    pipe.add_identity_adapter(name, rank=rank)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pipe.generator.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pipe.collect_trained_extras(name)
    return name

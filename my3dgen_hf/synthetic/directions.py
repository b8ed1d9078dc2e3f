"""Semantic edit directions of a prior from SynthHeads ground truth (the labelled samples InterFaceGAN needs).

Images of training identities are rendered with and without an attribute (a full smile vs none; eyes closed vs
open), projected into W of the prior, and a linear boundary is fit between the two sets
(:func:`~my3dgen_hf.personalization.fit_direction`). ``training/fit_directions.py`` writes them next to a model
(``<model>/directions/<name>.safetensors``), where the app and :func:`~my3dgen_hf.personalization.load_directions`
find them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .evaluation import ground_truth_view
from .synthheads import sample_identity, sample_image_params

#: name -> (ImageParams field, value with the attribute, value without)
ATTRIBUTES = {"smile": ("smile", 1.0, 0.0), "eyes_closed": ("eyes_open", 0.0, 1.0)}


def fit_synthheads_directions(pipe, num_images: int = 48, steps: int = 60, cache_dir=None, attributes: Optional[list] = None, seed: int = 0) -> dict:
    """``{name: EditDirection}`` for each attribute, from ``num_images`` projected SynthHeads images (half with the
    attribute) of training identities 0..num_images-1, each at a random pose in +-0.3 yaw / +-0.2 pitch."""
    from ..personalization import fit_direction, project_to_w

    out = {}
    for name in attributes or list(ATTRIBUTES):
        field, on, off = ATTRIBUTES[name]
        images, labels, ys = [], [], []
        for i in range(num_images):
            ip = sample_image_params(seed, i, 0, yaw_range=0.3, pitch_range=0.2, occluder_prob=0.0)
            y = i % 2
            img, c = ground_truth_view(sample_identity(seed, i), dataclasses.replace(ip, **{field: on if y else off}), pipe.generator.img_resolution)
            images.append(img), labels.append(c), ys.append(float(y))
        ws = project_to_w(pipe, torch.cat(images), torch.cat(labels), steps=steps, cache_dir=cache_dir, progress=False)
        out[name] = fit_direction(ws, ys, name=name)
    return out

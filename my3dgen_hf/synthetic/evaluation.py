"""Measure a (personalized) prior against SynthHeads ground truth: the evaluator shared by the benchmarks.

SynthHeads can render the same head and expression from any camera, so an inversion can be checked where the
paper could not: at novel views. :func:`evaluate_inversions` inverts test images into the model as it renders now
(adapters active, :func:`~my3dgen_hf.personalization.project_to_adapted_w`) and reports, per image and on average,

- input view: PSNR, SSIM, ID similarity (identity encoder, paired), and any perceptual distances given (LPIPS,
  DISTS, or the MS-SSIM substitute),
- novel views (yaw -0.35 / +0.35 by default, the same expression and lighting): PSNR, SSIM, ID similarity and the
  same perceptual distances against ground-truth renders (:func:`novel_view_metrics`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from .synthheads import IdentityParams, ImageParams, render

NOVEL_YAWS = (-0.35, 0.35)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 127.5 - 1


def ground_truth_view(identity: IdentityParams, params: ImageParams, resolution: int, yaw: Optional[float] = None, pitch: Optional[float] = None):
    """The head of ``params`` seen at (yaw, pitch) (defaults: its own) -> (image [1, 3, R, R], label [1, 25])."""
    view = dataclasses.replace(params, yaw=params.yaw if yaw is None else float(yaw), pitch=params.pitch if pitch is None else float(pitch))
    return to_tensor(render(identity, view, resolution=resolution)), torch.from_numpy(view.camera_label()).float()[None]


@torch.no_grad()
def novel_view_metrics(
    pipe, ws: torch.Tensor, identity: IdentityParams, params: ImageParams, encoder=None, yaws: Sequence[float] = NOVEL_YAWS,
    distances: Optional[Mapping[str, torch.nn.Module]] = None,
) -> dict:
    """Render ``ws`` [1, num_ws, w_dim] at each yaw (the image's pitch) and compare with the ground truth:
    ``{"psnr_novel", "ssim_novel", "id_novel", "<name>_novel" for each of distances}`` averaged over the views
    (``id_novel`` only with an ``encoder``)."""
    from ..metrics import id_reconstruction_similarity, psnr, ssim

    G = pipe.generator
    rows: dict = {"psnr_novel": [], "ssim_novel": []}
    for yaw in yaws:
        gt, c = ground_truth_view(identity, params, G.img_resolution, yaw=yaw)
        img = G.synthesis(ws.to(pipe.device), c.to(pipe.device), noise_mode="const", deterministic=True)["image"].clamp(-1, 1).cpu()
        rows["psnr_novel"].append(psnr(img, gt).item())
        rows["ssim_novel"].append(ssim(img, gt).item())
        if encoder is not None:
            rows.setdefault("id_novel", []).append(id_reconstruction_similarity(img, gt, encoder).mean)
        for name, d in (distances or {}).items():
            rows.setdefault(f"{name}_novel", []).append(float(d(img, gt).mean()))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def evaluate_inversions(
    pipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    params: Sequence[ImageParams],
    identity: IdentityParams,
    encoder=None,
    steps: int = 60,
    cache_dir=None,
    distances: Optional[Mapping[str, torch.nn.Module]] = None,
    yaws: Sequence[float] = NOVEL_YAWS,
    **projector_settings,
) -> tuple[dict, list]:
    """Invert each of ``images`` [N, 3, R, R] (cameras ``labels`` [N, 25], ground truth ``params``) with ``steps``
    W-projection steps into ``pipe`` as it renders now, and measure input and novel views (module doc).
    ``distances``: ``{name: module(x, y) -> [B]}`` applied at the input and the novel views; ``projector_settings``:
    :class:`~my3dgen_hf.personalization.projector.ProjectorSettings` fields (``initial_learning_rate``,
    ``mse_weight``, ...). Returns (means, per-image rows)."""
    from ..metrics import id_reconstruction_similarity, psnr, ssim
    from ..personalization.pti import adapted_pipeline, project_to_adapted_w

    if not (len(images) == len(labels) == len(params)):
        raise ValueError(f"got {len(images)} images, {len(labels)} labels and {len(params)} ground-truth params")
    adapted = adapted_pipeline(pipe)  # one merged copy for all images
    rows = []
    for img, c, p in zip(images, labels, params):
        img, c = img[None].float(), c[None].float()
        ws = project_to_adapted_w(pipe, img, c, steps=steps, cache_dir=cache_dir, progress=False, adapted=adapted, **projector_settings)
        with torch.no_grad():
            rec = pipe.generator.synthesis(ws, c.to(pipe.device), noise_mode="const", deterministic=True)["image"].clamp(-1, 1).cpu()
            row = {"psnr_input": psnr(rec, img).item(), "ssim_input": ssim(rec, img).item()}
            if encoder is not None:
                row["id_input"] = id_reconstruction_similarity(rec, img, encoder).mean
            for name, d in (distances or {}).items():
                row[f"{name}_input"] = float(d(rec, img).mean())
        row.update(novel_view_metrics(pipe, ws, identity, p, encoder, yaws, distances))
        rows.append(row)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, rows

"""W-space projection of training images into the frozen prior: the per-image "anchors" My3DGen trains on.

The EG3D projector (oneThousand1000/EG3D-projector ``w_projector.py``, copied into My3DGen): one ``w`` per image,
initialised at ``w_avg`` and broadcast to all ``num_ws``; Adam (betas 0.9, 0.999) with the learning rate
cosine-ramped to ``initial_learning_rate`` 0.01 (rampup 0.05, rampdown 0.25); Gaussian noise on ``w`` of
``w_std * 0.05 * max(0, 1 - t / 0.75) ** 2``; ``w_avg`` / ``w_std`` from 600 ``z`` mapped with the frontal conditioning
camera; the image rendered with the image's own camera label and constant noise. The loss is our
:func:`~my3dgen_hf.metrics.perceptual_loss` (LPIPS when its backbone weights are available, else the documented
``1 - MS-SSIM`` substitute), plus optionally the original's noise optimisation with its regularizer. Images are
optimized in batches (the loss is a sum over images and Adam is element-wise, so each ``w`` follows its own
trajectory), and results are cached per image on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.io import atomic_path
from .data import PathLike, PersonalizationCancelled, PersonalizationError

PROJECTOR_VERSION = 1
DEFAULT_PROJECTION_STEPS = 20


@dataclasses.dataclass(frozen=True)
class ProjectorSettings:
    steps: int = DEFAULT_PROJECTION_STEPS
    initial_learning_rate: float = 0.01
    lr_rampup_length: float = 0.05
    lr_rampdown_length: float = 0.25
    initial_noise_factor: float = 0.05
    noise_ramp_length: float = 0.75
    w_avg_samples: int = 600
    perceptual: str = "auto"
    mse_weight: float = 0.0  # not in the original; 0 keeps it out
    optimize_noise: bool = False  # the original's per-image noise optimisation (then batch size 1)
    regularize_noise_weight: float = 1e5  # used with optimize_noise
    seed: int = 0

    def key_dict(self, perceptual_kind: str) -> dict:
        d = dataclasses.asdict(self)
        d["perceptual"] = perceptual_kind
        if not self.optimize_noise:
            d.pop("regularize_noise_weight")
        d["version"] = PROJECTOR_VERSION
        return d


def learning_rate(step: int, settings: ProjectorSettings) -> float:
    """The original cosine ramp: up over the first 5 %, down over the last 25 %."""
    t = step / settings.steps
    ramp = min(1.0, (1.0 - t) / settings.lr_rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / settings.lr_rampup_length)
    return settings.initial_learning_rate * ramp


@torch.no_grad()
def w_statistics(pipe, num_samples: int = 600, seed: int = 123) -> tuple[torch.Tensor, float]:
    """(w_avg [1, 1, w_dim], w_std) of ``num_samples`` z (numpy RandomState(123), as the original) mapped with the
    frontal conditioning camera."""
    G = pipe.generator
    z = torch.from_numpy(np.random.RandomState(seed).randn(num_samples, G.z_dim)).float().to(pipe.device)
    w = G.mapping(z, pipe.conditioning_label(num_samples))[:, :1, :]
    w_avg = w.mean(0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / num_samples) ** 0.5)
    return w_avg, w_std


def _noise_regularization(bufs: list[torch.Tensor]) -> torch.Tensor:
    reg = 0.0
    for v in bufs:
        noise = v[None, None, :, :]
        while True:
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=3)).mean() ** 2
            reg = reg + (noise * torch.roll(noise, shifts=1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return reg


def image_cache_key(image: torch.Tensor, label: torch.Tensor, fingerprint: str, settings_key: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings_key, sort_keys=True).encode())
    h.update(fingerprint.encode())
    h.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(label.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_cached(file: Path, num_ws: int, w_dim: int) -> Optional[torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        w = load_file(str(file))["w"]
    except (SafetensorError, OSError, KeyError, ValueError):
        return None  # unreadable cache entries are recomputed
    return w if tuple(w.shape) == (num_ws, w_dim) else None


class _LoraOff:
    """Project against the frozen prior: switch active adapters off for the duration, and freeze all parameters."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __enter__(self):
        from ..lora import lora_layers

        G = self.pipe.generator
        self.requires_grad = {n: p.requires_grad for n, p in G.named_parameters()}
        G.requires_grad_(False)
        layers = lora_layers(G)
        self.reenable = bool(layers) and not any(layer.disable_adapters for _, layer in layers)
        if self.reenable:
            self.pipe.disable_lora()
        return self

    def __exit__(self, *exc):
        G = self.pipe.generator
        if self.reenable:
            self.pipe.enable_lora()
        for n, p in G.named_parameters():
            p.requires_grad_(self.requires_grad.get(n, False))


def _check_inputs(pipe, images: torch.Tensor, labels: torch.Tensor):
    G = pipe.generator
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise PersonalizationError(f"images must be a tensor [N, 3, H, W] in [-1, 1], got {getattr(images, 'shape', type(images))}")
    if len(images) == 0:
        raise PersonalizationError("no images to project")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or labels.shape[1] != 25:
        raise PersonalizationError(f"labels must be a tensor [N, 25] of EG3D camera labels, got {getattr(labels, 'shape', type(labels))}")
    if len(labels) != len(images):
        raise PersonalizationError(f"got {len(images)} images but {len(labels)} labels; give one label per image")
    if images.shape[-1] != images.shape[-2]:
        raise PersonalizationError(f"images must be square, got {tuple(images.shape[-2:])}")
    R = G.img_resolution
    if images.shape[-1] != R:
        images = F.interpolate(images.float(), size=(R, R), mode="bilinear", align_corners=False, antialias=True)
    return images.float(), labels.float()


def project_to_w(
    pipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = DEFAULT_PROJECTION_STEPS,
    cache_dir: Optional[PathLike] = None,
    progress: bool = True,
    callback: Optional[Callable[[dict], Optional[bool]]] = None,
    batch_size: int = 4,
    accelerator=None,
    **settings,
) -> torch.Tensor:
    """Project ``images`` [N, 3, R, R] (in [-1, 1]; resized to the prior's resolution) seen from ``labels`` [N, 25]
    into W of ``pipe.generator``'s prior -> ws [N, num_ws, w_dim] (one w per image, repeated).

    ``cache_dir``: per-image results are stored there under a key of the image bytes, the label, the base-model
    fingerprint and the projector settings, so a re-run skips images already projected. ``callback(dict(stage=
    'projection', step, steps, batch, num_batches, batch_images, loss))`` is called every step (only images that
    are not cached are optimized, in ``num_batches`` batches of ``batch_size``); returning False cancels
    (:class:`PersonalizationCancelled`). Further ``settings`` are :class:`ProjectorSettings` fields
    (``initial_learning_rate``, ``w_avg_samples``, ``perceptual``, ``mse_weight``, ``optimize_noise``, ``seed``, ...).
    With an ``accelerator`` of several processes the images are shared out and the results exchanged through
    ``cache_dir`` (required then)."""
    from ..lora.loader import base_model_fingerprint
    from ..metrics import perceptual_loss

    unknown = set(settings) - {f.name for f in dataclasses.fields(ProjectorSettings)}
    if unknown:
        raise TypeError(f"unknown projector settings: {sorted(unknown)}")
    cfg = ProjectorSettings(steps=int(steps), **settings)
    if cfg.steps < 1:
        raise PersonalizationError(f"projection steps must be at least 1, got {cfg.steps}")
    images, labels = _check_inputs(pipe, images, labels)
    G = pipe.generator
    device = pipe.device
    num_ws, w_dim = G.num_ws, G.w_dim
    loss_fn = perceptual_loss(cfg.perceptual, reduction="none").to(device)
    fingerprint = base_model_fingerprint(G)
    key_dict = cfg.key_dict(loss_fn.kind)
    keys = [image_cache_key(images[i], labels[i], fingerprint, key_dict) for i in range(len(images))]
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)

    results: dict[int, torch.Tensor] = {}
    if cache is not None:
        for i, k in enumerate(keys):
            w = _load_cached(cache / f"{k}.safetensors", num_ws, w_dim)
            if w is not None:
                results[i] = w
    todo = [i for i in range(len(images)) if i not in results]
    nproc = accelerator.num_processes if accelerator is not None else 1
    shard = todo[accelerator.process_index :: nproc] if (nproc > 1 and cache is not None) else todo
    bs = 1 if cfg.optimize_noise else max(1, int(batch_size))
    batches = [shard[i : i + bs] for i in range(0, len(shard), bs)]

    if batches:
        is_main = accelerator is None or accelerator.is_local_main_process
        bar = None
        if progress and is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batches) * cfg.steps, desc=f"projection ({len(shard)} images)", unit="step")
        try:
            with _LoraOff(pipe):
                w_avg, w_std = w_statistics(pipe, cfg.w_avg_samples)
                for b, idx in enumerate(batches):
                    ws = _project_batch(
                        G, images[idx].to(device), labels[idx].to(device), [keys[i] for i in idx], w_avg, w_std, cfg, loss_fn,
                        bar, callback, b, len(batches),
                    )
                    for i, w in zip(idx, ws):
                        results[i] = w
                        if cache is not None:
                            with atomic_path(cache / f"{keys[i]}.safetensors") as tmp:
                                from safetensors.torch import save_file

                                save_file({"w": w.contiguous()}, str(tmp), metadata={"settings": json.dumps(key_dict), "fingerprint": fingerprint})
        finally:
            if bar is not None:
                bar.close()
    if nproc > 1 and cache is not None:
        accelerator.wait_for_everyone()
        for i in todo:
            if i not in results:
                w = _load_cached(cache / f"{keys[i]}.safetensors", num_ws, w_dim)
                if w is None:
                    raise PersonalizationError(f"projection of image {i} by another process is missing from {cache}")
                results[i] = w
    return torch.stack([results[i] for i in range(len(images))]).to(device)


def _project_batch(G, target, c, keys, w_avg, w_std, cfg: ProjectorSettings, loss_fn, bar, callback, b, num_batches):
    n = len(target)
    if target.shape[-1] > 256:  # the original compares at 256 (area downsampling)
        target = F.interpolate(target, size=(256, 256), mode="area")
    w_opt = w_avg.detach().clone().repeat(n, 1, 1).requires_grad_(True)  # [n, 1, w_dim]
    gens = [torch.Generator().manual_seed(int(k[:15], 16) ^ cfg.seed) for k in keys]
    noise_bufs: dict = {}
    saved = {}
    if cfg.optimize_noise:
        for name, module in G.backbone.synthesis.named_modules():
            if hasattr(module, "noise_const") and isinstance(module.noise_const, torch.Tensor):
                saved[name] = module.noise_const
                buf = torch.randn(module.noise_const.shape, generator=gens[0]).to(module.noise_const).requires_grad_(True)
                module.noise_const = buf
                noise_bufs[name] = buf
    optimizer = torch.optim.Adam([w_opt] + list(noise_bufs.values()), betas=(0.9, 0.999), lr=cfg.initial_learning_rate)
    try:
        for step in range(cfg.steps):
            t = step / cfg.steps
            noise_scale = w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            w_noise = torch.stack([torch.randn(w_opt.shape[-1], generator=g) for g in gens])[:, None, :].to(w_opt) * noise_scale
            ws = (w_opt + w_noise).repeat(1, G.num_ws, 1)
            img = G.synthesis(ws, c, noise_mode="const", deterministic=True)["image"]
            if img.shape[-1] > 256:
                img = F.interpolate(img, size=(256, 256), mode="area")
            per_image = loss_fn(img, target)
            if cfg.mse_weight:
                per_image = per_image + cfg.mse_weight * (img - target).square().mean(dim=(1, 2, 3))
            loss = per_image.sum()
            if noise_bufs:
                loss = loss + cfg.regularize_noise_weight * _noise_regularization(list(noise_bufs.values()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if noise_bufs:
                with torch.no_grad():
                    for buf in noise_bufs.values():
                        buf -= buf.mean()
                        buf *= buf.square().mean().rsqrt()
            value = float(per_image.detach().mean())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if callback is not None:
                keep = callback({"stage": "projection", "step": step + 1, "steps": cfg.steps, "batch": b + 1, "num_batches": num_batches, "batch_images": n, "loss": value})
                if keep is False:
                    raise PersonalizationCancelled("projection cancelled by the callback")
    finally:
        for name, buf in saved.items():
            G.backbone.synthesis.get_submodule(name).noise_const = buf
    return w_opt.detach().repeat(1, G.num_ws, 1).cpu()

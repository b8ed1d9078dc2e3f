"""Pivotal Tuning Inversion (PTI, Roich et al. 2022) of one image into a copy of an ``EG3DPipeline``'s generator.

Two stages, as the original (``danielroich/PTI``, ``training/coaches/single_id_coach.py``):

1. **Pivot**: the image is projected into W with :func:`~my3dgen_hf.personalization.project_to_w` (the EG3D
   projector; PTI's ``first_inv_steps`` = 450), unless a pivot ``w`` is given.
2. **Pivotal tuning**: with the pivot frozen, *all* synthesis weights of a copy of the generator (tri-plane
   backbone, decoder, super-resolution; the mapping network gets no gradient from a fixed ``w`` and stays frozen)
   are tuned with Adam (lr ``3e-4``, betas (0.9, 0.999)) for up to 350 steps on

       L = l2_weight * MSE(G(w_pivot, c), x) + perceptual_weight * P(G(w_pivot, c), x)            (both weights 1)

   at the image's camera ``c`` with constant noise and deterministic ray sampling. ``P`` is
   :func:`~my3dgen_hf.metrics.perceptual_loss` (LPIPS when its backbone weights are available, else the documented
   ``1 - MS-SSIM`` substitute: the early-stop threshold then applies to that value). Tuning stops early, before the
   update, as soon as ``P <= early_stop`` (PTI's ``LPIPS_value_threshold`` = 0.06). PTI's optional locality
   regularization (off by default, as in the original) keeps renders of latents ``alpha`` away from the pivot
   towards random ``w`` close to the untuned generator's.

With identity adapters loaded on ``pipe``, PTI starts from the *adapted* generator: the copy has the active adapters
(with their ``set_adapters`` weights and extras) merged into its weights, so its render at step 0 equals ``pipe``'s,
and the pivot is projected into that generator's W. ``pipe`` itself, its adapters and anything
``pipe.save_lora_weights`` writes are left untouched; the copy shares no storage with ``pipe.generator``.

    result = pti_invert(pipe, image, label)                     # image [1, 3, R, R] in [-1, 1], label [1, 25]
    result.render(yaw=0.4).images[0]                            # a novel view of the tuned generator
    result.save_orbit_video("orbit.mp4"); result.extract_mesh(output_path="head.ply")
    result.pipeline.save_pretrained("pti-pipeline")             # a regular EG3DPipeline
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from .data import PathLike, PersonalizationCancelled, PersonalizationError

DEFAULT_PTI_W_STEPS = 450  # PTI's first_inv_steps
DEFAULT_PTI_STEPS = 350  # max_pti_steps
DEFAULT_PTI_LR = 3e-4  # pti_learning_rate
DEFAULT_PTI_EARLY_STOP = 0.06  # LPIPS_value_threshold


@dataclass
class PTIResult:
    """The outcome of :func:`pti_invert`.

    ``ws``: the pivot [1, num_ws, w_dim]; ``label``: the input camera [1, 25]; ``generator``: the tuned copy (a
    plain ``EG3DGenerator`` without adapter layers, in eval mode, frozen); ``pipeline``: a pipeline of ``pipe``'s
    class around it; ``losses``: one dict per evaluated tuning step (``step``, ``loss``, ``l2``, ``perceptual``
    and ``locality`` when used), measured before that step's update, so an early stop adds a last entry whose
    update was not applied; ``steps_run``: tuning updates applied; ``stopped_early``: the perceptual value reached
    ``early_stop``; ``perceptual_kind``: which perceptual loss ran (``"lpips-alex"``, ``"ms-ssim"``, ...)."""

    ws: torch.Tensor
    label: torch.Tensor
    generator: nn.Module = field(repr=False)
    pipeline: Any = field(repr=False)
    losses: list[dict]
    steps_run: int
    stopped_early: bool
    perceptual_kind: str
    perceptual_description: str = ""

    def render(self, yaw=0.0, pitch=0.0, **kwargs):
        """``result.pipeline(ws=result.ws, yaw=yaw, pitch=pitch, **kwargs)``: an ``EG3DPipelineOutput`` (``images``
        as PIL by default; ``output_type="pt"`` gives [N, 3, R, R] in [-1, 1]). Angles in radians."""
        return self.pipeline(ws=self.ws, yaw=yaw, pitch=pitch, **kwargs)

    @torch.no_grad()
    def reconstruction(self) -> torch.Tensor:
        """The tuned generator's render of the pivot from the input camera, [1, 3, R, R] in [-1, 1]."""
        G = self.generator
        device = next(G.parameters()).device
        return G.synthesis(self.ws.to(device), self.label.to(device), noise_mode="const", deterministic=True)["image"]

    def render_orbit(self, **kwargs) -> np.ndarray:
        """Orbit frames uint8 [num_frames, H, W, 3] (``EG3DPipeline.render_orbit`` keywords)."""
        return self.pipeline.render_orbit(self.ws, **kwargs)

    def save_orbit_video(self, path: PathLike, **kwargs) -> Path:
        """Write an MP4 orbit of the inverted identity (``EG3DPipeline.save_orbit_video`` keywords)."""
        return self.pipeline.save_orbit_video(path, ws=self.ws, **kwargs)

    def extract_mesh(self, **kwargs):
        """Marching-cubes mesh of the inverted identity (``EG3DPipeline.extract_mesh`` keywords: ``resolution``,
        ``level``, ``output_path``, ...)."""
        return self.pipeline.extract_mesh(ws=self.ws, **kwargs)


# --------------------------------------------------------------------------------------------------- helpers
def adapted_generator_copy(pipe) -> nn.Module:
    """A deep copy of ``pipe.generator`` as it renders now, as a plain generator: the active adapters (with their
    ``set_adapters`` weights) merged into its weights, disabled adapters dropped, the extras as currently applied.
    The copy shares no storage with ``pipe.generator``, which is not modified."""
    from ..lora import lora_layers, merge_and_unload, unload

    G = copy.deepcopy(pipe.generator)
    layers = lora_layers(G)
    if layers and not any(layer.disable_adapters for _, layer in layers):
        with warnings.catch_warnings():  # adapters fused with pipe.fuse_lora() are already in the weights: kept as is
            warnings.filterwarnings("ignore", message="All adapters are already merged")
            merge_and_unload(G)
    else:
        unload(G)
    for attr in ("_my3dgen_extras",):  # the loader's adapter bookkeeping belongs to pipe
        if attr in G.__dict__:
            delattr(G, attr)
    G.eval()
    G.requires_grad_(False)
    return G


def _wrap_pipeline(pipe, generator: nn.Module):
    """A pipeline of ``pipe``'s class with ``generator`` in place of ``pipe.generator`` (other components shared)."""
    components = dict(pipe.components)
    components["generator"] = generator
    out = type(pipe)(**components)
    config = getattr(pipe, "_progress_bar_config", None)
    if config:
        out.set_progress_bar_config(**config)
    return out


def project_to_adapted_w(pipe, images: torch.Tensor, labels: torch.Tensor, cache_dir: Optional[PathLike] = None, adapted=None, **kwargs) -> torch.Tensor:
    """W-space projection into the generator as ``pipe`` renders *now* (active adapters merged), where
    :func:`~my3dgen_hf.personalization.project_to_w` projects into the frozen prior (the anchors' space). This is
    inversion with a personalized model (Table 1) and PTI's pivot. ``adapted``: a pipeline from
    :func:`adapted_pipeline` to reuse; ``kwargs`` go to ``project_to_w``. Cache entries of adapted generators live
    in their own sub-folder of ``cache_dir``."""
    from .projector import project_to_w

    tuned = adapted if adapted is not None else adapted_pipeline(pipe)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        if _has_adapters(pipe):  # biases/noise/const are outside the fingerprint: key the adapted generator's entries apart
            cache = cache / f"adapted-{_extras_key(tuned.generator)}"
    return project_to_w(tuned, images, labels, cache_dir=cache, **kwargs)


def adapted_pipeline(pipe):
    """A pipeline of ``pipe``'s class around :func:`adapted_generator_copy` (other components shared)."""
    return _wrap_pipeline(pipe, adapted_generator_copy(pipe))


def _check_pti_inputs(pipe, image, label, w) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    from .projector import _check_inputs

    G = pipe.generator
    if not isinstance(image, torch.Tensor):
        raise PersonalizationError(f"image must be a tensor [1, 3, R, R] or [3, R, R] in [-1, 1], got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise PersonalizationError(
            f"image must be one RGB image [1, 3, R, R] or [3, R, R] in [-1, 1], got shape {tuple(image.shape)}; PTI inverts one image at a time"
        )
    if not torch.isfinite(image).all():
        raise PersonalizationError("image contains NaN or infinite values")
    if not isinstance(label, torch.Tensor):
        label = torch.as_tensor(np.asarray(label, dtype=np.float32))
    if label.numel() != 25 or label.ndim not in (1, 2):
        raise PersonalizationError(
            f"label must be one EG3D camera label of 25 values (16 cam2world + 9 intrinsics), shape [25] or [1, 25]; "
            f"got shape {tuple(label.shape)}"
        )
    label = label.reshape(1, 25).float()
    if not torch.isfinite(label).all():
        raise PersonalizationError("label contains NaN or infinite values")
    image, label = _check_inputs(pipe, image, label)  # square check and resize to the prior's resolution
    if w is not None:
        if not isinstance(w, torch.Tensor):
            raise PersonalizationError(f"w must be a tensor [1, num_ws, w_dim] (a pivot), got {type(w).__name__}")
        w = w.detach().float()
        if w.ndim == 1:
            w = w[None]
        if w.ndim == 2 and w.shape[0] == 1 and w.shape[1] == G.w_dim:
            w = w[:, None, :].repeat(1, G.num_ws, 1)
        elif w.ndim == 2:
            w = w[None]
        if w.ndim != 3 or w.shape != (1, G.num_ws, G.w_dim):
            raise PersonalizationError(
                f"w must be one pivot [1, {G.num_ws}, {G.w_dim}] (or [1, {G.w_dim}]) for this generator, got shape {tuple(w.shape)}"
            )
        if not torch.isfinite(w).all():
            raise PersonalizationError("w contains NaN or infinite values")
    return image, label, w


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise PersonalizationError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PersonalizationError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _extras_key(G: nn.Module) -> str:
    """Hash of the tensors ``base_model_fingerprint`` leaves out (biases, noise strengths, ``const``): with the
    fingerprint it tells adapted generators apart in the projection cache."""
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        if not name.endswith("weight"):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _locality_loss(G_new, G_ref, ws_pivot, c, loss_fn, z_dim, samples, alpha, l2_weight, perceptual_weight, rng, mapping_c):
    """PTI's locality regularizer: renders at ``w_pivot + alpha * (w_r - w_pivot) / |w_r - w_pivot|`` for random
    ``w_r`` (truncation 0.5) should stay as the untuned generator ``G_ref`` renders them."""
    total = 0.0
    z = torch.from_numpy(rng.randn(samples, z_dim)).float().to(ws_pivot.device)
    with torch.no_grad():
        w_r = G_ref.mapping(z, mapping_c.repeat(samples, 1), truncation_psi=0.5)
    for i in range(samples):
        direction = w_r[i : i + 1] - ws_pivot
        w_ball = ws_pivot + alpha * direction / direction.norm(p=2)
        with torch.no_grad():
            old = G_ref.synthesis(w_ball, c, noise_mode="const", deterministic=True)["image"]
        new = G_new.synthesis(w_ball, c, noise_mode="const", deterministic=True)["image"]
        term = 0.0
        if l2_weight:
            term = term + l2_weight * (new - old).square().mean()
        if perceptual_weight:
            term = term + perceptual_weight * loss_fn(new, old).mean()
        total = total + term
    return total / samples


# --------------------------------------------------------------------------------------------------- PTI
def pti_invert(
    pipe,
    image: torch.Tensor,
    label: Union[torch.Tensor, np.ndarray, list],
    w_steps: int = DEFAULT_PTI_W_STEPS,
    tune_steps: int = DEFAULT_PTI_STEPS,
    lr: float = DEFAULT_PTI_LR,
    l2_weight: float = 1.0,
    perceptual_weight: float = 1.0,
    early_stop: Optional[float] = DEFAULT_PTI_EARLY_STOP,
    perceptual: Union[str, nn.Module] = "auto",
    w: Optional[torch.Tensor] = None,
    cache_dir: Optional[PathLike] = None,
    progress: bool = True,
    callback: Optional[Callable[[dict], Optional[bool]]] = None,
    locality_regularization: bool = False,
    locality_samples: int = 1,
    locality_alpha: float = 30.0,
    locality_l2_weight: float = 0.1,
    locality_perceptual_weight: float = 0.1,
    seed: int = 0,
    **projector_settings,
) -> PTIResult:
    """Invert one ``image`` ([1, 3, R, R] or [3, R, R] in [-1, 1], square; resized to the generator's resolution)
    seen from ``label`` (an EG3D camera, [25] or [1, 25]) with Pivotal Tuning Inversion -> :class:`PTIResult`.

    ``w_steps``: W-projection steps for the pivot (:func:`project_to_w`; ``cache_dir`` caches it, further
    ``projector_settings`` such as ``initial_learning_rate`` or ``mse_weight`` go to it). ``w``: a pivot
    [1, num_ws, w_dim] (or [1, w_dim]) to use instead of projecting. ``tune_steps`` (0 = no tuning), ``lr``,
    ``l2_weight``, ``perceptual_weight``, ``early_stop`` (stop as soon as the perceptual value is <= it; None
    never stops early): the pivotal tuning. ``perceptual``: a :func:`perceptual_loss` kind (``"auto"``,
    ``"lpips"``, ``"ms-ssim"``, ...) or a module mapping two [N, 3, H, W] batches to [N] distances.
    ``locality_regularization`` and the ``locality_*`` settings: PTI's optional regularizer (the original's
    values: 1 sample, alpha 30, weights 0.1 / 0.1, every step); ``seed`` seeds its random latents.

    ``callback(dict)``: receives the projector's ``stage="projection"`` dicts, then after every tuning update
    ``dict(stage="pti", step, steps, loss, l2, perceptual)``; returning False cancels
    (:class:`PersonalizationCancelled`). ``pipe`` is not modified: see the module docstring for adapters."""
    from ..metrics import perceptual_loss

    # ---- checks, before any work
    tune_steps = _check_count("tune_steps", tune_steps, 0)
    if w is None:
        w_steps = _check_count("w_steps (the W-projection steps; pass w= to skip the projection)", w_steps, 1)
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr)):
        raise PersonalizationError(f"lr must be a positive number, got {lr!r}")
    l2_weight = _check_weight("l2_weight", l2_weight)
    perceptual_weight = _check_weight("perceptual_weight", perceptual_weight)
    if early_stop is not None:
        early_stop = _check_weight("early_stop", early_stop)
    if locality_regularization:
        locality_samples = _check_count("locality_samples", locality_samples, 1)
        locality_alpha = _check_weight("locality_alpha", locality_alpha)
        locality_l2_weight = _check_weight("locality_l2_weight", locality_l2_weight)
        locality_perceptual_weight = _check_weight("locality_perceptual_weight", locality_perceptual_weight)
    image, label, w = _check_pti_inputs(pipe, image, label, w)
    device = pipe.device
    if isinstance(perceptual, str):
        loss_fn = perceptual_loss(perceptual, reduction="none")
        kind, description = loss_fn.kind, loss_fn.description
    elif isinstance(perceptual, nn.Module):
        loss_fn = perceptual
        kind, description = getattr(perceptual, "kind", type(perceptual).__name__), getattr(perceptual, "description", "")
    else:
        raise PersonalizationError(f"perceptual must be a perceptual_loss kind ('auto', 'lpips', 'ms-ssim', ...) or a module, got {perceptual!r}")
    loss_fn = loss_fn.to(device)

    # ---- the generator to tune: the adapted prior, copied
    G = adapted_generator_copy(pipe)
    tuned = _wrap_pipeline(pipe, G)
    target, c = image.to(device), label.to(device)

    # ---- stage 1: the pivot, in the W of the generator being tuned
    if w is None:
        projector_settings["perceptual"] = perceptual if isinstance(perceptual, str) else "auto"
        w = project_to_adapted_w(
            pipe, target, c, steps=w_steps, cache_dir=cache_dir, progress=progress, callback=callback, batch_size=1, adapted=tuned, **projector_settings
        )
    elif projector_settings:
        raise TypeError(f"projector settings {sorted(projector_settings)} have no effect with a given pivot w")
    ws = w.detach().to(device, torch.float32)

    # ---- stage 2: pivotal tuning of every synthesis weight
    trainable = [p for n, p in G.named_parameters() if not n.startswith("backbone.mapping.")]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=float(lr), betas=(0.9, 0.999))
    need_perceptual = perceptual_weight > 0 or early_stop is not None
    rng = np.random.RandomState(seed)
    mapping_c = pipe.conditioning_label(1).to(device) if locality_regularization else None
    losses: list[dict] = []
    steps_run, stopped_early = 0, False
    bar = None
    if progress and tune_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=tune_steps, desc="pivotal tuning", unit="step")
    try:
        for step in range(tune_steps):
            img = G.synthesis(ws, c, noise_mode="const", deterministic=True)["image"].float()
            l2 = (img - target).square().mean()
            p_val = loss_fn(img, target).mean() if need_perceptual else img.new_zeros(())
            loss = l2_weight * l2 + perceptual_weight * p_val
            entry = {"step": step + 1, "steps": tune_steps, "l2": float(l2.detach()), "perceptual": float(p_val.detach())}
            if locality_regularization:
                reg = _locality_loss(
                    G, pipe.generator, ws, c, loss_fn, G.z_dim, locality_samples, locality_alpha, locality_l2_weight,
                    locality_perceptual_weight, rng, mapping_c,
                )
                loss = loss + reg
                entry["locality"] = float(reg.detach()) if isinstance(reg, torch.Tensor) else float(reg)
            entry["loss"] = float(loss.detach())
            losses.append(entry)
            if early_stop is not None and entry["perceptual"] <= early_stop:
                stopped_early = True  # as the original: checked before the update
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_run += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", perceptual=f"{entry['perceptual']:.4f}")
            if callback is not None and callback({"stage": "pti", **entry}) is False:
                raise PersonalizationCancelled(f"pivotal tuning cancelled by the callback after {steps_run} steps")
    finally:
        if bar is not None:
            bar.close()
        optimizer.zero_grad(set_to_none=True)
        G.requires_grad_(False)
    return PTIResult(
        ws=ws, label=c, generator=G, pipeline=tuned, losses=losses, steps_run=steps_run, stopped_early=stopped_early,
        perceptual_kind=kind, perceptual_description=description,
    )


def _has_adapters(pipe) -> bool:
    from ..lora import lora_layers

    return bool(lora_layers(pipe.generator))

"""Evaluation of multi-view text-to-3D on SynthObjects: the independent-views baseline, view consistency, geometry.

Every measure takes the views a method sampled, as float images [n, 3, H, W] in [0, 1], with the cameras they
were sampled at, [n, 25] (``tunemv3d/cameras.py``), so the baseline and TuneMV3D go through the same protocol.

* **Baseline** (:func:`sample_independent_views`). The frozen base text-to-image model samples each of the n views
  on its own: the same text, independent noise, no coupling. By default the prompt is the caption alone. With
  ``view_prompts=True`` each view's prompt gets the phrase of its camera azimuth, "..., front view" / "side
  view" / "back view" (:func:`view_phrase`), as MVDream-style baselines do with Stable Diffusion. The default is
  off because a base model trained on captions without such phrases (the SynthObjects demo base) never saw them.
  The noise is drawn exactly as ``TuneMV3DPipeline`` draws it (one ``[n, C, h, w]`` tensor from the generator),
  so with the same generator both methods start from the same x_T, and an untrained TuneMV3D (zero convolutions)
  returns the baseline's views.
* **View consistency** (:func:`leave_one_out_consistency`). A small NeuS field (``neus.NeuSField`` +
  ``neus.NeuSRenderer``, the renderer TuneMV3D uses, with an RGB head and a white background) is fitted to n - 1 of
  the views with their known cameras, for a fixed number of steps from a fixed seed. It then renders the
  held-out view, which is compared with the sampled one by PSNR (dB, images in [0, 1]) and SSIM. This is repeated
  for a few held-out views, spread in azimuth (:func:`select_holdout_views`), and averaged. Views that show one 3D
  object are explained by one field, so the held-out view is predicted well; views that disagree are not. The fit
  uses the photometric L1 loss, a foreground-mask loss (pixels farther than ``mask_threshold`` from white are
  foreground) and an Eikonal term on random points. Views are resized to ``resolution`` (area) first.
* **Own-field consistency** (:func:`own_field_consistency`, TuneMV3D only). TuneMV3D's own NeuS field (built
  from the final latents) renders x0 at each view's camera; the render is VAE-decoded and compared with the
  sampled view (PSNR, SSIM). The rendered-features ablation has no x0 to decode and reports nothing here.
* **Geometry** (:func:`geometry_metrics`). Marching cubes on a field's SDF (the first fold's fitted field, or
  ``pipe.extract_mesh`` on TuneMV3D's field). Points are sampled on the mesh surface, seeded, and compared by
  Chamfer distance (``synthobjects.chamfer_distance``: the mean of the two directions' mean nearest-neighbour
  distances, world units) with ``object_points`` of the ground-truth object. The frame is shared, so nothing is
  aligned. SynthObjects objects are centred and scaled to a bounding-box half-diagonal of 0.6 in the y-up world
  of ``tunemv3d/cameras.py``, and ``object_cameras`` builds its cameras with the same ``orbit_cameras``.
  TuneMV3D, trained on those renders, and the fitted field both live in that world. ``chamfer_normalized`` is
  also reported: the predicted points are re-centred on their bounding box and scaled to half-diagonal 0.6 first,
  which removes errors of scale and offset and keeps those of shape.
* **CLIP R-precision** (``my3dgen_hf.metrics.clip_rprecision``, used as is by the benchmark).

``benchmarks/tunemv3d_eval.py`` runs all of it on held-out SynthObjects captions (:func:`held_out_objects`).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..metrics.image import psnr, ssim
from ..synthetic.synthobjects import FIT_RADIUS, ObjectParams, caption, chamfer_distance, object_cameras, object_points, sample_object
from ..utils.export import marching_cubes_mesh, sample_grid
from .cameras import pixel_rays, split_labels
from .neus import NeuSField, NeuSRenderer

__all__ = [
    "DISTRACTOR_SHIFT",
    "HELD_OUT_OFFSET",
    "ConsistencyResult",
    "FieldFitConfig",
    "FittedField",
    "HeldOutObject",
    "camera_azimuths",
    "distractor_captions",
    "evaluate_views",
    "fit_field",
    "foreground_mask",
    "geometry_metrics",
    "held_out_objects",
    "image_metrics",
    "leave_one_out_consistency",
    "mesh_surface_points",
    "normalize_points",
    "own_field_consistency",
    "sample_independent_views",
    "sample_tunemv3d_views",
    "sdf_mesh",
    "select_holdout_views",
    "view_phrase",
]

# First held-out object id. The training streams of training/train_synthobjects_{clip,t2i}.py refuse to reach
# their --eval_offset (10_000_000) and SynthObjects exports start at 0, so ids from here are never trained on.
HELD_OUT_OFFSET = 20_000_000
DISTRACTOR_SHIFT = 500_000  # distractor captions come from objects HELD_OUT_OFFSET + DISTRACTOR_SHIFT, ...


# ------------------------------------------------------------------------------------------------ held-out data
@dataclass
class HeldOutObject:
    object_id: int
    params: ObjectParams
    caption: str
    cameras: torch.Tensor  # [n, 25]


def held_out_objects(
    num_objects: int, num_views: int = 8, seed: int = 1, category: str = "mixed", offset: int = HELD_OUT_OFFSET
) -> list[HeldOutObject]:
    """The first ``num_objects`` objects from id ``offset`` on whose captions are all different (so each caption
    names one object), each with its ``object_cameras`` (n views evenly spaced in azimuth for n a power of two)."""
    out, seen, oid = [], set(), int(offset)
    while len(out) < num_objects:
        params = sample_object(seed, oid, category)
        text = caption(params)
        if text not in seen:
            seen.add(text)
            out.append(HeldOutObject(oid, params, text, object_cameras(seed, oid, num_views)))
        oid += 1
        if oid - offset > 100 * num_objects + 1000:
            raise RuntimeError(f"could not find {num_objects} objects with distinct captions")
    return out


def distractor_captions(
    num: int, exclude: Sequence[str] = (), seed: int = 1, category: str = "mixed", offset: int = HELD_OUT_OFFSET + DISTRACTOR_SHIFT
) -> list[str]:
    """``num`` distinct captions of further held-out objects (from id ``offset``), none of them in ``exclude``."""
    out, seen, oid = [], set(exclude), int(offset)
    while len(out) < num:
        text = caption(sample_object(seed, oid, category))
        if text not in seen:
            seen.add(text)
            out.append(text)
        oid += 1
        if oid - offset > 100 * num + 1000:
            raise RuntimeError(f"could not find {num} distinct distractor captions")
    return out


# ------------------------------------------------------------------------------------------------------ sampling
def camera_azimuths(cameras: torch.Tensor) -> torch.Tensor:
    """Azimuth [n] in degrees [0, 360) of cameras [n, 25] as ``orbit_cameras`` defines it (0: from +z, toward +x)."""
    position = split_labels(torch.as_tensor(cameras, dtype=torch.float32))[0][..., :3, 3]
    return torch.rad2deg(torch.atan2(position[..., 0], position[..., 2])) % 360.0


def view_phrase(azimuth_deg: float) -> str:
    """"front view" within 45 degrees of +z (a SynthObjects chair faces +z), "back view" within 45 degrees of -z,
    else "side view"."""
    a = float(azimuth_deg) % 360.0
    if a <= 45.0 or a >= 315.0:
        return "front view"
    if 135.0 <= a <= 225.0:
        return "back view"
    return "side view"


def _components(base) -> dict:
    names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    if isinstance(base, dict):
        return {k: base.get(k) for k in names}
    return {k: getattr(base, k, None) for k in names}


@torch.no_grad()
def _encode_text(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    """As ``StableDiffusionPipeline.encode_prompt`` does (no LoRA scale, no clip skip)."""
    tok = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    mask = tok.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]


@torch.no_grad()
def sample_independent_views(
    base_pipe_or_components,
    prompt: str,
    cameras: torch.Tensor,
    num_inference_steps: int = 50,
    generator: Optional[torch.Generator] = None,
    guidance_scale: float = 7.5,
    view_prompts: bool = False,
    negative_prompt: Optional[str] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """The baseline: the frozen base model samples the n views of ``cameras`` [n, 25] independently.

    ``base_pipe_or_components``: a ``StableDiffusionPipeline``, a ``TuneMV3DPipeline`` (its frozen base is used)
    or a dict with ``unet``, ``vae`` (None: pixel space), ``text_encoder``, ``tokenizer``, ``scheduler``. The
    cameras only set n and, with ``view_prompts``, each view's phrase. The sampling is Stable Diffusion's:
    classifier-free guidance with the empty (or ``negative_prompt``) text, the scheduler's steps, the VAE decode.
    Returns float images [n, 3, H, W] in [0, 1].
    """
    c = _components(base_pipe_or_components)
    unet, vae, text_encoder, tokenizer = c["unet"], c["vae"], c["text_encoder"], c["tokenizer"]
    scheduler = type(c["scheduler"]).from_config(c["scheduler"].config)  # private state: set_timesteps mutates it
    device, dtype = unet.device, unet.dtype
    n = int(torch.as_tensor(cameras).shape[-2])
    prompts = [prompt] * n
    if view_prompts:
        prompts = [f"{prompt}, {view_phrase(a)}" for a in camera_azimuths(cameras).tolist()]
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    height = height or unet.config.sample_size * scale
    width = width or unet.config.sample_size * scale

    do_cfg = guidance_scale > 1.0
    text = _encode_text(tokenizer, text_encoder, prompts, device).to(dtype)
    if do_cfg:
        uncond = _encode_text(tokenizer, text_encoder, [negative_prompt or ""] * n, device).to(dtype)
        text = torch.cat([uncond, text])
    latents = randn_tensor((n, unet.config.in_channels, height // scale, width // scale), generator=generator, device=device, dtype=dtype)
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    step_params = set(inspect.signature(scheduler.step).parameters)
    extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = unet(model_input, t, encoder_hidden_states=text, return_dict=False)[0]
        if do_cfg:
            uncond_noise, text_noise = noise.chunk(2)
            noise = uncond_noise + guidance_scale * (text_noise - uncond_noise)
        latents = scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
    images = latents if vae is None else vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


@torch.no_grad()
def sample_tunemv3d_views(
    pipe, prompt: str, cameras: torch.Tensor, num_inference_steps: int = 50, generator: Optional[torch.Generator] = None,
    guidance_scale: float = 7.5, **call_kwargs,
):
    """TuneMV3D's n views at ``cameras`` [n, 25]: (float images [n, 3, H, W] in [0, 1], the object's NeuS field)."""
    out = pipe(
        prompt, cameras=torch.as_tensor(cameras, dtype=torch.float32), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        generator=generator, output_type="pt", **call_kwargs,
    )
    return out.images.float().cpu(), out.field[0]


# ------------------------------------------------------------------------------------------- the fitted field
@dataclass
class FieldFitConfig:
    """Settings of the per-object NeuS fit. The defaults take about 5-10 s per fit on one CPU thread at 32 px."""

    resolution: int = 32  # views are resized to resolution x resolution
    steps: int = 300
    rays_per_step: int = 256
    lr: float = 5e-3
    hidden_dim: int = 32
    num_blocks: int = 2
    num_freqs: int = 6
    omega: float = 1.5
    num_samples: int = 24
    num_importance: int = 16
    up_sample_steps: int = 4
    eikonal_weight: float = 0.1
    mask_weight: float = 0.1
    mask_threshold: float = 0.1  # a pixel is foreground when a channel is this far below white
    seed: int = 0


class FittedField(nn.Module):
    """An RGB NeuS field of one scene: ``neus.NeuSField`` (no view features: a constant condition) + ``neus.NeuSRenderer``
    over a white background. ``sdf(points [M, 3]) -> [M]``; ``render(cameras [V, 25], H, W)`` -> rgb, opacity, depth."""

    def __init__(self, config: FieldFitConfig):
        super().__init__()
        self.field = NeuSField(0, 1, 3, config.hidden_dim, config.num_blocks, config.num_freqs, config.omega)
        self.renderer = NeuSRenderer(config.num_samples, config.num_importance, config.up_sample_steps)
        self.register_buffer("background", torch.ones(3))

    def _query(self, points: torch.Tensor, dirs: Optional[torch.Tensor] = None):
        flat = points.reshape(1, -1, 3)
        sdf, rgb = self.field(flat, flat.new_zeros(1, flat.shape[1], 1), None if dirs is None else dirs.reshape(1, -1, 3))
        return sdf.view(points.shape[:-1]), None if rgb is None else torch.sigmoid(rgb).view(*points.shape[:-1], 3)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self._query(points.to(self.background.device))[0]

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict:
        """rays [R, 3] -> values (rgb) [R, 3], opacity [R], depth [R]."""
        out = self.renderer(self._query, rays_o[None], rays_d[None], self.background)
        return {k: v[0] for k, v in out.items()}

    @torch.no_grad()
    def render(self, cameras: torch.Tensor, height: int, width: int, chunk: int = 4096) -> dict:
        """cameras [V, 25] -> rgb [V, 3, H, W] in [0, 1], opacity and depth [V, 1, H, W] (on the CPU)."""
        rays_o, rays_d = pixel_rays(torch.as_tensor(cameras, dtype=torch.float32).to(self.background.device), height, width)
        V = rays_o.shape[0]
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        outs = [self.render_rays(rays_o[i : i + chunk], rays_d[i : i + chunk]) for i in range(0, len(rays_o), chunk)]

        def image(key):
            x = torch.cat([o[key] for o in outs]).reshape(V, height, width, -1)
            return x.permute(0, 3, 1, 2).cpu()

        return {"rgb": image("values"), "opacity": image("opacity"), "depth": image("depth")}


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[V, 3, H, W] -> [V, 3, size, size]: area averaging down, bilinear up."""
    images = torch.as_tensor(images).float()
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if min(images.shape[-2:]) >= size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def foreground_mask(images: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """images [V, 3, H, W] in [0, 1] on white -> bool [V, H, W]: some channel is more than ``threshold`` below 1."""
    return (1.0 - images).amax(1) > threshold


def fit_field(images: torch.Tensor, cameras: torch.Tensor, config: Optional[FieldFitConfig] = None, device=None) -> FittedField:
    """Fit a :class:`FittedField` to views [V, 3, H, W] in [0, 1] (resized to ``config.resolution``) at cameras
    [V, 25]: ``config.steps`` Adam steps on random rays (L1 colour + ``mask_weight`` x BCE(opacity, foreground)
    + ``eikonal_weight`` x (|grad sdf| - 1)^2 on random points of the bounding cube). Deterministic given ``seed``
    (on one device: the rays and points are drawn on the CPU). ``device``: where to fit (default: the CPU)."""
    config = config or FieldFitConfig()
    device = torch.device(device or "cpu")
    images = _resize(images.cpu(), config.resolution)
    cameras = torch.as_tensor(cameras, dtype=torch.float32).cpu()
    if len(images) != len(cameras):
        raise ValueError(f"{len(images)} views but {len(cameras)} cameras")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = FittedField(config).to(device)
    g = torch.Generator().manual_seed(config.seed)
    H = W = config.resolution
    rays_o, rays_d = (x.reshape(-1, 3).to(device) for x in pixel_rays(cameras, H, W))
    target = images.permute(0, 2, 3, 1).reshape(-1, 3).to(device)
    mask = foreground_mask(images, config.mask_threshold).reshape(-1).float().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    with torch.enable_grad():
        for _ in range(config.steps):
            idx = torch.randint(0, len(rays_o), (config.rays_per_step,), generator=g).to(device)
            out = model.render_rays(rays_o[idx], rays_d[idx])
            loss = F.l1_loss(out["values"], target[idx])
            if config.mask_weight > 0:
                loss = loss + config.mask_weight * F.binary_cross_entropy(out["opacity"].clamp(1e-4, 1 - 1e-4), mask[idx])
            if config.eikonal_weight > 0:
                p = (torch.rand(config.rays_per_step, 3, generator=g) * 2 - 1).to(device).requires_grad_(True)
                (grad,) = torch.autograd.grad(model.sdf(p).sum(), p, create_graph=True)
                loss = loss + config.eikonal_weight * ((grad.norm(dim=-1) - 1) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- consistency
def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """PSNR (dB) and SSIM per image of float images [N, 3, H, W] in [0, 1] (SSIM's window shrinks below 11 px)."""
    pred, target = pred.float().clamp(0, 1), target.float().clamp(0, 1)
    side = min(pred.shape[-2:])
    win = min(11, side if side % 2 else side - 1)
    return {"psnr": psnr(pred, target, data_range=1.0).tolist(), "ssim": ssim(pred, target, value_range=(0.0, 1.0), win_size=win).tolist()}


def select_holdout_views(cameras: torch.Tensor, num_folds: int) -> list[int]:
    """``num_folds`` view indices spread evenly in azimuth (the first is the view of smallest azimuth)."""
    n = int(torch.as_tensor(cameras).shape[0])
    num_folds = max(1, min(int(num_folds), n))
    order = torch.argsort(camera_azimuths(cameras)).tolist()
    return sorted({order[(k * n) // num_folds] for k in range(num_folds)})


@dataclass
class ConsistencyResult:
    """Leave-one-out consistency of one object's views: means over the held-out views, the per-view values, the
    field fitted for the first held-out view (on the n - 1 others) and the fitting time."""

    psnr: float
    ssim: float
    per_view: list = field(default_factory=list)  # [{"view", "psnr", "ssim"}]
    fitted: Optional[FittedField] = field(default=None, repr=False)
    fit_seconds: float = 0.0


def leave_one_out_consistency(
    images: torch.Tensor,
    cameras: torch.Tensor,
    config: Optional[FieldFitConfig] = None,
    holdout: Union[None, int, Sequence[int]] = 2,
    device=None,
) -> ConsistencyResult:
    """For each held-out view k (``holdout``: indices, or a number of views spread in azimuth, None: all), fit a
    field to the other views and compare its render at camera k with view k (at ``config.resolution``)."""
    config = config or FieldFitConfig()
    images = _resize(images.cpu(), config.resolution)
    cameras = torch.as_tensor(cameras, dtype=torch.float32).cpu()
    n = len(images)
    if n < 2:
        raise ValueError("leave-one-out consistency needs at least 2 views")
    views = list(range(n)) if holdout is None else select_holdout_views(cameras, holdout) if isinstance(holdout, int) else [int(k) for k in holdout]
    per_view, first, t0 = [], None, time.perf_counter()
    for k in views:
        keep = [i for i in range(n) if i != k]
        fitted = fit_field(images[keep], cameras[keep], config, device)
        first = fitted if first is None else first
        render = fitted.render(cameras[k : k + 1], config.resolution, config.resolution)["rgb"]
        m = image_metrics(render, images[k : k + 1])
        per_view.append({"view": k, "psnr": m["psnr"][0], "ssim": m["ssim"][0]})
    return ConsistencyResult(
        psnr=float(np.mean([v["psnr"] for v in per_view])), ssim=float(np.mean([v["ssim"] for v in per_view])),
        per_view=per_view, fitted=first, fit_seconds=time.perf_counter() - t0,
    )


@torch.no_grad()
def own_field_consistency(pipe, field, images: torch.Tensor, cameras: torch.Tensor) -> Optional[dict]:
    """TuneMV3D's own field (one object) rendered at ``cameras`` [n, 25] and decoded, against its sampled views
    [n, 3, H, W] in [0, 1]: {"psnr", "ssim", "per_view_psnr"}. None when the field renders features (ablation)."""
    if getattr(pipe.interactive.config, "render_target", "x0") != "x0":
        return None
    render = field.render(torch.as_tensor(cameras, dtype=torch.float32).to(field.cameras.device))["x0"][0]  # [n, C, h, w]
    decoded = pipe.decode_latents(render.to(pipe.vae.dtype if pipe.vae is not None else render.dtype))
    decoded = (decoded.float().cpu() / 2 + 0.5).clamp(0, 1)
    if decoded.shape[-2:] != images.shape[-2:]:
        decoded = _resize(decoded, images.shape[-1])
    m = image_metrics(decoded, images)
    return {"psnr": float(np.mean(m["psnr"])), "ssim": float(np.mean(m["ssim"])), "per_view_psnr": m["psnr"]}


# ------------------------------------------------------------------------------------------------- geometry
def mesh_surface_points(mesh, num_points: int, seed: int = 0) -> np.ndarray:
    """``num_points`` points [N, 3] sampled uniformly (area-weighted, seeded) on a ``trimesh.Trimesh``."""
    import trimesh

    points, _ = trimesh.sample.sample_surface(mesh, int(num_points), seed=int(seed))
    return np.asarray(points, dtype=np.float64)


def sdf_mesh(sdf: Callable[[torch.Tensor], torch.Tensor], resolution: int = 64, bound: float = 1.0):
    """Marching cubes of an SDF (negative inside) in [-bound, bound]^3; None when it has no zero crossing there."""
    with torch.no_grad():
        volume = sample_grid(lambda p: sdf(p).reshape(-1), resolution, [-bound] * 3, [bound] * 3, chunk=65536)
    if not volume.min() < 0.0 < volume.max():
        return None
    return marching_cubes_mesh(volume, 0.0, [-bound] * 3, [bound] * 3)


def normalize_points(points: np.ndarray, fit_radius: float = FIT_RADIUS) -> np.ndarray:
    """Centre points [N, 3] on their bounding box and scale its half-diagonal to ``fit_radius`` (SynthObjects' frame)."""
    points = np.asarray(points, dtype=np.float64)
    lo, hi = points.min(0), points.max(0)
    half = float(np.linalg.norm(hi - lo)) / 2
    return (points - (lo + hi) / 2) * (fit_radius / max(half, 1e-9))


def geometry_metrics(mesh, params: ObjectParams, num_points: int = 5000, seed: int = 0) -> dict:
    """Chamfer distances of a predicted mesh (world frame; None: no surface) to the ground truth ``object_points``:
    {"chamfer", "chamfer_normalized"} (NaN without a mesh)."""
    if mesh is None or len(mesh.faces) == 0:
        return {"chamfer": float("nan"), "chamfer_normalized": float("nan")}
    pred = mesh_surface_points(mesh, num_points, seed)
    gt = object_points(params, num_points, seed=seed)
    return {"chamfer": chamfer_distance(pred, gt), "chamfer_normalized": chamfer_distance(normalize_points(pred), gt)}


def evaluate_views(
    images: torch.Tensor,
    cameras: torch.Tensor,
    params: Optional[ObjectParams] = None,
    config: Optional[FieldFitConfig] = None,
    holdout: Union[None, int, Sequence[int]] = 2,
    mesh_resolution: int = 64,
    num_points: int = 5000,
    seed: int = 0,
    device=None,
) -> dict:
    """The method-independent measures of one object's views [n, 3, H, W] in [0, 1] at cameras [n, 25]:
    leave-one-out ``psnr``/``ssim`` (:func:`leave_one_out_consistency`) and, given the ground truth ``params``,
    ``chamfer``/``chamfer_normalized`` of the first fold's fitted field (:func:`geometry_metrics`)."""
    result = leave_one_out_consistency(images, cameras, config, holdout, device)
    out = {"psnr": result.psnr, "ssim": result.ssim, "per_view": result.per_view, "fit_seconds": result.fit_seconds}
    if params is not None:
        out.update(geometry_metrics(sdf_mesh(result.fitted.sdf, mesh_resolution), params, num_points, seed))
    return out

"""The personal latent space of MyStyle (Nitzan et al., 2022) on EG3D: the dilated convex hull of the anchors.

A point of the space is given by per-layer weights ``alphas`` [L, N] over the N anchors (rows sum to 1, entries
>= -beta): ``w_l = sum_i alphas[l, i] * anchors[i, l]``. On it:

- :func:`sample_in_hull` - synthesis: random convex combinations of 3 anchors (MyStyle's ``sample_from_P0``),
- :func:`interpolate_anchors` - straight lines between two anchors,
- :func:`project_to_hull` - the alpha-space projector (per-anchor weights plus per-layer offsets, soft lower bound
  ``-beta``, rows normalized, offset and sum-to-one penalties) with an optional degradation, on which
  :func:`inpaint` (masked loss, blend) and :func:`super_resolve` (loss on the downsampled output) are built,
- :func:`project_w_to_hull` - the exact Euclidean projection of W codes onto the hull (editing's "project" policy).

Anchors are ``[N, num_ws, w_dim]`` (what :func:`~my3dgen_hf.personalization.project_to_w` returns) or ``[N, w_dim]``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .data import PersonalizationCancelled, PersonalizationError

DEFAULT_BETA = 0.03  # MyStyle project.py / edit.py default dilation
DEFAULT_HULL_STEPS = 300  # MyStyle runs 1000 at lr 5e-3; 300 fits a CPU and converges on the demo prior


# ---------------------------------------------------------------------------------------------------- geometry
def layered_anchors(anchors: torch.Tensor, num_ws: int) -> torch.Tensor:
    """anchors [N, w_dim] or [N, num_ws, w_dim] -> [N, num_ws, w_dim]."""
    if not isinstance(anchors, torch.Tensor) or anchors.ndim not in (2, 3):
        raise PersonalizationError(f"anchors must be a tensor [N, w_dim] or [N, num_ws, w_dim], got {getattr(anchors, 'shape', type(anchors))}")
    if len(anchors) == 0:
        raise PersonalizationError("no anchors: project the training images first (project_to_w) or load them (load_anchors)")
    if anchors.ndim == 2:
        anchors = anchors[:, None, :].expand(-1, num_ws, -1)
    if anchors.shape[1] != num_ws:
        raise PersonalizationError(f"anchors have {anchors.shape[1]} layers but the generator has num_ws={num_ws}; were they projected with another base model?")
    return anchors.float()


def hull_ws(alphas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """alphas [B, L, N] (or [B, N]: one weight per anchor for all layers) and anchors [N, L, D] -> ws [B, L, D]."""
    if alphas.ndim == 2:
        alphas = alphas[:, None, :].expand(-1, anchors.shape[1], -1)
    return torch.einsum("bln,nld->bld", alphas.to(anchors), anchors)


def sample_hull_alphas(num_anchors: int, num_samples: int, anchors_per_sample: int = 3, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[num_samples, num_anchors] convex weights, each row non-zero on ``anchors_per_sample`` random anchors with
    uniform random weights normalized to sum 1 (MyStyle's ``sample_from_P0``)."""
    k = min(int(anchors_per_sample), int(num_anchors))
    if k < 1 or num_samples < 0:
        raise PersonalizationError(f"need at least one anchor per sample and num_samples >= 0, got {anchors_per_sample}, {num_samples}")
    weights = torch.rand(num_samples, k, generator=generator)
    weights = weights / weights.sum(-1, keepdim=True)
    idx = torch.stack([torch.randperm(num_anchors, generator=generator)[:k] for _ in range(num_samples)]) if num_samples else torch.zeros(0, k, dtype=torch.long)
    return torch.zeros(num_samples, num_anchors).scatter_(1, idx, weights)


def sample_poses(num_samples: int, yaw_range: float = 0.35, pitch_range: float = 0.25, generator: Optional[torch.Generator] = None):
    """Uniform random (yaw [B], pitch [B]) in +-yaw_range, +-pitch_range (the paper's synthesis range)."""
    yaw = (torch.rand(num_samples, generator=generator) * 2 - 1) * yaw_range
    pitch = (torch.rand(num_samples, generator=generator) * 2 - 1) * pitch_range
    return yaw, pitch


@dataclasses.dataclass
class HullSamples:
    ws: torch.Tensor  # [B, num_ws, w_dim]
    alphas: torch.Tensor  # [B, N] convex weights over the anchors
    yaw: torch.Tensor  # [B]
    pitch: torch.Tensor  # [B]
    images: Optional[torch.Tensor] = None  # [B, 3, H, W] in [-1, 1] when rendered


@torch.no_grad()
def sample_in_hull(
    pipe, anchors: torch.Tensor, num_samples: int = 16, anchors_per_sample: int = 3, yaw_range: float = 0.35, pitch_range: float = 0.25,
    seed: int = 0, render: bool = True, batch_size: int = 8,
) -> HullSamples:
    """Synthesis in the personal space: ``num_samples`` random convex combinations of ``anchors_per_sample``
    anchors, rendered at random poses in +-yaw_range / +-pitch_range (constant noise)."""
    G = pipe.generator
    A = layered_anchors(anchors, G.num_ws).to(pipe.device)
    g = torch.Generator().manual_seed(int(seed))
    alphas = sample_hull_alphas(len(A), num_samples, anchors_per_sample, g)
    yaw, pitch = sample_poses(num_samples, yaw_range, pitch_range, g)
    ws = hull_ws(alphas.to(A), A)
    images = None
    if render:
        images = torch.cat([
            pipe(ws=ws[i : i + batch_size], yaw=yaw[i : i + batch_size], pitch=pitch[i : i + batch_size], output_type="pt").images.cpu()
            for i in range(0, num_samples, batch_size)
        ]) if num_samples else torch.zeros(0, 3, G.img_resolution, G.img_resolution)
    return HullSamples(ws=ws, alphas=alphas, yaw=yaw, pitch=pitch, images=images)


def interpolate_anchors(anchor_a: torch.Tensor, anchor_b: torch.Tensor, num_steps: int = 5) -> torch.Tensor:
    """``num_steps`` ws on the straight line from ``anchor_a`` to ``anchor_b`` ([num_ws, w_dim] or [1, num_ws, w_dim]),
    both ends included -> [num_steps, num_ws, w_dim]."""
    if num_steps < 2:
        raise PersonalizationError(f"interpolation needs at least 2 steps (the two anchors), got {num_steps}")
    a, b = anchor_a.reshape(1, *anchor_a.shape[-2:]), anchor_b.reshape(1, *anchor_b.shape[-2:])
    if a.shape != b.shape:
        raise PersonalizationError(f"anchors to interpolate differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    t = torch.linspace(0, 1, num_steps, dtype=a.dtype, device=a.device)[:, None, None]
    return (1 - t) * a + t * b  # exact at both ends


@torch.no_grad()
def render_interpolation(pipe, anchors: torch.Tensor, i: int, j: int, num_steps: int = 5, yaws: Sequence[float] = (-0.35, 0.0, 0.35), pitch: float = 0.0) -> torch.Tensor:
    """Novel views along the line from anchor ``i`` to anchor ``j``: images [num_steps, len(yaws), 3, H, W]."""
    A = layered_anchors(anchors, pipe.generator.num_ws).to(pipe.device)
    for k in (i, j):
        if not -len(A) <= k < len(A):
            raise PersonalizationError(f"anchor index {k} out of range: there are {len(A)} anchors")
    ws = interpolate_anchors(A[i], A[j], num_steps)
    rows = [pipe(ws=w[None], yaw=list(yaws), pitch=pitch, output_type="pt").images.cpu() for w in ws]
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------ alpha-space projection
@dataclasses.dataclass(frozen=True)
class HullProjectorSettings:
    """MyStyle's alpha projector (``reconstruct/alpha_projector.py`` + ``hyperparams.py``)."""

    steps: int = DEFAULT_HULL_STEPS
    lr: float = 5e-3
    beta: Optional[float] = DEFAULT_BETA  # None: no lower bound (the plain affine span)
    per_layer: bool = True  # W+-style per-layer offsets ("is_wplus")
    l2_weight: float = 1.0
    sum_weight: float = 10.0  # (sum_i alpha_plus[l, i] - 1)^2, mean over layers
    offset_weight: float = 10.0  # sum over the first ``offset_layers`` layers of ||offset_l||
    offset_layers: Optional[int] = None  # None: the first 2/3 of the layers (12 of StyleGAN's 18)
    perceptual: str = "auto"


def constrain_alphas(alpha_plus: torch.Tensor, beta: Optional[float]) -> torch.Tensor:
    """Soft lower bound ``-beta`` (softplus with sharpness 100 around it), then rows normalized to sum 1."""
    if beta is not None:
        alpha_plus = F.softplus(alpha_plus + beta, beta=100) - beta
    return alpha_plus / alpha_plus.sum(-1, keepdim=True)


Degradation = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class HullProjection:
    ws: torch.Tensor  # [B, num_ws, w_dim]
    alphas: torch.Tensor  # [B, num_ws, N] constrained per-layer weights (rows sum to 1)
    image: torch.Tensor  # [B, 3, R, R] the generator's output at the input camera
    losses: list
    output: Optional[torch.Tensor] = None  # task output: the blend (inpainting) or the generator image

    def __post_init__(self):
        if self.output is None:
            self.output = self.image


def _check_targets(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if images.ndim == 3:
        images = images[None]
    if labels.ndim == 1:
        labels = labels[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise PersonalizationError(f"images must be [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
    if labels.ndim != 2 or labels.shape[1] != 25 or len(labels) != len(images):
        raise PersonalizationError(f"labels must be [B, 25] EG3D camera labels, one per image; got {tuple(labels.shape)} for {len(images)} images")
    return images.float(), labels.float()


def project_to_hull(
    pipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    degradation: Optional[Degradation] = None,
    loss_mask: Optional[torch.Tensor] = None,
    progress: bool = True,
    callback: Optional[Callable[[dict], Optional[bool]]] = None,
    **settings,
) -> HullProjection:
    """Find the point of the personal space whose render at ``labels`` [B, 25] matches ``images`` [B, 3, h, w].

    The loss is ``perceptual + l2_weight * L2`` between ``degradation(render)`` and ``images`` (restricted to
    ``loss_mask`` [B, 1, h, w] when given, 1 = compare) plus MyStyle's penalties. Settings are
    :class:`HullProjectorSettings` fields. The generator (with any active adapter) is frozen and left as it was."""
    from ..metrics import perceptual_loss

    unknown = set(settings) - {f.name for f in dataclasses.fields(HullProjectorSettings)}
    if unknown:
        raise TypeError(f"unknown hull projector settings: {sorted(unknown)}")
    cfg = HullProjectorSettings(**settings)
    if cfg.steps < 0:
        raise PersonalizationError(f"steps must be >= 0, got {cfg.steps}")
    G = pipe.generator
    device = pipe.device
    images, labels = _check_targets(images, labels)
    images, labels = images.to(device), labels.to(device)
    A = layered_anchors(anchors, G.num_ws).to(device)
    B, L, N = len(images), G.num_ws, len(A)
    degrade = degradation or (lambda x: x)
    mask = None if loss_mask is None else loss_mask.to(device).float().expand(B, 1, *images.shape[-2:])
    loss_fn = perceptual_loss(cfg.perceptual, reduction="none").to(device)
    offset_layers = cfg.offset_layers if cfg.offset_layers is not None else round(L * 12 / 18)

    alpha = torch.full((B, 1, N), 1.0 / N, device=device, requires_grad=True)  # per-anchor weights
    offsets = torch.zeros(B, L, N, device=device, requires_grad=cfg.per_layer)  # per-layer offsets
    opt = torch.optim.Adam([alpha, offsets] if cfg.per_layer else [alpha], lr=cfg.lr, betas=(0.9, 0.999))

    def current_ws():
        alpha_plus = alpha + offsets  # [B, L, N]
        return alpha_plus, hull_ws(constrain_alphas(alpha_plus, cfg.beta), A)

    requires_grad = {n: p.requires_grad for n, p in G.named_parameters()}
    G.requires_grad_(False)
    bar = None
    if progress and cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc=f"hull projection ({B} image{'s' * (B > 1)})", unit="step")
    losses = []
    try:
        for step in range(cfg.steps):
            alpha_plus, ws = current_ws()
            synth = degrade(G.synthesis(ws, labels, noise_mode="const", deterministic=True)["image"])
            target = images
            if mask is not None:
                synth, target = synth * mask, images * mask
            per_image = loss_fn(synth, target).reshape(B) + cfg.l2_weight * (synth - target).square().mean(dim=(1, 2, 3))
            reg = cfg.offset_weight * offsets[:, :offset_layers].norm(dim=-1).sum() + cfg.sum_weight * (alpha_plus.sum(-1) - 1).square().mean(-1).sum()
            loss = per_image.sum() + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(per_image.detach().mean()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if callback is not None and callback({"stage": "hull_projection", "step": step + 1, "steps": cfg.steps, "loss": losses[-1]}) is False:
                raise PersonalizationCancelled("hull projection cancelled by the callback")
    finally:
        if bar is not None:
            bar.close()
        for n, p in G.named_parameters():
            p.requires_grad_(requires_grad.get(n, False))
    with torch.no_grad():
        alpha_plus, ws = current_ws()
        image = G.synthesis(ws, labels, noise_mode="const", deterministic=True)["image"]
    return HullProjection(ws=ws.detach(), alphas=constrain_alphas(alpha_plus, cfg.beta).detach(), image=image, losses=losses)


def inpaint(pipe, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, anchors: torch.Tensor, **kwargs) -> HullProjection:
    """Fill the holes of ``images`` with the personal prior. ``masks`` [B, 1, H, W] (or [H, W]): 1 where the pixel
    is known, 0 in the hole. The projection sees only known pixels; ``output`` keeps every known pixel of the
    input exactly and takes the generator's render inside the hole."""
    images, labels = _check_targets(images, labels)
    masks = torch.as_tensor(masks, dtype=torch.float32)
    while masks.ndim < 4:
        masks = masks[None]
    if masks.shape[-2:] != images.shape[-2:]:
        raise PersonalizationError(f"mask size {tuple(masks.shape[-2:])} differs from the image size {tuple(images.shape[-2:])}")
    if masks.min() < 0 or masks.max() > 1:
        raise PersonalizationError("masks must hold values in [0, 1] (1 = known pixel, 0 = hole)")
    res = pipe.generator.img_resolution
    if images.shape[-1] != res:
        raise PersonalizationError(f"inpainting works at the prior's resolution {res}; resize the image and mask first (got {images.shape[-1]})")
    result = project_to_hull(pipe, images, labels, anchors, loss_mask=masks, **kwargs)
    m = masks.to(result.image.device).expand(len(images), 1, -1, -1)
    result.output = m * images.to(result.image.device) + (1 - m) * result.image
    return result


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """The super-resolution degradation: antialiased bilinear resize to ``size`` x ``size``."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def super_resolve(pipe, low_res: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, **kwargs) -> HullProjection:
    """Upsample ``low_res`` [B, 3, h, h] (e.g. 32 x 32) to the prior's resolution: the loss compares the
    downsampled render with the input; ``output`` is the full-resolution render."""
    low_res, labels = _check_targets(low_res, labels)
    h, res = low_res.shape[-1], pipe.generator.img_resolution
    if low_res.shape[-2] != h or h >= res:
        raise PersonalizationError(f"low_res must be square and smaller than the prior's {res} x {res}, got {tuple(low_res.shape[-2:])}")
    return project_to_hull(pipe, low_res, labels, anchors, degradation=lambda x: downsample(x, h), **kwargs)


# ----------------------------------------------------------------------------------------- exact hull projection
def project_onto_dilated_simplex(v: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` [..., N] onto {a : sum(a) = 1, a >= -beta}."""
    n = v.shape[-1]
    u = v + beta  # shift: the set becomes the simplex {u >= 0, sum(u) = 1 + n beta}
    total = 1.0 + n * beta
    s, _ = torch.sort(u, dim=-1, descending=True)
    css = s.cumsum(-1) - total
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    rho = ((s - css / k) > 0).to(v.dtype).mul(k).argmax(-1, keepdim=True)  # last index where the condition holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (u - theta).clamp(min=0) - beta


def project_w_to_hull(ws: torch.Tensor, anchors: torch.Tensor, beta: float = DEFAULT_BETA, steps: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The closest point of the dilated hull to each layer of ``ws`` [B, L, D]: minimizes ||alphas_l A_l - w_l||^2
    subject to rows summing to 1 and alphas >= -beta (MyStyle's ``ConvexProjector``, solved here by accelerated
    projected gradient). Returns (projected ws [B, L, D], alphas [B, L, N])."""
    A = layered_anchors(anchors, ws.shape[1]).to(ws).transpose(0, 1)  # [L, N, D]
    gram = A @ A.transpose(1, 2)  # [L, N, N]
    step = 1.0 / torch.linalg.eigvalsh(gram).amax(-1).clamp(min=1e-12)[None, :, None]  # 1 / Lipschitz, per layer
    target = torch.einsum("bld,lnd->bln", ws, A)  # A_l w_l
    alphas = project_onto_dilated_simplex(torch.full(target.shape, 1.0 / A.shape[1], dtype=ws.dtype, device=ws.device), beta)
    y, t = alphas, 1.0
    for _ in range(steps):
        grad = torch.einsum("bln,lnm->blm", y, gram) - target
        nxt = project_onto_dilated_simplex(y - step * grad, beta)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = nxt + ((t - 1) / t_next) * (nxt - alphas)
        alphas, t = nxt, t_next
    return torch.einsum("bln,lnd->bld", alphas, A), alphas


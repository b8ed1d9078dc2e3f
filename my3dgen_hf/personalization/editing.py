"""Semantic editing in the personal space (InterFaceGAN directions applied as in MyStyle).

1. A direction in W: the normal of a linear boundary separating latent codes with and without an attribute
   (:func:`fit_direction`). InterFaceGAN fits a linear SVM; we fit an L2-regularized logistic regression (also a
   linear boundary; no extra dependency). The labelled codes come from ground truth (SynthHeads: project images
   with known smile / closed eyes) or from a classifier the user supplies (:func:`direction_from_classifier`);
   a direction can also be loaded from a file (InterFaceGAN's ``.npy`` boundaries or our ``.safetensors``).
2. Its projection onto the span of the anchors, ``gamma`` with ``gamma @ anchors ~ direction``
   (:func:`direction_in_anchor_span`, MyStyle's ``project_latents_to_spanned_subspace``).
3. The edit in alpha space, ``alphas + m * gamma`` for each magnitude m (:func:`edit_in_hull`), with a policy at the
   edge of the dilated hull: ``"continue"`` (ignore it), ``"stop"`` (clamp m at the edge), ``"project"`` (project the
   edited code back onto the hull).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..utils.io import atomic_path
from .data import PersonalizationError
from .hull import DEFAULT_BETA, hull_ws, layered_anchors, project_w_to_hull

EDGE_POLICIES = ("continue", "stop", "project")


@dataclasses.dataclass
class EditDirection:
    direction: torch.Tensor  # [w_dim], unit norm; positive side = attribute present
    accuracy: Optional[float] = None  # held-out accuracy of the boundary
    name: str = "attribute"

    def save(self, path: Union[str, Path]) -> Path:
        """Write ``.safetensors`` (``direction`` tensor, name and accuracy in the metadata) atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"name": self.name, "accuracy": json.dumps(self.accuracy)}
        with atomic_path(path) as tmp:
            save_file({"direction": self.direction.detach().float().contiguous().cpu()}, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> EditDirection:
        """Load our ``.safetensors`` or an InterFaceGAN ``.npy`` boundary ([1, w_dim]); no pickles."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no edit direction at {path}")
        if path.suffix == ".npy":
            d = torch.from_numpy(np.load(path, allow_pickle=False)).float().reshape(-1)
            return cls(direction=d / d.norm(), name=path.stem)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "direction" not in f.keys():
                raise PersonalizationError(f"{path} has no 'direction' tensor; was it written by EditDirection.save?")
            d = f.get_tensor("direction").float().reshape(-1)
        return cls(direction=d, accuracy=json.loads(meta.get("accuracy", "null")), name=meta.get("name", path.stem))


DIRECTIONS_DIR = "directions"


def save_directions(folder: Union[str, Path], directions: dict) -> list[Path]:
    """Write each :class:`EditDirection` to ``folder/directions/<name>.safetensors``."""
    root = Path(folder) / DIRECTIONS_DIR
    root.mkdir(parents=True, exist_ok=True)
    return [d.save(root / f"{name}.safetensors") for name, d in directions.items()]


def load_directions(folder: Union[str, Path]) -> dict:
    """``{name: EditDirection}`` from ``folder/directions/`` (``.safetensors`` or InterFaceGAN ``.npy``); empty if
    the model has none."""
    root = Path(folder) / DIRECTIONS_DIR
    if not root.is_dir():
        return {}
    return {p.stem: EditDirection.load(p) for p in sorted(root.iterdir()) if p.suffix in (".safetensors", ".npy")}


def _codes(ws: torch.Tensor) -> torch.Tensor:
    """[M, w_dim] or [M, num_ws, w_dim] (first layer: codes projected in W repeat it) -> [M, w_dim]."""
    if ws.ndim == 3:
        ws = ws[:, 0]
    if ws.ndim != 2:
        raise PersonalizationError(f"latent codes must be [M, w_dim] or [M, num_ws, w_dim], got {tuple(ws.shape)}")
    return ws.float()


def fit_direction(ws: torch.Tensor, labels, name: str = "attribute", val_fraction: float = 0.3, l2: float = 1e-3, seed: int = 0) -> EditDirection:
    """The unit normal of a linear boundary between codes ``ws`` with ``labels`` 1 and 0 (a 70/30 split gives the
    held-out accuracy, as InterFaceGAN; the boundary is then refit on all codes)."""
    x = _codes(ws).cpu()
    y = torch.as_tensor(labels, dtype=torch.float32).reshape(-1)
    if len(y) != len(x):
        raise PersonalizationError(f"got {len(x)} codes but {len(y)} labels")
    if not set(torch.unique(y).tolist()) <= {0.0, 1.0} or len(torch.unique(y)) < 2:
        raise PersonalizationError("labels must be 0/1 with both classes present (e.g. threshold a score first)")
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)

    def fit(xs, ys):
        z = (xs - mean) / std
        wb = torch.zeros(z.shape[1] + 1, requires_grad=True)
        opt = torch.optim.LBFGS([wb], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logits = z @ wb[:-1] + wb[-1]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, ys) + l2 * wb[:-1].square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return wb.detach()

    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    accuracy = None
    if n_val >= 2 and len(x) - n_val >= 2:
        val, train = perm[:n_val], perm[n_val:]
        wb = fit(x[train], y[train])
        pred = (((x[val] - mean) / std) @ wb[:-1] + wb[-1]) > 0
        accuracy = float((pred.float() == y[val]).float().mean())
    wb = fit(x, y)
    direction = wb[:-1] / std  # back to W coordinates: logit = (w - mean) / std . v
    return EditDirection(direction=direction / direction.norm(), accuracy=accuracy, name=name)


@torch.no_grad()
def direction_from_classifier(
    pipe, classifier: Callable[[torch.Tensor], torch.Tensor], num_samples: int = 1000, fraction: float = 0.1, seed: int = 0,
    truncation_psi: float = 1.0, batch_size: int = 16, name: str = "attribute",
) -> EditDirection:
    """InterFaceGAN on the prior with a user-supplied attribute classifier (``images [B, 3, H, W] in [-1, 1] ->
    scores [B]``): sample ``num_samples`` codes, render them frontally, keep the top and bottom ``fraction`` by
    score as positives / negatives, fit the boundary."""
    if not 0 < fraction <= 0.5:
        raise PersonalizationError(f"fraction must be in (0, 0.5], got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(num_samples, pipe.generator.z_dim, generator=g)
    ws = pipe.get_ws(latents=z, truncation_psi=truncation_psi)
    scores = torch.cat([
        torch.as_tensor(classifier(pipe(ws=ws[i : i + batch_size], output_type="pt").images)).float().reshape(-1).cpu()
        for i in range(0, num_samples, batch_size)
    ])
    k = max(2, int(num_samples * fraction))
    order = torch.argsort(scores)
    chosen = torch.cat([order[:k], order[-k:]])
    labels = torch.cat([torch.zeros(k), torch.ones(k)])
    return fit_direction(ws[chosen], labels, name=name)


def direction_in_anchor_span(direction: Union[torch.Tensor, EditDirection], anchors: torch.Tensor, num_ws: Optional[int] = None):
    """Least-squares ``gamma`` [num_ws, N] with ``gamma_l @ anchors[:, l] ~ direction`` per layer (minimum norm when
    the anchors are dependent), and the cosine between the direction and its projection [num_ws]."""
    d = direction.direction if isinstance(direction, EditDirection) else direction
    d = d.float().reshape(-1)
    A = layered_anchors(anchors, num_ws or (anchors.shape[1] if anchors.ndim == 3 else 1)).transpose(0, 1).to(d)  # [L, N, D]
    if A.shape[-1] != d.numel():
        raise PersonalizationError(f"direction has {d.numel()} values but the anchors live in a {A.shape[-1]}-dim W")
    gamma = torch.linalg.lstsq(A.transpose(1, 2), d[None, :, None].expand(len(A), -1, -1), driver="gelsd").solution[..., 0]  # [L, N]
    proj = torch.einsum("ln,lnd->ld", gamma, A)
    cosine = torch.nn.functional.cosine_similarity(proj, d[None], dim=-1)
    return gamma, cosine


@dataclasses.dataclass
class EditResult:
    ws: torch.Tensor  # [K, num_ws, w_dim], one per magnitude
    magnitudes: list  # the magnitudes actually applied (clamped under "stop")
    outside: list  # per requested magnitude: whether alphas + m gamma left the dilated hull


def _edge_magnitude(alphas: torch.Tensor, gamma: torch.Tensor, beta: float, sign: float) -> float:
    """Largest |m| in direction ``sign`` with alphas + m gamma >= -beta everywhere."""
    g = gamma * sign
    moving_down = g < 0
    if not bool(moving_down.any()):
        return float("inf")
    return float(((alphas + beta) / (-g)).clamp(min=0)[moving_down].min())


def edit_in_hull(
    alphas: torch.Tensor, gamma: torch.Tensor, anchors: torch.Tensor, magnitudes: Sequence[float], policy: str = "continue", beta: float = DEFAULT_BETA,
) -> EditResult:
    """Apply ``alphas + m * gamma`` (alphas [num_ws, N] or [1, num_ws, N], e.g. ``HullProjection.alphas``) for each
    ``m`` in ``magnitudes``; at the edge of the dilated hull follow ``policy`` (see the module doc)."""
    if policy not in EDGE_POLICIES:
        raise PersonalizationError(f"policy must be one of {EDGE_POLICIES}, got {policy!r}")
    a = alphas.reshape(alphas.shape[-2:]).float()
    A = layered_anchors(anchors, a.shape[0]).to(a)
    gamma = gamma.to(a).expand_as(a)
    ws, used, outside = [], [], []
    for m in magnitudes:
        m = float(m)
        out = bool((a + m * gamma < -beta - 1e-6).any())
        outside.append(out)
        if out and policy == "stop":
            m = float(np.sign(m)) * _edge_magnitude(a, gamma, beta, float(np.sign(m)))
        w = hull_ws((a + m * gamma)[None], A)
        if out and policy == "project":
            w, _ = project_w_to_hull(w, A, beta)
        ws.append(w)
        used.append(m)
    return EditResult(ws=torch.cat(ws) if ws else torch.zeros(0, *A.shape[1:]), magnitudes=used, outside=outside)

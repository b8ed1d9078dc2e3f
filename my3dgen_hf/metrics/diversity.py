"""Intra-cluster diversity (Ojha et al., CVPR 2021, "Few-shot Image Generation via Cross-domain Correspondence").

The protocol the paper's Table 2 uses for few-shot generators: assign each of the N generated samples to the
training image it is closest to under a perceptual distance (LPIPS in the original), then, within every cluster,
average the distance over all unordered pairs of its samples; the score is the mean of these per-cluster averages.
Clusters with fewer than two samples are skipped. Higher means more diverse (a generator that copies its training
images scores ~0).

``distance(a, b) -> [N]`` compares two batches ``[N, 3, H, W]`` pairwise (row i with row i), e.g. an
:class:`~my3dgen_hf.metrics.LPIPS` module, ``perceptual_loss(reduction="none")`` or the ``1 - MS-SSIM`` substitute.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple

import torch

__all__ = ["intra_cluster_diversity", "assign_to_nearest", "DiversityResult"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DiversityResult(NamedTuple):
    """``score``: mean over clusters (``nan`` when no cluster has two members); ``per_cluster``: training index ->
    mean pairwise distance (only clusters with >= 2 members); ``assignments``: ``[N]`` nearest training index of
    each sample; ``cluster_sizes``: ``[K]`` members per training image."""

    score: float
    per_cluster: Dict[int, float]
    assignments: torch.Tensor
    cluster_sizes: torch.Tensor


@torch.no_grad()
def _paired(distance: Distance, a: torch.Tensor, b: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, a.shape[0], batch_size):
        d = distance(a[i : i + batch_size], b[i : i + batch_size])
        out.append(torch.as_tensor(d).reshape(-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def assign_to_nearest(
    samples: torch.Tensor, train_images: torch.Tensor, distance: Distance, batch_size: int = 16
) -> torch.Tensor:
    """Index of the closest training image for each sample (``[N]``), ties to the lower index."""
    n, k = samples.shape[0], train_images.shape[0]
    dists = torch.empty(n, k)
    for j in range(k):
        ref = train_images[j : j + 1].expand(n, *train_images.shape[1:])
        dists[:, j] = _paired(distance, samples, ref, batch_size)
    return dists.argmin(dim=1)


@torch.no_grad()
def intra_cluster_diversity(
    samples: torch.Tensor,
    train_images: torch.Tensor,
    distance: Distance,
    batch_size: int = 16,
) -> DiversityResult:
    """Ojha et al.'s intra-cluster diversity of ``samples`` around ``train_images`` (both ``[*, 3, H, W]``)."""
    assign = assign_to_nearest(samples, train_images, distance, batch_size)
    k = train_images.shape[0]
    sizes = torch.bincount(assign, minlength=k)
    per_cluster: Dict[int, float] = {}
    for c in range(k):
        idx = (assign == c).nonzero().flatten()
        if idx.numel() < 2:
            continue
        pairs = torch.combinations(idx, r=2)  # unordered pairs i < j
        total = 0.0
        for s in range(0, pairs.shape[0], batch_size):  # gather pairs chunk by chunk (memory stays O(batch))
            p = pairs[s : s + batch_size]
            total += float(_paired(distance, samples[p[:, 0]], samples[p[:, 1]], batch_size).sum())
        per_cluster[c] = total / pairs.shape[0]
    vals: List[float] = list(per_cluster.values())
    score = sum(vals) / len(vals) if vals else math.nan
    return DiversityResult(score, per_cluster, assign, sizes)

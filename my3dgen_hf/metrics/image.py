"""Pixel-level image metrics in plain torch: PSNR, SSIM and MS-SSIM.

All functions take batches ``[N, C, H, W]`` and return one value per image (``[N]``).

* PSNR depends only on differences: ``data_range`` is the width of the value range, ``2.0`` for images in
  ``[-1, 1]`` (this project's convention, the default), ``1.0`` for ``[0, 1]``, ``255`` for uint8-valued floats.
* SSIM's luminance term is not invariant to an offset, so SSIM/MS-SSIM take ``value_range`` (default ``(-1, 1)``)
  and map the images to ``[0, 1]`` first: the result equals the usual SSIM of the ``[0, 1]`` (or uint8) image.

SSIM follows Wang et al. (2004): an 11-tap Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
population (not sample) statistics, the map averaged over the "valid" region (no padding) and over channels.
That equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=...)``.

MS-SSIM follows Wang et al. (2003) with the usual five scale weights
``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)`` and 2x average-pool downsampling, like ``pytorch_msssim.ms_ssim``.
Images too small for five scales (the smaller side must exceed ``(win_size - 1) * 2**(scales - 1)``, i.e. 160
pixels for five scales) use as many scales as fit, with the leading weights renormalised to sum to one.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ms_ssim", "MS_SSIM_WEIGHTS", "gaussian_window"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"image batches must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected [N, C, H, W] batches, got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images.

    ``data_range`` is 2.0 for ``[-1, 1]`` inputs (default) and 1.0 for ``[0, 1]`` inputs.
    """
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(data_range**2 / mse)).to(x.dtype if x.is_floating_point() else torch.float32)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (odd), centred."""
    if size % 2 != 1:
        raise ValueError(f"window size must be odd, got {size}")
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable "valid" Gaussian filtering of every channel."""
    c = x.shape[1]
    k = win.numel()
    x = F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _ssim_and_cs(x, y, data_range, win, k1, k2):
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    s_xx = _filter(x * x, win) - mu_xx
    s_yy = _filter(y * y, win) - mu_yy
    s_xy = _filter(x * y, win) - mu_xy
    cs_map = (2 * s_xy + c2) / (s_xx + s_yy + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    # per image and channel
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _to_unit(x: torch.Tensor, value_range: Tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    if (lo, hi) == (0.0, 1.0) or (lo, hi) == (0, 1):
        return x
    return (x - lo) / (hi - lo)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    value_range: Tuple[float, float] = (-1.0, 1.0),
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (mean over the valid region and channels), differentiable.

    Images in ``value_range`` are mapped to ``[0, 1]`` (data range 1) first.
    """
    _check_pair(x, y)
    x, y, data_range = _to_unit(x, value_range), _to_unit(y, value_range), 1.0
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images must be at least {win_size} pixels on each side for SSIM, got {tuple(x.shape)}")
    win = gaussian_window(win_size, sigma, dtype=x.dtype, device=x.device)
    s, _ = _ssim_and_cs(x, y, data_range, win, k1, k2)
    return s.mean(1)


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    value_range: Tuple[float, float] = (-1.0, 1.0),
    win_size: int = 11,
    sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Multi-scale SSIM per image, in ``[0, 1]`` (negative contrast terms are clipped to 0 as in pytorch_msssim).

    Uses ``len(weights)`` scales when the image is large enough (smaller side > ``(win_size-1) * 2**(scales-1)``),
    otherwise as many as fit, the leading weights renormalised. Images in ``value_range`` are mapped to ``[0, 1]``
    first. Differentiable.
    """
    _check_pair(x, y)
    x, y, data_range = _to_unit(x, value_range), _to_unit(y, value_range), 1.0
    side = min(x.shape[-2:])
    levels = _num_ms_ssim_scales(side, win_size, len(weights))
    if side < win_size:
        raise ValueError(f"images must be at least {win_size} pixels on each side for MS-SSIM, got {tuple(x.shape)}")
    w = torch.tensor(list(weights[:levels]), dtype=x.dtype, device=x.device)
    w = w / w.sum()
    win = gaussian_window(win_size, sigma, dtype=x.dtype, device=x.device)
    factors = []
    for i in range(levels):
        s, cs = _ssim_and_cs(x, y, data_range, win, k1, k2)
        if i < levels - 1:
            factors.append(torch.relu(cs))
            pad = [d % 2 for d in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    factors.append(torch.relu(s))
    stacked = torch.stack(factors, 0)  # [levels, N, C]
    val = torch.prod(stacked ** w.view(-1, 1, 1), dim=0)
    return val.mean(1)


def _num_ms_ssim_scales(side: int, win_size: int = 11, max_scales: int = 5) -> int:
    levels = max_scales
    while levels > 1 and side <= (win_size - 1) * 2 ** (levels - 1):
        levels -= 1
    return levels

"""Perceptual distances in plain torch: LPIPS v0.1 (AlexNet / VGG16), DISTS, and the 1 - MS-SSIM substitute.

No torchvision: the AlexNet and VGG16 feature extractors are written here with torchvision's module indices, so a
torchvision ImageNet state dict (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``; only its ``features.*``
entries are used) loads as is.

Weights policy
--------------
* LPIPS linear heads (``lin0..lin4``) ship inside the ``lpips`` package (``lpips/weights/v0.1/{alex,vgg}.pth``);
  they are read from its folder without importing it (its import pulls torchvision). ``pip install --no-deps
  lpips`` is enough. torchmetrics' copy (``torchmetrics/functional/image/lpips_models``) is used when lpips is
  absent.
* DISTS alpha/beta ship inside ``DISTS_pytorch`` (``weights.pt``), read the same way (``pip install --no-deps
  DISTS_pytorch``).
* The ImageNet backbones ship nowhere. They are looked up, in order: the ``backbone_weights`` argument (a path or
  a state dict); ``$MY3DGEN_LPIPS_BACKBONE`` (a file, or a folder holding the standard file names); the torch hub
  cache ``torch.hub.get_dir()/checkpoints/<standard file name>`` (where torchvision itself would have saved them).
* When the backbone is missing, :func:`perceptual_loss` with ``kind="auto"`` falls back to ``1 - MS-SSIM`` and
  prints a one-line notice (once per process); ``.description`` says what is used. :class:`LPIPS` and
  :class:`DISTS` themselves never substitute: they raise :class:`BackboneWeightsNotFound`.

All distances take two ``[N, 3, H, W]`` batches in ``[-1, 1]`` (``normalize=True`` for ``[0, 1]``) and return
``[N]``; they are differentiable with respect to the images and their own parameters are frozen.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import MS_SSIM_WEIGHTS, _num_ms_ssim_scales, ms_ssim

__all__ = [
    "LPIPS",
    "DISTS",
    "MSSSIMDistance",
    "PerceptualLoss",
    "perceptual_loss",
    "perceptual_availability",
    "AlexNetFeatures",
    "VGG16Features",
    "BackboneWeightsNotFound",
    "find_backbone_weights",
    "load_torchvision_features",
    "lpips_heads_path",
    "dists_weights_path",
    "LPIPS_BACKBONE_ENV",
    "TORCHVISION_FILENAMES",
]

LPIPS_BACKBONE_ENV = "MY3DGEN_LPIPS_BACKBONE"
TORCHVISION_FILENAMES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
TORCHVISION_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
_NET_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}
_NOTICES_SHOWN: set = set()


def _notice(key: str, message: str) -> None:
    """Print a one-line notice once per process (to stderr)."""
    if key not in _NOTICES_SHOWN:
        _NOTICES_SHOWN.add(key)
        print(f"[my3dgen_hf.metrics] {message}", file=sys.stderr)


def _canonical_net(net: str) -> str:
    n = net.lower()
    if n in ("alex", "alexnet"):
        return "alex"
    if n in ("vgg", "vgg16"):
        return "vgg"
    raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")


class BackboneWeightsNotFound(FileNotFoundError):
    """The ImageNet backbone weights for LPIPS / DISTS are not available locally."""


# ---------------------------------------------------------------------------------------------------------------
# Feature extractors with torchvision's layer indices
# ---------------------------------------------------------------------------------------------------------------


class _TappedFeatures(nn.Module):
    """A ``features`` Sequential (torchvision layout) returning the activations at the layer indices ``taps``."""

    features: nn.Sequential
    taps: tuple

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
                if i == self.taps[-1]:
                    break
        return outs


class AlexNetFeatures(_TappedFeatures):
    """torchvision ``alexnet().features`` (indices 0..12); returns the 5 ReLU outputs LPIPS uses."""

    taps = (1, 4, 7, 9, 11)
    channels = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )


class L2Pooling(nn.Module):
    """DISTS' L2 pooling: sqrt(hanning-blur(x^2)) with stride 2 (the filter is a non-persistent buffer)."""

    def __init__(self, channels: int, filter_size: int = 5, stride: int = 2):
        super().__init__()
        self.padding = (filter_size - 2) // 2
        self.stride = stride
        a = np.hanning(filter_size)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        g = g / g.sum()
        self.register_buffer("filter", g[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter.to(x.dtype), stride=self.stride, padding=self.padding, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class VGG16Features(_TappedFeatures):
    """torchvision ``vgg16().features`` (indices 0..30); returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

    ``pooling="l2"`` replaces the max pools at 4, 9, 16, 23 by DISTS' :class:`L2Pooling` (no state-dict change).
    """

    taps = (3, 8, 15, 22, 29)
    channels = (64, 128, 256, 512, 512)
    _cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, pooling: str = "max"):
        super().__init__()
        if pooling not in ("max", "l2"):
            raise ValueError(f"pooling must be 'max' or 'l2', got {pooling!r}")
        layers: List[nn.Module] = []
        c = 3
        for v in self._cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2) if pooling == "max" or len(layers) == 30 else L2Pooling(c))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)


_FEATURE_CLASSES = {"alex": AlexNetFeatures, "vgg": VGG16Features}
# first conv's kernel: tells an AlexNet file (11x11) from a VGG16 one (3x3)
_FIRST_KERNEL = {"alex": 11, "vgg": 3}


# ---------------------------------------------------------------------------------------------------------------
# Locating weights
# ---------------------------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Optional[Path]:
    """A package's folder found without importing it (lpips / DISTS_pytorch import torchvision)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    if locs:
        return Path(locs[0])
    return Path(spec.origin).parent if spec.origin else None


def lpips_heads_path(net: str = "alex", version: str = "0.1") -> Path:
    """The LPIPS linear-head file shipped in ``lpips`` (or torchmetrics). Raises ImportError when neither is installed."""
    net = _canonical_net(net)
    candidates = []
    d = _package_dir("lpips")
    if d is not None:
        candidates.append(d / "weights" / f"v{version}" / f"{net}.pth")
    d = _package_dir("torchmetrics")
    if d is not None and version == "0.1":
        candidates.append(d / "functional" / "image" / "lpips_models" / f"{net}.pth")
    for c in candidates:
        if c.is_file():
            return c
    raise ImportError(
        f"LPIPS v{version} linear heads for '{net}' not found (looked in: {[str(c) for c in candidates] or 'no lpips package'}). "
        "They ship inside the `lpips` package: pip install --no-deps lpips  (only its weight files are read; "
        "importing it would need torchvision)."
    )


def dists_weights_path() -> Path:
    """DISTS alpha/beta (``weights.pt``) shipped in ``DISTS_pytorch``. Raises ImportError when not installed."""
    d = _package_dir("DISTS_pytorch")
    candidates = [d / "weights.pt"] if d is not None else []
    candidates.append(Path(sys.prefix) / "weights.pt")  # the wheel also installs a copy there
    for c in candidates:
        if c.is_file():
            return c
    raise ImportError(
        "DISTS alpha/beta weights not found. They ship inside the `DISTS_pytorch` package: "
        "pip install --no-deps DISTS_pytorch  (only its weights.pt is read)."
    )


def _load_any(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _file_matches_net(path: Path, net: str) -> bool:
    if path.name == TORCHVISION_FILENAMES[net]:
        return True  # the standard file name: trust it (load_torchvision_features checks it strictly later)
    try:
        try:  # cheap look at the first conv when the file supports memory mapping
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            sd = _load_any(path)
        w = sd.get("features.0.weight")
        return w is not None and w.shape[-1] == _FIRST_KERNEL[net]
    except Exception:
        return False


def _search_locations(net: str) -> List[Path]:
    locs = []
    env = os.environ.get(LPIPS_BACKBONE_ENV)
    if env:
        p = Path(env).expanduser()
        locs.append(p / TORCHVISION_FILENAMES[net] if p.is_dir() else p)
    locs.append(Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILENAMES[net])
    return locs


def find_backbone_weights(net: str) -> Optional[Path]:
    """Find torchvision ImageNet weights for ``net`` ('alex' | 'vgg') in ``$MY3DGEN_LPIPS_BACKBONE`` or the hub cache.

    A file given by the environment variable is only used when it holds the requested architecture.
    """
    net = _canonical_net(net)
    for p in _search_locations(net):
        if p.is_file() and _file_matches_net(p, net):
            return p
    return None


def _missing_backbone_message(net: str, purpose: str) -> str:
    locs = ", ".join(str(p) for p in _search_locations(net))
    return (
        f"{purpose} needs torchvision's ImageNet {_NET_NAMES[net]} weights ({TORCHVISION_FILENAMES[net]}, "
        f"{TORCHVISION_URLS[net]}); not found (searched: {locs}). Pass backbone_weights=PATH, set "
        f"{LPIPS_BACKBONE_ENV} to the file or its folder, or put it in the torch hub cache."
    )


def load_torchvision_features(
    weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]], net: str
) -> Dict[str, torch.Tensor]:
    """The ``features.*`` entries of a torchvision AlexNet/VGG16 state dict (path or mapping), checked strictly.

    ``classifier.*`` entries are dropped; any missing or unexpected ``features.*`` key, or a wrong shape, raises.
    """
    net = _canonical_net(net)
    sd = _load_any(Path(weights)) if isinstance(weights, (str, os.PathLike)) else weights
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    sd = {(k.removeprefix("module.")): v for k, v in sd.items()}
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}
    ref = _FEATURE_CLASSES[net]().state_dict()
    missing = sorted(set(ref) - set(feats))
    unexpected = sorted(set(feats) - set(ref))
    if missing or unexpected:
        raise ValueError(
            f"not a torchvision {_NET_NAMES[net]} state dict: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    for k, v in feats.items():
        if tuple(v.shape) != tuple(ref[k].shape):
            raise ValueError(f"{k}: expected shape {tuple(ref[k].shape)} for {_NET_NAMES[net]}, got {tuple(v.shape)}")
    return feats


def _resolve_backbone(backbone_weights, net: str, purpose: str):
    if backbone_weights is None:
        found = find_backbone_weights(net)
        if found is None:
            raise BackboneWeightsNotFound(_missing_backbone_message(net, purpose))
        return found
    if isinstance(backbone_weights, (str, os.PathLike)) and not Path(backbone_weights).expanduser().is_file():
        raise BackboneWeightsNotFound(
            f"{purpose}: backbone weights file {backbone_weights} does not exist "
            f"(expected torchvision's {TORCHVISION_FILENAMES[net]}, {TORCHVISION_URLS[net]})."
        )
    if isinstance(backbone_weights, (str, os.PathLike)):
        return Path(backbone_weights).expanduser()
    return backbone_weights


class _FrozenMetric(nn.Module):
    """Frozen parameters, always in eval mode."""

    def _freeze(self):
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)


# ---------------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------------


class ScalingLayer(nn.Module):
    """LPIPS v0.1 input scaling: ``(x - shift) / scale`` for inputs in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)


class NetLinLayer(nn.Module):
    """1x1 conv to one channel; ``model.1`` as in lpips (``model.0`` is its dropout, identity here)."""

    def __init__(self, chn_in: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(chn_in, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise along channels (lpips' ``normalize_tensor``)."""
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class LPIPS(_FrozenMetric):
    """LPIPS v0.1 (Zhang et al. 2018) with an AlexNet or VGG16 trunk, numerically the ``lpips`` package's metric.

    ``backbone_weights``: path to (or mapping of) torchvision's ImageNet state dict; ``None`` searches
    ``$MY3DGEN_LPIPS_BACKBONE`` and the torch hub cache and raises :class:`BackboneWeightsNotFound` when absent.
    ``heads``: path to the linear-head file; ``None`` uses the one shipped in the ``lpips`` package.
    ``forward(x, y, normalize=False)`` returns ``[N]`` (``spatial=True``: ``[N, 1, H, W]`` maps).
    """

    def __init__(
        self,
        net: str = "alex",
        backbone_weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
        heads: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
        spatial: bool = False,
    ):
        super().__init__()
        self.net_type = _canonical_net(net)
        self.spatial = spatial
        self.scaling_layer = ScalingLayer()
        self.net = _FEATURE_CLASSES[self.net_type]()
        chns = self.net.channels
        # lin0..lin4 as in the lpips package (state-dict keys lin{k}.model.1.weight)
        for k, c in enumerate(chns):
            setattr(self, f"lin{k}", NetLinLayer(c))

        src = _resolve_backbone(backbone_weights, self.net_type, f"LPIPS-{self.net_type}")
        self.net.load_state_dict(load_torchvision_features(src, self.net_type), strict=True)
        self.backbone_source = str(src) if isinstance(src, Path) else "<state dict>"

        heads_src = lpips_heads_path(self.net_type) if heads is None else heads
        hsd = _load_any(Path(heads_src)) if isinstance(heads_src, (str, os.PathLike)) else heads_src
        own = {f"lin{k}.model.1.weight" for k in range(len(chns))}
        if set(hsd) != own:
            raise ValueError(f"LPIPS heads: expected keys {sorted(own)}, got {sorted(hsd)}")
        for k in range(len(chns)):
            self.lins[k].model[1].weight.data.copy_(hsd[f"lin{k}.model.1.weight"].reshape(1, chns[k], 1, 1))
        self.heads_source = str(heads_src) if isinstance(heads_src, (str, os.PathLike)) else "<state dict>"
        self._freeze()

    @property
    def lins(self) -> List[NetLinLayer]:
        return [getattr(self, f"lin{k}") for k in range(len(self.net.channels))]

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        n = x.shape[0]
        feats = self.net(self.scaling_layer(torch.cat([x, y], 0)))
        total = 0
        for k, f in enumerate(feats):
            f0, f1 = normalize_tensor(f[:n]), normalize_tensor(f[n:])
            d = self.lins[k]((f0 - f1) ** 2)
            if self.spatial:
                total = total + F.interpolate(d, size=x.shape[2:], mode="bilinear", align_corners=False)
            else:
                total = total + d.mean([2, 3])
        return total if self.spatial else total.reshape(n)


# ---------------------------------------------------------------------------------------------------------------
# DISTS
# ---------------------------------------------------------------------------------------------------------------


class DISTS(_FrozenMetric):
    """DISTS (Ding et al. 2020): structure + texture similarity on VGG16 features with L2 pooling.

    alpha/beta come from ``DISTS_pytorch``'s ``weights.pt`` (``weights=None``) or a given path/mapping; the VGG16
    backbone follows the same policy as :class:`LPIPS` and raises :class:`BackboneWeightsNotFound` when absent
    (DISTS has no substitute). Inputs in [-1, 1] (``normalize=True`` for [0, 1]); returns ``[N]``.
    """

    chns = (3, 64, 128, 256, 512, 512)

    def __init__(
        self,
        backbone_weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
        weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
    ):
        super().__init__()
        self.net = VGG16Features(pooling="l2")
        src = _resolve_backbone(backbone_weights, "vgg", "DISTS")
        self.net.load_state_dict(load_torchvision_features(src, "vgg"), strict=True)
        self.backbone_source = str(src) if isinstance(src, Path) else "<state dict>"
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        wsrc = dists_weights_path() if weights is None else weights
        wsd = _load_any(Path(wsrc)) if isinstance(wsrc, (str, os.PathLike)) else wsrc
        total = sum(self.chns)
        for k in ("alpha", "beta"):
            if k not in wsd or wsd[k].numel() != total:
                raise ValueError(f"DISTS weights: expected '{k}' with {total} entries")
        self.alpha = nn.Parameter(wsd["alpha"].reshape(1, total, 1, 1).float().clone())
        self.beta = nn.Parameter(wsd["beta"].reshape(1, total, 1, 1).float().clone())
        self.weights_source = str(wsrc) if isinstance(wsrc, (str, os.PathLike)) else "<state dict>"
        self._freeze()

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if not normalize:
            x, y = (x + 1) / 2, (y + 1) / 2
        n = x.shape[0]
        both = torch.cat([x, y], 0)
        feats = [both] + self.net((both - self.mean.to(both.dtype)) / self.std.to(both.dtype))
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, list(self.chns), dim=1)
        beta = torch.split(self.beta / w_sum, list(self.chns), dim=1)
        dist1 = dist2 = 0
        for k, f in enumerate(feats):
            f0, f1 = f[:n], f[n:]
            m0, m1 = f0.mean([2, 3], keepdim=True), f1.mean([2, 3], keepdim=True)
            s1 = (2 * m0 * m1 + c1) / (m0**2 + m1**2 + c1)
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            v0 = ((f0 - m0) ** 2).mean([2, 3], keepdim=True)
            v1 = ((f1 - m1) ** 2).mean([2, 3], keepdim=True)
            cov = (f0 * f1).mean([2, 3], keepdim=True) - m0 * m1
            s2 = (2 * cov + c2) / (v0 + v1 + c2)
            dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
        return (1 - (dist1 + dist2)).reshape(n)


# ---------------------------------------------------------------------------------------------------------------
# Substitute and the loss factory
# ---------------------------------------------------------------------------------------------------------------


class MSSSIMDistance(nn.Module):
    """``1 - MS-SSIM`` per image (pure torch, no weights): the documented substitute for LPIPS.

    Gaussian window 11, sigma 1.5, scale weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); images with a side of
    160 px or less use fewer scales (128 px: 4 scales). In [0, 1]; 0 for identical images.
    """

    def __init__(self, win_size: int = 11, sigma: float = 1.5, weights: Sequence[float] = MS_SSIM_WEIGHTS):
        super().__init__()
        self.win_size, self.sigma, self.weights = win_size, sigma, tuple(weights)

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        value_range = (0.0, 1.0) if normalize else (-1.0, 1.0)
        return 1 - ms_ssim(x, y, value_range=value_range, win_size=self.win_size, sigma=self.sigma, weights=self.weights)

    def scales_for(self, side: int) -> int:
        return _num_ms_ssim_scales(side, self.win_size, len(self.weights))


class PerceptualLoss(nn.Module):
    """A perceptual distance used as a loss. ``forward(x, y)`` with images in [-1, 1].

    ``reduction="mean"`` returns a scalar (batch mean), ``"sum"`` the sum, ``"none"`` the ``[N]`` values.
    ``kind`` is what is actually used ('lpips-alex', 'lpips-vgg', 'dists' or 'ms-ssim') and ``description`` says it
    in words, including why a substitute was chosen.
    """

    def __init__(self, distance: nn.Module, kind: str, description: str, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.distance = distance
        self.kind = kind
        self.description = description
        self.reduction = reduction

    @property
    def is_substitute(self) -> bool:
        return self.kind == "ms-ssim"

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        d = self.distance(x, y, normalize=normalize)
        if self.reduction == "mean":
            return d.mean()
        if self.reduction == "sum":
            return d.sum()
        return d

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}"


_MSSSIM_DESCRIPTION = (
    "1 - MS-SSIM (Wang et al. 2003; Gaussian window 11, sigma 1.5, up to 5 scales; pure torch, no weights)"
)


def perceptual_loss(
    kind: str = "auto",
    net: str = "alex",
    reduction: str = "mean",
    backbone_weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
) -> PerceptualLoss:
    """Build a perceptual distance/loss module.

    ``kind``: ``"auto"`` (LPIPS-``net`` when its ImageNet backbone and heads are available, else ``1 - MS-SSIM``
    with a one-line notice), ``"lpips"`` / ``"lpips-alex"`` / ``"lpips-vgg"`` (raise when unavailable),
    ``"dists"`` (raises when unavailable) or ``"ms-ssim"``.
    """
    k = kind.lower()
    if k == "auto":
        net = _canonical_net(net)
        try:
            d = LPIPS(net, backbone_weights=backbone_weights)
        except (BackboneWeightsNotFound, ImportError) as e:
            reason = (
                f"LPIPS backbone weights ({TORCHVISION_FILENAMES[net]}) not found"
                if isinstance(e, BackboneWeightsNotFound)
                else "LPIPS heads not found (pip install --no-deps lpips)"
            )
            _notice(
                f"lpips-substitute-{net}",
                f"{reason}; perceptual loss uses 1 - MS-SSIM instead. For LPIPS set {LPIPS_BACKBONE_ENV} "
                f"or pass backbone_weights (see docs/metrics.md).",
            )
            return PerceptualLoss(
                MSSSIMDistance(), "ms-ssim", f"{_MSSSIM_DESCRIPTION}; substitute for LPIPS-{net}: {reason}", reduction
            )
        return PerceptualLoss(d, f"lpips-{net}", _lpips_description(d), reduction)
    if k in ("lpips", "lpips-alex", "lpips-vgg", "alex", "vgg"):
        net = "vgg" if "vgg" in k else ("alex" if "alex" in k else _canonical_net(net))
        d = LPIPS(net, backbone_weights=backbone_weights)
        return PerceptualLoss(d, f"lpips-{net}", _lpips_description(d), reduction)
    if k == "dists":
        d = DISTS(backbone_weights=backbone_weights)
        return PerceptualLoss(
            d, "dists", f"DISTS (VGG16 backbone {d.backbone_source}, alpha/beta {d.weights_source})", reduction
        )
    if k in ("ms-ssim", "msssim", "ms_ssim"):
        return PerceptualLoss(MSSSIMDistance(), "ms-ssim", _MSSSIM_DESCRIPTION, reduction)
    raise ValueError(f"unknown perceptual kind {kind!r}: use 'auto', 'lpips-alex', 'lpips-vgg', 'dists' or 'ms-ssim'")


def perceptual_availability() -> Dict[str, Optional[str]]:
    """``{kind: None if usable else the reason}`` for 'lpips-alex', 'lpips-vgg', 'dists', 'ms-ssim' (loads nothing).

    Benchmarks use it to report a metric as n/a with its reason instead of failing.
    """
    out: Dict[str, Optional[str]] = {}
    for net in ("alex", "vgg"):
        reason = None
        if find_backbone_weights(net) is None:
            reason = _missing_backbone_message(net, f"LPIPS-{net}")
        else:
            try:
                lpips_heads_path(net)
            except ImportError as e:
                reason = str(e)
        out[f"lpips-{net}"] = reason
    if find_backbone_weights("vgg") is None:
        out["dists"] = _missing_backbone_message("vgg", "DISTS")
    else:
        try:
            dists_weights_path()
            out["dists"] = None
        except ImportError as e:
            out["dists"] = str(e)
    out["ms-ssim"] = None
    return out


def _lpips_description(d: LPIPS) -> str:
    return f"LPIPS v0.1 {_NET_NAMES[d.net_type]} (backbone {d.backbone_source}, linear heads {d.heads_source})"

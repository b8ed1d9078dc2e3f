"""Identity similarity (the paper's ID metrics) with pluggable face-embedding backbones.

* :func:`id_similarity`: synthesis ID similarity, the paper's Eq. 2: for every generated image the maximum
  cosine similarity over the person's reference images, then the mean over generated images.
* :func:`id_reconstruction_similarity`: paired cosine similarity (reconstruction / inversion; ``1 - value`` is
  the "ID error" of the MyStyle eval scripts).

Backbones implement :class:`IdentityBackbone` (``embed(images in [-1, 1]) -> [N, D]`` L2-normalised):

* :class:`ArcFaceIRSE50`: the IR-SE-50 ArcFace network used by pSp / MyStyle / My3DGen, with module names that
  match ``model_ir_se50.pth``. The weights do not ship: pass the file to :meth:`ArcFaceIRSE50.from_pretrained`.
  Preprocessing as in My3DGen: clamp to [-1, 1], ``AdaptiveAvgPool2d((112, 112))`` of the whole image.
* :class:`DlibFaceDescriptor`: dlib's 128-d ResNet face descriptor with 5-point alignment; the model files ship in
  the ``face_recognition_models`` package (``pip install dlib-bin face_recognition_models``).
* :class:`TorchIdentityBackbone`: wraps any ``nn.Module`` that maps images to embeddings (e.g. the SynthHeads
  identity encoder).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import (
    List,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
    runtime_checkable,
)

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IdentityBackbone",
    "IDSimilarity",
    "id_similarity",
    "id_similarity_from_embeddings",
    "id_reconstruction_similarity",
    "embed_in_batches",
    "ArcFaceIRSE50",
    "ARCFACE_WEIGHTS_ENV",
    "DlibFaceDescriptor",
    "DLIB_SAME_PERSON_THRESHOLD",
    "TorchIdentityBackbone",
]

ARCFACE_WEIGHTS_ENV = "MY3DGEN_ARCFACE_WEIGHTS"
DLIB_SAME_PERSON_THRESHOLD = 0.6


@runtime_checkable
class IdentityBackbone(Protocol):
    """Anything with ``embed(images) -> [N, D]`` L2-normalised embeddings, images ``[N, 3, H, W]`` in ``[-1, 1]``."""

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...


class IDSimilarity(NamedTuple):
    """``mean``: the metric (float); ``per_image``: one value per generated (or paired) image, ``[N]`` on CPU."""

    mean: float
    per_image: torch.Tensor


ImagesLike = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_batch(images: ImagesLike) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.unsqueeze(0) if images.ndim == 3 else images
    return torch.stack(list(images), 0)


@torch.no_grad()
def embed_in_batches(backbone: IdentityBackbone, images: ImagesLike, batch_size: int = 16) -> torch.Tensor:
    """Embed ``images`` in chunks without gradients; returns ``[N, D]`` (re-normalised, float32, CPU)."""
    images = _as_batch(images)
    out = [backbone.embed(images[i : i + batch_size]).float().cpu() for i in range(0, images.shape[0], batch_size)]
    return F.normalize(torch.cat(out, 0), dim=1)


def id_similarity_from_embeddings(
    generated: torch.Tensor, references: torch.Tensor, reduction: str = "max"
) -> IDSimilarity:
    """Eq. 2 on precomputed embeddings ``[N, D]`` and ``[M, D]`` (normalised here again)."""
    g = F.normalize(generated.float(), dim=1)
    r = F.normalize(references.float(), dim=1)
    sims = g @ r.t()  # [N, M] cosine similarities
    if reduction == "max":
        per = sims.max(dim=1).values
    elif reduction == "mean":
        per = sims.mean(dim=1)
    else:
        raise ValueError(f"reduction must be 'max' (the paper's Eq. 2) or 'mean', got {reduction!r}")
    return IDSimilarity(float(per.mean()), per.cpu())


def id_similarity(
    generated: ImagesLike,
    references: ImagesLike,
    backbone: IdentityBackbone,
    reduction: str = "max",
    batch_size: int = 16,
) -> IDSimilarity:
    """Synthesis ID similarity (paper Eq. 2).

    ``ID_sim = 1/N sum_i max_j cos(E(g_i), E(r_j))`` over generated images ``g_i`` and the person's reference
    images ``r_j``. ``reduction="mean"`` averages over references instead of taking the max (not the paper's).
    Images are ``[N, 3, H, W]`` in ``[-1, 1]``.
    """
    g = embed_in_batches(backbone, generated, batch_size)
    r = embed_in_batches(backbone, references, batch_size)
    return id_similarity_from_embeddings(g, r, reduction)


def id_reconstruction_similarity(
    a: ImagesLike, b: ImagesLike, backbone: IdentityBackbone, batch_size: int = 16
) -> IDSimilarity:
    """Paired cosine similarity ``cos(E(a_i), E(b_i))`` (e.g. input vs reconstruction); ID error = 1 - mean."""
    ea = embed_in_batches(backbone, a, batch_size)
    eb = embed_in_batches(backbone, b, batch_size)
    if ea.shape != eb.shape:
        raise ValueError(f"paired sets must have the same size, got {ea.shape[0]} and {eb.shape[0]} images")
    per = (ea * eb).sum(1)
    return IDSimilarity(float(per.mean()), per)


# ---------------------------------------------------------------------------------------------------------------
# ArcFace IR-SE-50 (TreB1eN/InsightFace_Pytorch layout, as used by pSp / e4e / MyStyle / My3DGen)
# ---------------------------------------------------------------------------------------------------------------


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convs ``fc1``/``fc2`` (no bias)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


class BottleneckIRSE(nn.Module):
    """Improved-residual unit with SE: BN, conv3x3, PReLU, conv3x3 (stride), BN, SE; plus a shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


# (in_channel, depth, num_units) per stage; the first unit of each stage has stride 2
_IRSE_STAGES = {
    50: [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)],
    100: [(64, 64, 3), (64, 128, 13), (128, 256, 30), (256, 512, 3)],
    152: [(64, 64, 3), (64, 128, 8), (128, 256, 36), (256, 512, 3)],
}

ARCFACE_DOWNLOAD_HINT = (
    "Download the ArcFace IR-SE-50 weights 'model_ir_se50.pth' (TreB1eN/InsightFace_Pytorch, the file that "
    "pSp, e4e and MyStyle link as 'IR-SE50 Model' / 'arcface' in their READMEs) and pass its path to "
    f"ArcFaceIRSE50.from_pretrained(path) or set {ARCFACE_WEIGHTS_ENV}=/path/to/model_ir_se50.pth. "
    "A .safetensors copy with the same keys also works."
)


class ArcFaceIRSE50(nn.Module):
    """ArcFace ``Backbone(input_size=112, num_layers=50, drop_ratio=0.6, mode='ir_se')`` in plain torch.

    State-dict keys match ``model_ir_se50.pth``: ``input_layer.{0,1,2}``, ``body.{0..23}.res_layer.{0..5}`` /
    ``.shortcut_layer.{0,1}``, ``output_layer.{0,3,4}``. ``forward`` returns L2-normalised 512-d embeddings
    of 112x112 inputs; :meth:`embed` applies the My3DGen preprocessing first (clamp to [-1, 1], then
    ``AdaptiveAvgPool2d((112, 112))`` of the whole image, or of ``crop`` when given, e.g. pSp's
    ``(35, 223, 32, 220)`` rows/cols crop of a 256 image). Built in eval mode with frozen parameters; gradients
    still flow to the input (usable as an ID loss).
    """

    def __init__(self, num_layers: int = 50, drop_ratio: float = 0.6, crop: Optional[Tuple[int, int, int, int]] = None):
        super().__init__()
        if num_layers not in _IRSE_STAGES:
            raise ValueError(f"num_layers must be one of {sorted(_IRSE_STAGES)}, got {num_layers}")
        self.input_size = 112
        self.crop = crop
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_c, depth, n in _IRSE_STAGES[num_layers]:
            units.append(BottleneckIRSE(in_c, depth, 2))
            units += [BottleneckIRSE(depth, depth, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            _Flatten(),
            nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=True),
        )
        self.face_pool = nn.AdaptiveAvgPool2d((112, 112))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ArcFaceIRSE50:
        # Always an evaluator: BatchNorm statistics and dropout must stay frozen even inside a training model.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.clamp(-1, 1)
        if self.crop is not None:
            t, b, l, r = self.crop
            x = x[:, :, t:b, l:r]
        return self.face_pool(x)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        p = next(self.parameters())
        return self(self.preprocess(images.to(device=p.device, dtype=p.dtype)))

    @staticmethod
    def convert_state_dict(state_dict) -> dict:
        """Strip wrappers (``module.``, a ``state_dict``/``model`` entry) from a checkpoint's mapping."""
        sd = state_dict
        for k in ("state_dict", "model"):
            if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
                sd = sd[k]
        return {(k.removeprefix("module.")): v for k, v in sd.items()}

    @classmethod
    def from_pretrained(
        cls, path: Union[str, os.PathLike, None] = None, map_location="cpu", strict: bool = True, **kwargs
    ) -> ArcFaceIRSE50:
        """Load user-supplied ``model_ir_se50.pth`` (``torch.load(weights_only=True)``) or a ``.safetensors`` copy.

        ``path=None`` reads ``$MY3DGEN_ARCFACE_WEIGHTS``. Raises :class:`FileNotFoundError` saying where to get the
        file when it is missing.
        """
        if path is None:
            path = os.environ.get(ARCFACE_WEIGHTS_ENV)
            if not path:
                raise FileNotFoundError(f"No ArcFace weights given and ${ARCFACE_WEIGHTS_ENV} is not set. {ARCFACE_DOWNLOAD_HINT}")
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ArcFace weights not found at {path}. {ARCFACE_DOWNLOAD_HINT}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device=str(map_location))
        else:
            sd = torch.load(str(path), map_location=map_location, weights_only=True)
        model = cls(**kwargs)
        model.load_state_dict(cls.convert_state_dict(sd), strict=strict)
        return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Generic torch wrapper
# ---------------------------------------------------------------------------------------------------------------


class TorchIdentityBackbone:
    """Wrap an ``nn.Module`` mapping ``[N, 3, S, S]`` images in ``[-1, 1]`` to embeddings ``[N, D]``.

    ``input_size`` (int or (H, W)): images are resized to it with ``AdaptiveAvgPool2d`` (the ArcFace convention)
    when their size differs; ``None`` feeds them as they are. Inputs are clamped to ``[-1, 1]`` and outputs
    L2-normalised. The module is put in eval mode. Gradients flow (use it inside ``torch.no_grad()`` for metrics,
    which :func:`id_similarity` does).
    """

    def __init__(self, module: nn.Module, input_size: Union[int, Tuple[int, int], None] = None, clamp: bool = True):
        self.module = module.eval()
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = input_size
        self.clamp = clamp

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        try:
            p = next(self.module.parameters())
            images = images.to(device=p.device, dtype=p.dtype)
        except StopIteration:
            pass
        x = images.clamp(-1, 1) if self.clamp else images
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.adaptive_avg_pool2d(x, self.input_size)
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return F.normalize(out.reshape(out.shape[0], -1), dim=1)

    __call__ = embed


# ---------------------------------------------------------------------------------------------------------------
# dlib ResNet face descriptor (models ship in face_recognition_models)
# ---------------------------------------------------------------------------------------------------------------

DLIB_INSTALL_HINT = "pip install dlib-bin face_recognition_models  (or `pip install dlib` to build dlib from source)"


def _face_recognition_models_dir() -> Path:
    # face_recognition_models/__init__ imports pkg_resources (gone from recent setuptools): never import it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ImportError(f"DlibFaceDescriptor needs the dlib model files of `face_recognition_models`: {DLIB_INSTALL_HINT}")
    return Path(spec.origin).parent / "models"


def _import_dlib():
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"DlibFaceDescriptor needs dlib: {DLIB_INSTALL_HINT}") from e
    return dlib


class DlibFaceDescriptor:
    """dlib's 128-d ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``), LFW accuracy 99.38%.

    Each image is converted to uint8 RGB, faces are detected (HOG detector by default, or ``detector="cnn"`` for
    the MMOD CNN detector), the highest-scoring face is aligned with the 5-point shape predictor into a 150x150
    chip (``dlib.get_face_chip``, padding 0.25) and described. Images without a detected face fall back to the
    whole image resized to 150x150; their indices are kept in :attr:`last_no_face` and a one-line notice is printed.

    :meth:`descriptors` returns the raw descriptors (Euclidean distance < 0.6 means "same person" in dlib's
    convention, :meth:`distance`); :meth:`embed` returns them L2-normalised for the cosine-based ID metrics.
    """

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 1,
        num_jitters: int = 0,
        chip_size: int = 150,
        padding: float = 0.25,
        models_dir: Union[str, os.PathLike, None] = None,
        verbose: bool = True,
    ):
        dlib = _import_dlib()
        self._dlib = dlib
        d = Path(models_dir) if models_dir is not None else _face_recognition_models_dir()
        files = {
            "rec": d / "dlib_face_recognition_resnet_model_v1.dat",
            "sp5": d / "shape_predictor_5_face_landmarks.dat",
            "mmod": d / "mmod_human_face_detector.dat",
        }
        for key in ("rec", "sp5") + (("mmod",) if detector == "cnn" else ()):
            if not files[key].is_file():
                raise FileNotFoundError(f"dlib model file missing: {files[key]} ({DLIB_INSTALL_HINT})")
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        elif detector == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(str(files["mmod"]))
        else:
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        self.detector_kind = detector
        self._shape = dlib.shape_predictor(str(files["sp5"]))
        self._rec = dlib.face_recognition_model_v1(str(files["rec"]))
        self.upsample = upsample
        self.num_jitters = num_jitters
        self.chip_size = chip_size
        self.padding = padding
        self.verbose = verbose
        self.last_no_face: List[int] = []

    @staticmethod
    def to_uint8(images: torch.Tensor):
        """``[N, 3, H, W]`` in ``[-1, 1]`` to a list of contiguous uint8 ``H x W x 3`` arrays."""
        import numpy as np

        x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy()) for a in x]

    def _best_face(self, img):
        if self.detector_kind == "cnn":
            dets = self._detector(img, self.upsample)
            if len(dets) == 0:
                return None
            return max(dets, key=lambda d: d.confidence).rect
        rects, scores, _ = self._detector.run(img, self.upsample, 0.0)
        if len(rects) == 0:
            return None
        return rects[max(range(len(rects)), key=lambda i: scores[i])]

    def describe_arrays(self, arrays) -> Tuple[torch.Tensor, List[int]]:
        """Raw descriptors ``[N, 128]`` for uint8 RGB arrays, and the indices where no face was found."""
        import numpy as np

        dlib = self._dlib
        out, no_face = [], []
        for i, img in enumerate(arrays):
            rect = self._best_face(img)
            if rect is None:
                no_face.append(i)
                chip = dlib.resize_image(img, self.chip_size, self.chip_size)
            else:
                shape = self._shape(img, rect)
                chip = dlib.get_face_chip(img, shape, size=self.chip_size, padding=self.padding)
            desc = self._rec.compute_face_descriptor(np.ascontiguousarray(chip), self.num_jitters)
            out.append(torch.tensor(np.array(desc), dtype=torch.float32))
        return torch.stack(out, 0), no_face

    def descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Raw 128-d descriptors of ``[N, 3, H, W]`` images in ``[-1, 1]`` (sets :attr:`last_no_face`)."""
        desc, no_face = self.describe_arrays(self.to_uint8(_as_batch(images)))
        self.last_no_face = no_face
        if no_face and self.verbose:
            print(f"[my3dgen_hf.metrics] DlibFaceDescriptor: no face found in image(s) {no_face}; used the whole image.")
        return desc.to(images.device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.descriptors(images), dim=1)

    @staticmethod
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Euclidean distance between raw descriptors (dlib: < 0.6 means the same person)."""
        return (a - b).norm(dim=-1)


"""Training data for personalization: EG3D-format datasets (images + ``dataset.json``) and image checks.

An EG3D dataset is a folder with square image crops and ``dataset.json``::

    {"labels": [["img_00000.png", [16 cam2world values, 9 normalized intrinsics]], ...]}

(file names relative to the folder, sub-folders allowed). SynthHeads' ``export_dataset`` and
:func:`~my3dgen_hf.personalization.preprocess_photos` both write this layout.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
MIN_IMAGE_SIDE = 32  # smallest accepted crop side in an EG3D dataset (px)
DATASET_JSON = "dataset.json"


class PersonalizationError(ValueError):
    """A bad input to personalization (data, labels, base model, output folder); the message names the cause and the fix."""


class PersonalizationCancelled(RuntimeError):
    """A progress callback returned False during a step that cannot stop half-way (the W projection)."""


# --------------------------------------------------------------------------------------------------- images
class UnusableImage(Exception):
    """Raised by :func:`open_image` with the reason a file cannot be used (the message is the reason)."""


def open_image(path: PathLike, min_side: int = 1):
    """Open ``path`` as an RGB ``PIL.Image`` (EXIF orientation applied) or raise :class:`UnusableImage` saying why."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UnusableImage("file not found")
    if path.is_dir():
        raise UnusableImage("is a folder, not an image file")
    if path.stat().st_size == 0:
        raise UnusableImage("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            im = im.convert("RGB")
    except UnidentifiedImageError:
        raise UnusableImage("not an image (no known image format)") from None
    except Image.DecompressionBombError as e:
        raise UnusableImage(f"image too large to open safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UnusableImage(f"corrupt or truncated image ({e})") from None
    w, h = im.size
    if min(w, h) < min_side:
        raise UnusableImage(f"image too small ({w}x{h} px); need at least {min_side} px on the shorter side")
    return im


def pil_to_tensor(img) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_pil(x: torch.Tensor):
    from PIL import Image

    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def list_files(folder: PathLike) -> list[Path]:
    """Every regular, non-hidden file directly in ``folder`` (sorted by name)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------- labels
def _check_label(name: str, label, index: int) -> list[float]:
    if not isinstance(label, (list, tuple)):
        raise PersonalizationError(f"dataset.json: the label of {name!r} (entry {index}) is not a list of 25 numbers")
    if len(label) != 25:
        raise PersonalizationError(
            f"dataset.json: the label of {name!r} (entry {index}) has {len(label)} values; EG3D labels have 25 "
            "(16 cam2world + 9 intrinsics)"
        )
    try:
        values = [float(v) for v in label]
    except (TypeError, ValueError):
        raise PersonalizationError(f"dataset.json: the label of {name!r} (entry {index}) holds a non-number") from None
    if not all(math.isfinite(v) for v in values):
        raise PersonalizationError(f"dataset.json: the label of {name!r} (entry {index}) holds NaN or infinity")
    rot = np.asarray(values[:16], dtype=np.float64).reshape(4, 4)[:3, :3]
    if np.abs(rot @ rot.T - np.eye(3)).max() > 1e-2:
        raise PersonalizationError(
            f"dataset.json: the label of {name!r} (entry {index}) is not a camera: its cam2world rotation is not "
            "orthonormal (labels are 16 row-major cam2world values, then 9 intrinsics)"
        )
    K = np.asarray(values[16:], dtype=np.float64).reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise PersonalizationError(f"dataset.json: the label of {name!r} (entry {index}) has a non-positive focal length")
    return values


def read_dataset_json(data_dir: PathLike) -> list[tuple[str, list[float]]]:
    """Parse and check ``data_dir/dataset.json`` -> [(relative file name, 25 floats)]."""
    data_dir = Path(data_dir)
    file = data_dir / DATASET_JSON
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise PersonalizationError(f"{data_dir} has no {DATASET_JSON}") from None
    except UnicodeDecodeError:
        raise PersonalizationError(f"{file} is not a text file; it must be JSON {{\"labels\": [[file, [25 numbers]], ...]}}") from None
    except json.JSONDecodeError as e:
        raise PersonalizationError(f"{file} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(raw, dict) or "labels" not in raw:
        raise PersonalizationError(f"{file} has no \"labels\" entry; expected {{\"labels\": [[file, [25 numbers]], ...]}}")
    labels = raw["labels"]
    if labels is None:
        raise PersonalizationError(f"{file} has \"labels\": null (an unconditional dataset); personalization needs camera labels")
    if not isinstance(labels, (list, dict)):
        raise PersonalizationError(f"{file}: \"labels\" must be a list of [file, [25 numbers]] pairs")
    items = list(labels.items()) if isinstance(labels, dict) else labels
    out, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str):
            raise PersonalizationError(f"{file}: entry {i} is not a [file name, [25 numbers]] pair: {str(item)[:80]}")
        name = item[0].replace("\\", "/")
        if name in seen:
            raise PersonalizationError(f"{file}: {name!r} is listed twice")
        seen.add(name)
        out.append((name, _check_label(name, item[1], i)))
    if not out:
        raise PersonalizationError(f"{file} lists no images")
    return out


# --------------------------------------------------------------------------------------------------- loading
def resize_square(img, resolution: int):
    from PIL import Image

    if img.size == (resolution, resolution):
        return img
    return img.resize((resolution, resolution), Image.LANCZOS)


def load_eg3d_dataset(
    data_dir: PathLike, resolution: Optional[int] = None, num_images: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load an EG3D-format dataset -> (images [N, 3, R, R] in [-1, 1], labels [N, 25], names).

    Images are taken in the order of ``dataset.json`` (the first ``num_images`` when given) and resized to
    ``resolution`` (LANCZOS) when it differs; without ``resolution`` all images must share one size. Raises
    :class:`PersonalizationError` naming the file for labels that do not parse, files that are missing, are not
    images, are not square or are too small."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise PersonalizationError(f"data folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise PersonalizationError(f"{data_dir} is not a folder; pass the folder holding the images and {DATASET_JSON}")
    if num_images is not None and num_images < 1:
        raise PersonalizationError(f"num_images must be at least 1, got {num_images}")
    entries = read_dataset_json(data_dir)
    missing = [n for n, _ in entries if not (data_dir / n).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise PersonalizationError(
            f"{data_dir / DATASET_JSON} lists files that do not exist: {', '.join(missing[:3])}{more}; the labels do not "
            "match the files in the folder"
        )
    if num_images is not None:
        entries = entries[:num_images]
    images, sizes = [], {}
    for name, _ in entries:
        try:
            img = open_image(data_dir / name, min_side=MIN_IMAGE_SIDE)
        except UnusableImage as e:
            raise PersonalizationError(f"{data_dir / name}: {e}") from None
        w, h = img.size
        if w != h:
            raise PersonalizationError(
                f"{data_dir / name} is {w}x{h} px, not square: EG3D datasets hold square aligned face crops (use "
                "preprocess_photos for plain photos)"
            )
        sizes.setdefault(w, name)
        images.append(img)
    if resolution is None:
        if len(sizes) > 1:
            (a, na), (b, nb) = list(sizes.items())[:2]
            raise PersonalizationError(f"images have different sizes ({na}: {a} px, {nb}: {b} px); pass resolution=")
        resolution = next(iter(sizes))
    tensors = torch.stack([pil_to_tensor(resize_square(im, int(resolution))) for im in images])
    labels = torch.tensor([lab for _, lab in entries], dtype=torch.float32)
    return tensors, labels, [n for n, _ in entries]


def is_eg3d_dataset(data_dir: PathLike) -> bool:
    return (Path(data_dir) / DATASET_JSON).is_file()


def load_training_data(
    data_dir: PathLike,
    resolution: int,
    num_images: Optional[int] = None,
    preprocessed_dir: Optional[PathLike] = None,
    progress: bool = True,
    log=print,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An EG3D dataset folder (with ``dataset.json``) or a folder of plain photos -> (images, labels, names).

    Plain photos go through :func:`~my3dgen_hf.personalization.preprocess_photos` (crops and labels written to
    ``preprocessed_dir`` for inspection); rejected files are reported through ``log`` and skipped."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise PersonalizationError(f"data folder {data_dir} does not exist")
    if not data_dir.is_dir():
        raise PersonalizationError(f"{data_dir} is not a folder of images")
    if is_eg3d_dataset(data_dir):
        return load_eg3d_dataset(data_dir, resolution=resolution, num_images=num_images)
    files = list_files(data_dir)
    if not files:
        raise PersonalizationError(f"data folder {data_dir} is empty: put photos of one person (or an EG3D dataset) there")
    from .preprocess import preprocess_photos

    result = preprocess_photos(files, preprocessed_dir, resolution, progress=progress)
    for name, reason in result.rejected:
        log(f"skipped {name}: {reason}")
    if len(result.names) == 0:
        reasons = "; ".join(f"{Path(n).name}: {r}" for n, r in result.rejected[:5])
        raise PersonalizationError(f"no usable photo in {data_dir} ({len(result.rejected)} rejected: {reasons})")
    n = len(result.names) if num_images is None else min(int(num_images), len(result.names))
    return result.images[:n], result.labels[:n], result.names[:n]


# --------------------------------------------------------------------------------------------------- output folder
def check_output_dir(output_dir: PathLike) -> Path:
    """Create ``output_dir`` if needed and make sure files can be written there; clear errors otherwise."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise PersonalizationError(f"output_dir {out} exists and is not a folder; choose a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise PersonalizationError(f"output_dir {out} is not writable ({why}); choose a writable folder") from None
    return out


def describe_write_error(path: PathLike, e: OSError) -> PersonalizationError:
    """A clear error for a failed save (the atomic writers leave nothing half-written behind)."""
    if getattr(e, "errno", None) == errno.ENOSPC:
        return PersonalizationError(
            f"disk full while writing {path}: nothing was written (any previous file there is intact); free some space "
            "and save again"
        )
    return PersonalizationError(f"could not write {path} ({e.strerror or e}); nothing was written there")


def stack_names(names: Sequence[str]) -> str:
    return json.dumps(list(names))

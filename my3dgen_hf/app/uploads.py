"""Checks on uploaded photos (type, size, count, readable image) with messages a user can act on."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import AppError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class UploadCheck:
    accepted: list[Path] = field(default_factory=list)  # copies inside the session folder
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)


def _name(p) -> str:
    return Path(str(p)).name


def check_uploads(
    files: Sequence, dest: Path, max_files: int = 40, max_file_mb: float = 15.0, max_pixels: int = 40_000_000
) -> UploadCheck:
    """Validate uploaded files and copy the good ones into ``dest`` (the session's own folder).

    A wrong type, an oversized file or an unreadable image is *rejected with a reason* (the others go on);
    no file at all, or more than ``max_files``, is an :class:`AppError`."""
    from PIL import Image

    paths = [getattr(f, "name", f) if not isinstance(f, (str, Path)) else f for f in (files or [])]
    paths = [Path(str(p)) for p in paths if p]
    if not paths:
        raise AppError("No photos uploaded: add a few photos of one person (JPEG/PNG/WebP), or use a demo identity.")
    if len(paths) > max_files:
        raise AppError(f"{len(paths)} files uploaded; at most {max_files} are accepted at once. Pick the best {max_files}.")
    dest.mkdir(parents=True, exist_ok=True)
    out = UploadCheck()
    used = set()
    for i, path in enumerate(paths):
        name = _name(path)
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            out.rejected.append((name, f"not a supported image type ({suffix or 'no extension'}); use {', '.join(IMAGE_SUFFIXES)}"))
            continue
        if not path.is_file():
            out.rejected.append((name, "the upload did not arrive (file missing on the server); upload it again"))
            continue
        size_mb = path.stat().st_size / 2**20
        if size_mb > max_file_mb:
            out.rejected.append((name, f"too large ({size_mb:.1f} MB > {max_file_mb:g} MB); downscale it"))
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ValueError(f"{w}x{h} pixels is more than {max_pixels:,}")
                im.verify()
            with Image.open(path) as im:  # verify() leaves the file unusable; decode once for real
                im.convert("RGB").load()
        except Exception as e:  # PIL raises many types for broken files
            out.rejected.append((name, f"not a readable image ({e.__class__.__name__}: {e})"))
            continue
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in path.stem)[:60] or "photo"
        target_name = f"{stem}{suffix}"
        if target_name in used:
            target_name = f"{stem}_{i}{suffix}"
        used.add(target_name)
        target = dest / target_name
        shutil.copyfile(path, target)
        out.accepted.append(target)
    return out


def format_rejected(rejected: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [[str(name), str(reason)] for name, reason in rejected]

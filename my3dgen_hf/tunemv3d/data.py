"""The multi-view training data of TuneMV3D (ShapeNet / Objaverse renders).

Layout::

    <root>/
      captions.json                 optional: {"<object_id>": "a wooden chair", ...}
      <object_id>/
        000.png 001.png ...         the views (RGB, or RGBA composited over white), any square size
        cameras.json                one camera per view (below)
        caption.txt                 the object's caption (used when captions.json has no entry for it)

``cameras.json``::

    {"frames": [{"file": "000.png",
                 "cam2world": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
                 "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]},
                ...]}

``cam2world`` maps camera to world coordinates in the OpenCV convention (camera x right, y down, z forward, i.e.
looking along its third column); the world is y-up, the object inside the unit sphere around the origin.
``intrinsics`` are normalized by the image size as in EG3D: fx = focal_px / width, cx = cx_px / width (0.5 for a
centred principal point), fy and cy likewise with the height. An EG3D ``dataset.json``-style
``{"labels": [["000.png", [16 cam2world values, 9 intrinsics values]], ...]}`` is accepted too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
import torch

from .cameras import camera_labels


def read_cameras(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """cameras.json -> (image file names, labels [V, 25])."""
    data = json.loads(Path(path).read_text())
    if "frames" in data:
        files = [f["file"] for f in data["frames"]]
        c2w = torch.tensor([f["cam2world"] for f in data["frames"]], dtype=torch.float32)
        K = torch.tensor([f["intrinsics"] for f in data["frames"]], dtype=torch.float32)
        if c2w.shape[1:] != (4, 4) or K.shape[1:] != (3, 3):
            raise ValueError(f"{path}: cam2world must be 4x4 and intrinsics 3x3 per frame")
        return files, camera_labels(c2w, K)
    if "labels" in data:
        files = [name for name, _ in data["labels"]]
        return files, torch.tensor([label for _, label in data["labels"]], dtype=torch.float32)
    raise ValueError(f"{path}: expected a 'frames' (or 'labels') list")


def write_cameras(path: str | Path, files: Sequence[str], cameras: torch.Tensor) -> None:
    """Labels [V, 25] -> cameras.json in the documented format."""
    frames = [
        {"file": f, "cam2world": c[:16].reshape(4, 4).tolist(), "intrinsics": c[16:].reshape(3, 3).tolist()}
        for f, c in zip(files, cameras.detach().cpu().double())
    ]
    Path(path).write_text(json.dumps({"frames": frames}, indent=1))


def load_image(path: str | Path, resolution: int, background: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """An image as [3, R, R] in [-1, 1]; transparency is composited over ``background`` (RGB in [0, 1])."""
    im = PIL.Image.open(path).convert("RGBA")
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), PIL.Image.Resampling.BICUBIC)
    x = np.asarray(im, dtype=np.float32) / 255.0
    rgb = x[..., :3] * x[..., 3:] + np.asarray(background, dtype=np.float32) * (1 - x[..., 3:])
    return torch.from_numpy(rgb).permute(2, 0, 1) * 2 - 1


class MultiViewDataset(torch.utils.data.Dataset):
    """Objects with their views: ``images`` [n + n', 3, R, R] in [-1, 1], ``cameras`` [n + n', 25], ``caption``.

    The first ``num_views`` views are the inputs of interactive diffusion, the next ``num_novel_views`` only supervise
    the NeuS renders. With ``random_views`` each item draws a random subset of the object's views.
    """

    def __init__(
        self,
        root: str | Path,
        num_views: int = 8,
        num_novel_views: int = 0,
        resolution: int = 256,
        random_views: bool = True,
        background: Sequence[float] = (1.0, 1.0, 1.0),
    ):
        self.root = Path(root)
        self.num_views, self.num_novel_views, self.resolution = num_views, num_novel_views, resolution
        self.random_views, self.background = random_views, tuple(background)
        self.objects = sorted(p for p in self.root.iterdir() if (p / "cameras.json").is_file()) if self.root.is_dir() else []
        if not self.objects:
            raise FileNotFoundError(f"no <object_id>/cameras.json under {self.root}")
        captions_file = self.root / "captions.json"
        self.captions = json.loads(captions_file.read_text()) if captions_file.is_file() else {}

    def __len__(self) -> int:
        return len(self.objects)

    def caption(self, obj: Path) -> str:
        if obj.name in self.captions:
            return self.captions[obj.name]
        if (obj / "caption.txt").is_file():
            return (obj / "caption.txt").read_text().strip()
        raise FileNotFoundError(f"no caption for {obj.name}: add {obj / 'caption.txt'} or an entry in {self.root / 'captions.json'}")

    def __getitem__(self, i: int) -> dict:
        obj = self.objects[i]
        files, cameras = read_cameras(obj / "cameras.json")
        need = self.num_views + self.num_novel_views
        if len(files) < need:
            raise ValueError(f"{obj.name} has {len(files)} views; {need} are needed (num_views + num_novel_views)")
        order = torch.randperm(len(files))[:need] if self.random_views else torch.arange(need)
        images = torch.stack([load_image(obj / files[j], self.resolution, self.background) for j in order.tolist()])
        return {"images": images, "cameras": cameras[order], "caption": self.caption(obj), "object_id": obj.name}


def collate(batch: list[dict]) -> dict:
    return {
        "images": torch.stack([b["images"] for b in batch]),  # [B, V, 3, R, R]
        "cameras": torch.stack([b["cameras"] for b in batch]),  # [B, V, 25]
        "captions": [b["caption"] for b in batch],
        "object_ids": [b["object_id"] for b in batch],
    }


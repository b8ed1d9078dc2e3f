#!/usr/bin/env python
"""Train a small CLIP on SynthObjects renders and their captions (the CLIP of the SynthObjects world).

    python training/train_synthobjects_clip.py --output_dir outputs/synthobjects-clip
    # or: accelerate launch training/train_synthobjects_clip.py --output_dir ... ; resume: --resume_from_checkpoint latest

Model: ``transformers.CLIPModel`` with a tiny ``CLIPConfig`` (text and vision towers of width ``--hidden_size``,
``--text_layers`` / ``--vision_layers`` layers, ``--image_size`` images in ``--patch_size`` patches), so the saved
folder loads with ``CLIPModel.from_pretrained`` and ``my3dgen_hf.metrics.clip_rprecision.CLIPRPrecision(folder)``
with no custom code. Tokenizer: a ``CLIPTokenizer`` with OpenAI CLIP's BPE vocabulary when its
``bpe_simple_vocab_16e6.txt.gz`` is found (``--bpe_path``, ``$MY3DGEN_CLIP_BPE`` or an installed ``open_clip_torch``),
else one learned on the SynthObjects caption vocabulary (``--tokenizer_source``; see
``my3dgen_hf/synthetic/clip_tokenizer.py``).

Data, generated on the fly (no dataset on disk): world ``--data_seed`` (default 1, not the seed-0 world of
``my3dgen-synthobjects`` exports), category ``--category``. Training objects are a sliding window over object ids
0, 1, 2, ...: at step s the window holds ids [s k, s k + P) (P = ``--pool_size``, k = ``--pool_refresh``), each
with ``--views_per_object`` views from random azimuths and elevations in ``--elevation_range``, rendered when the
object enters the window; every step draws ``--train_batch_size`` (object, view) pairs from it. The stream is a
pure function of the step, so a resumed run sees exactly the data of an uninterrupted one. Augmentation: random
horizontal flips (no caption names left or right) and, with probability ``--blur_prob``, a down-and-up resize (like
the blurrier or lower-resolution output of a generator).

Loss: symmetric InfoNCE with CLIP's learnable temperature (``logit_scale``, clamped to ln 100); identical captions
in a batch count as positives of each other. Validation every ``--validation_steps`` steps on ``--eval_objects``
held-out objects (ids from ``--eval_offset``, never in the training stream), ``--eval_views`` views each:
image->text top-1/top-5 among their distinct captions, text->image top-1, and TuneMV3D's CLIP R-precision (100
candidates, view-majority vote), printed and appended to ``<output_dir>/validation.jsonl``.

Output: ``<output_dir>/checkpoint-<step>/`` (accelerate states), ``train_log.jsonl``, ``validation.jsonl``, and the
final model in ``--model_dir`` (default ``<output_dir>/model``, written atomically: ``config.json``,
``model.safetensors``, the tokenizer files, ``preprocessor_config.json``, ``eval.json`` and a README).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from my3dgen_hf.metrics.clip_rprecision import (
    CLIP_MEAN,
    CLIP_STD,
    r_precision_from_embeddings,
)
from my3dgen_hf.synthetic.clip_tokenizer import (
    build_clip_tokenizer,
    save_clip_tokenizer,
)
from my3dgen_hf.synthetic.synthobjects import (
    CAMERA_DISTANCE,
    ELEVATION_RANGE,
    FOV_DEGREES,
    PALETTE,
    caption,
    render_views,
    sample_object,
)
from my3dgen_hf.tunemv3d.cameras import orbit_cameras

logger = logging.getLogger(__name__)

DEFAULT_EVAL_OFFSET = 10_000_000


# ------------------------------------------------------------------------------------------------------------------
# The SynthObjects stream (shared with train_synthobjects_t2i.py)
# ------------------------------------------------------------------------------------------------------------------


def render_object(
    seed: int, object_id: int, category: str, num_views: int, resolution: int, supersample: int = 2,
    elevation_range: Sequence[float] = ELEVATION_RANGE,
) -> tuple[np.ndarray, str]:
    """``num_views`` views of object ``object_id`` of world ``seed`` from random azimuths and elevations (a pure
    function of the arguments), composited on white: (uint8 [V, R, R, 3], caption)."""
    params = sample_object(seed, object_id, category)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(object_id), 0xC11F])
    azimuth = rng.uniform(0.0, 360.0, size=num_views)
    elevation = rng.uniform(float(elevation_range[0]), float(elevation_range[1]), size=num_views)
    cams = orbit_cameras(azimuth, elevation, CAMERA_DISTANCE, FOV_DEGREES)
    rgba = render_views(params, cams, resolution, supersample).astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # straight colour over white
    return (rgb * 255.0).round().astype(np.uint8), caption(params)


class SynthObjectsStream:
    """A sliding window over the objects ``id_offset + 0, 1, 2, ...`` of a SynthObjects world.

    At step s the window holds objects ``[s * refresh, s * refresh + pool_size)`` (plus ``id_offset``), each with
    ``views_per_object`` rendered views; :meth:`sample` draws a batch of (object, view) pairs for step s, seeded by
    ``(sample_seed, step, rank)``: the data of a step does not depend on what was sampled before it (resumable).
    """

    def __init__(
        self, seed: int = 1, category: str = "mixed", resolution: int = 64, supersample: int = 2, pool_size: int = 2048,
        refresh: int = 4, views_per_object: int = 2, elevation_range: Sequence[float] = ELEVATION_RANGE,
        sample_seed: int = 0, id_offset: int = 0,
    ):
        if pool_size < 1 or refresh < 0 or views_per_object < 1:
            raise ValueError("pool_size and views_per_object must be >= 1, refresh >= 0")
        self.seed, self.category, self.resolution, self.supersample = int(seed), category, int(resolution), int(supersample)
        self.pool_size, self.refresh, self.views_per_object = int(pool_size), int(refresh), int(views_per_object)
        self.elevation_range, self.sample_seed, self.id_offset = tuple(elevation_range), int(sample_seed), int(id_offset)
        self._objects: dict[int, tuple[np.ndarray, str]] = {}
        self.render_seconds = 0.0

    def window(self, step: int) -> range:
        start = self.id_offset + int(step) * self.refresh
        return range(start, start + self.pool_size)

    def last_object_id(self, num_steps: int) -> int:
        """The largest object id the stream uses in steps 0 .. num_steps - 1."""
        return self.window(max(0, num_steps - 1))[-1]

    def get(self, object_id: int) -> tuple[np.ndarray, str]:
        if object_id not in self._objects:
            t0 = time.perf_counter()
            self._objects[object_id] = render_object(
                self.seed, object_id, self.category, self.views_per_object, self.resolution, self.supersample, self.elevation_range
            )
            self.render_seconds += time.perf_counter() - t0
        return self._objects[object_id]

    def advance_to(self, step: int) -> None:
        """Render the objects that enter the window at ``step`` and forget those that left it."""
        ids = self.window(step)
        for oid in [k for k in self._objects if k not in ids]:
            del self._objects[oid]
        for oid in ids:
            self.get(oid)

    def sample(self, step: int, batch_size: int, rank: int = 0, return_views: bool = False):
        """Step ``step``'s batch: (uint8 images [B, R, R, 3], captions, object ids [B]) (and view indices [B])."""
        self.advance_to(step)
        rng = np.random.default_rng([self.sample_seed, int(step), int(rank), 0x5A3])
        ids = self.window(step)
        pos = rng.choice(len(ids), size=batch_size, replace=batch_size > len(ids))
        views = rng.integers(self.views_per_object, size=batch_size)
        images, captions = [], []
        for p, v in zip(pos, views):
            imgs, text = self.get(ids[int(p)])
            images.append(imgs[int(v)])
            captions.append(text)
        object_ids = np.asarray([ids[int(p)] for p in pos])
        return (np.stack(images), captions, object_ids, views) if return_views else (np.stack(images), captions, object_ids)


def eval_set(seed: int, category: str, num_objects: int, num_views: int, resolution: int, supersample: int,
             elevation_range: Sequence[float], offset: int) -> tuple[np.ndarray, list[str]]:
    """Held-out objects ``offset .. offset + num_objects - 1``: (uint8 [O, V, R, R, 3], captions)."""
    out = [render_object(seed, offset + i, category, num_views, resolution, supersample, elevation_range) for i in range(num_objects)]
    return np.stack([o[0] for o in out]), [o[1] for o in out]


@functools.lru_cache(maxsize=4)
def caption_corpus(num_objects: int = 4000) -> tuple[str, ...]:
    """Captions covering SynthObjects' whole caption vocabulary (to learn a tokenizer when CLIP's BPE is absent)."""
    texts = [caption(sample_object(0, i, "mixed")) for i in range(num_objects)]
    texts += [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {noun}" for c in PALETTE for noun in ("chair", "armchair", "table", "coffee table", "dining table")]
    return tuple(texts)


def make_tokenizer(args, folder=None):
    """The tokenizer of ``--tokenizer_source`` / ``--bpe_path``, ``--max_text_length`` tokens."""
    corpus = caption_corpus() if args.tokenizer_source != "clip" else None
    return build_clip_tokenizer(folder, source=args.tokenizer_source, bpe_path=args.bpe_path, corpus=corpus, model_max_length=args.max_text_length)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def clip_normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> CLIP pixel values (what ``clip_rprecision.preprocess_images`` gives at the same size)."""
    mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, flip_prob: float = 0.5, blur_prob: float = 0.3,
            min_scale: float = 0.4) -> torch.Tensor:
    """Random horizontal flips and down-and-up resizes (to min_scale .. 0.85 of the size) of [B, 3, H, W] images."""
    B, _, H, W = x.shape
    if flip_prob > 0:
        flip = torch.rand(B, generator=generator) < flip_prob
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if blur_prob > 0:
        blur = (torch.rand(B, generator=generator) < blur_prob).nonzero()[:, 0]
        scales = torch.empty(len(blur)).uniform_(min_scale, 0.85, generator=generator)
        x = x.clone()
        for i, s in zip(blur.tolist(), scales.tolist()):
            small = F.interpolate(x[i : i + 1], size=(max(4, round(H * s)), max(4, round(W * s))), mode="bilinear", antialias=True, align_corners=False)
            x[i : i + 1] = F.interpolate(small, size=(H, W), mode="bicubic", align_corners=False).clamp(0, 1)
    return x


# ------------------------------------------------------------------------------------------------------------------
# Model, loss, evaluation
# ------------------------------------------------------------------------------------------------------------------


def build_clip(args, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": len(tokenizer), "hidden_size": args.hidden_size, "intermediate_size": 4 * args.hidden_size, "num_hidden_layers": args.text_layers,
        "num_attention_heads": args.num_heads, "max_position_embeddings": args.max_text_length, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": args.hidden_size, "intermediate_size": 4 * args.hidden_size, "num_hidden_layers": args.vision_layers,
        "num_attention_heads": args.num_heads, "image_size": args.image_size, "patch_size": args.patch_size,
    }
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=args.projection_dim))


def _embeds(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def contrastive_loss(model, input_ids, attention_mask, pixel_values, captions: Sequence[str]) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE over the batch, identical captions being positives of each other."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_dict=True)
    logits = out.logits_per_image  # [B, B]: image i vs text j, times exp(logit_scale)
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([index[c] for c in captions], device=logits.device)
    same = (cid[:, None] == cid[None]).float()
    targets = same / same.sum(1, keepdim=True)
    loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    with torch.no_grad():
        acc = (same.gather(1, logits.argmax(1, keepdim=True)) > 0).float().mean()
    return loss, {"loss": loss.item(), "batch_i2t_acc": acc.item()}


@torch.no_grad()
def encode(model, tokenizer, images: torch.Tensor | None = None, texts: Sequence[str] | None = None, batch_size: int = 256):
    """L2-normalized embeddings of CLIP pixel values [N, 3, S, S] and/or texts."""
    device = next(model.parameters()).device
    img = txt = None
    if images is not None:
        img = torch.cat([_embeds(model.get_image_features(pixel_values=images[i : i + batch_size].to(device))) for i in range(0, len(images), batch_size)])
        img = F.normalize(img.float(), dim=-1).cpu()
    if texts is not None:
        chunks = []
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, return_tensors="pt")
            chunks.append(_embeds(model.get_text_features(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))))
        txt = F.normalize(torch.cat(chunks).float(), dim=-1).cpu()
    return img, txt


@torch.no_grad()
def evaluate_retrieval(model, tokenizer, images: np.ndarray, captions: Sequence[str], num_candidates: int = 100, seed: int = 0) -> dict:
    """images uint8 [O, V, R, R, 3] of O held-out objects, their captions -> retrieval metrics (see the module doc)."""
    was_training = model.training
    model.eval()
    O, V = images.shape[:2]
    pixel = clip_normalize(to_unit(images.reshape(O * V, *images.shape[2:])))
    texts = list(dict.fromkeys(captions))
    row = {t: i for i, t in enumerate(texts)}
    target = torch.tensor([row[c] for c in captions])
    img, txt = encode(model, tokenizer, pixel, texts)
    sim = img @ txt.T  # [O V, T]
    view_target = target.repeat_interleave(V)
    top5 = sim.topk(min(5, len(texts)), dim=1).indices
    i2t1 = (top5[:, 0] == view_target).float().mean().item()
    i2t5 = (top5 == view_target[:, None]).any(1).float().mean().item()
    # text -> image: each object's caption retrieves one of the O V images; correct if it shows that caption
    t2i = (view_target[sim[:, target].argmax(0)] == target).float().mean().item()
    # CLIP R-precision as TuneMV3D reports it: own caption + (num_candidates - 1) other captions, view-majority vote
    rng = np.random.default_rng(seed)
    candidates = []
    for t in target.tolist():
        others = [k for k in range(len(texts)) if k != t]
        chosen = [t, *rng.choice(others, size=min(num_candidates - 1, len(others)), replace=False).tolist()]
        rng.shuffle(chosen)
        candidates.append(chosen)
    result = r_precision_from_embeddings(img.view(O, V, -1), [txt[c] for c in candidates], [c.index(t) for c, t in zip(candidates, target.tolist())])
    model.train(was_training)
    return {
        "i2t_top1": i2t1, "i2t_top5": i2t5, "t2i_top1": t2i, f"r_precision@{min(num_candidates, len(texts))}": result.r_precision,
        "num_objects": O, "num_views": V, "num_distinct_captions": len(texts),
        "logit_scale": model.logit_scale.detach().exp().item() if hasattr(model, "logit_scale") else None,
    }


# ------------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------------


def checkpoints(output_dir) -> list[Path]:
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_checkpoint(output_dir, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {resume} not found")
    return path


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int | None) -> Path:
    """accelerate's save_state into ``checkpoint-<step>`` (written to a temporary name, then renamed)."""
    if total_limit is not None:
        old = checkpoints(output_dir)
        for path in old[: max(0, len(old) - total_limit + 1)]:
            shutil.rmtree(path)
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def atomic_save(folder, write) -> Path:
    """``write(tmp_folder)`` then rename the temporary folder to ``folder`` (an existing ``folder`` is replaced)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def append_jsonl(path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def setup_run(args):
    """(accelerator, output folder, final model folder) for a training run: threads, Accelerate, logging, seed."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    torch.set_num_threads(args.num_threads)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(args.seed)
    out = Path(args.output_dir)
    return accelerator, out, Path(args.model_dir) if args.model_dir else out / "model"


def resume(accelerator, output_dir: Path, resume_from: str | None) -> int:
    """Load the checkpoint ``resume_from`` names (a folder or 'latest') into ``accelerator``; the step to start at."""
    ckpt = resolve_checkpoint(output_dir, resume_from)
    if resume_from and ckpt is None:
        accelerator.print(f"no checkpoint in {output_dir}; starting a new run")
    if ckpt is None:
        return 0
    accelerator.print(f"resuming from {ckpt}")
    accelerator.load_state(str(ckpt))
    return int(ckpt.name.split("-")[-1])


def log_validation(accelerator, output_dir: Path, metrics: dict, step: int) -> dict:
    """Print the validation metrics, append them to validation.jsonl and send them to the trackers."""
    accelerator.print("validation " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    if accelerator.is_main_process:
        append_jsonl(output_dir / "validation.jsonl", metrics)
    accelerator.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
    return metrics


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases, norms, embeddings or the temperature)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------------


def _elevation(text: str) -> tuple[float, float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) == 1:
        return (parts[0], parts[0])
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected DEG or LO,HI, got {text!r}")
    return (parts[0], parts[1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--output_dir", default="outputs/synthobjects-clip")
    a("--model_dir", default=None, help="where the final model goes (default <output_dir>/model)")
    a("--seed", type=int, default=0, help="initialization, sampling and augmentation seed")
    a("--num_threads", type=int, default=1, help="torch CPU threads (1 is fastest for models this small)")
    # data
    a("--data_seed", type=int, default=1, help="SynthObjects world seed")
    a("--category", choices=("chair", "table", "mixed"), default="mixed")
    a("--image_size", type=int, default=64, help="render and model resolution")
    a("--supersample", type=int, default=2, help="anti-aliasing rays per pixel side")
    a("--elevation_range", type=_elevation, default=ELEVATION_RANGE, help="camera elevation LO,HI in degrees")
    a("--pool_size", type=int, default=2048, help="objects in the sliding window")
    a("--pool_refresh", type=int, default=4, help="objects entering (and leaving) the window per step")
    a("--views_per_object", type=int, default=2)
    a("--flip_prob", type=float, default=0.5)
    a("--blur_prob", type=float, default=0.3)
    # tokenizer
    a("--tokenizer_source", choices=("auto", "clip", "corpus"), default="auto",
      help="clip: OpenAI CLIP's BPE vocabulary; corpus: learned on SynthObjects captions; auto: clip when found")
    a("--bpe_path", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: $MY3DGEN_CLIP_BPE or open_clip's copy)")
    a("--max_text_length", type=int, default=32, help="tokens per caption (and text position embeddings)")
    # model
    a("--hidden_size", type=int, default=128)
    a("--text_layers", type=int, default=3)
    a("--vision_layers", type=int, default=4)
    a("--num_heads", type=int, default=4)
    a("--patch_size", type=int, default=8)
    a("--projection_dim", type=int, default=128)
    # optimization
    a("--train_batch_size", type=int, default=64)
    a("--max_train_steps", type=int, default=6000)
    a("--learning_rate", type=float, default=5e-4)
    a("--lr_warmup_steps", type=int, default=200)
    a("--min_lr_ratio", type=float, default=0.05, help="cosine decay to this fraction of the learning rate")
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.98)
    a("--adam_weight_decay", type=float, default=0.05)
    a("--adam_epsilon", type=float, default=1e-6)
    a("--max_grad_norm", type=float, default=1.0)
    a("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    a("--report_to", default="none", help='"tensorboard", "wandb", "all" or "none"')
    a("--logging_dir", default="logs")
    a("--log_steps", type=int, default=50)
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=2)
    a("--resume_from_checkpoint", default=None, help='a checkpoint folder or "latest"')
    # validation
    a("--validation_steps", type=int, default=500)
    a("--eval_objects", type=int, default=256, help="held-out objects")
    a("--eval_views", type=int, default=2)
    a("--eval_offset", type=int, default=DEFAULT_EVAL_OFFSET, help="first held-out object id")
    a("--eval_candidates", type=int, default=100, help="candidates per object of the R-precision")
    args = p.parse_args(argv)
    if args.image_size % args.patch_size:
        p.error("--image_size must be a multiple of --patch_size")
    if args.hidden_size % args.num_heads:
        p.error("--hidden_size must be a multiple of --num_heads")
    return args


def main(argv=None) -> dict:
    """Train; returns {"first_step", "global_step", "losses", "validation" (last metrics), "model_dir", "seconds_per_step"}."""
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    accelerator, out, model_dir = setup_run(args)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    tokenizer = make_tokenizer(args)
    model = build_clip(args, tokenizer)
    accelerator.print(f"tokenizer: {tokenizer.vocab_source} vocabulary ({len(tokenizer)} tokens); CLIP: "
                      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.adam_weight_decay), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.lr_warmup_steps, args.max_train_steps, args.min_lr_ratio))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("synthobjects-clip", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    stream = SynthObjectsStream(
        args.data_seed, args.category, args.image_size, args.supersample, args.pool_size, args.pool_refresh, args.views_per_object,
        args.elevation_range, sample_seed=args.seed,
    )
    if stream.last_object_id(args.max_train_steps) >= args.eval_offset:
        raise ValueError(f"the training stream reaches object {stream.last_object_id(args.max_train_steps)}, past --eval_offset "
                         f"{args.eval_offset}: raise --eval_offset or lower --pool_refresh")
    eval_images, eval_captions = eval_set(
        args.data_seed, args.category, args.eval_objects, args.eval_views, args.image_size, args.supersample, args.elevation_range, args.eval_offset
    )

    global_step = first_step = resume(accelerator, out, args.resume_from_checkpoint)

    def validate(step: int) -> dict:
        metrics = evaluate_retrieval(accelerator.unwrap_model(model), tokenizer, eval_images, eval_captions, args.eval_candidates)
        metrics["step"] = step
        return log_validation(accelerator, out, metrics, step)

    t_fill = time.perf_counter()
    stream.advance_to(global_step)  # render the window (not counted in the step times)
    accelerator.print(f"rendered {stream.pool_size} objects x {stream.views_per_object} views in {time.perf_counter() - t_fill:.1f}s")
    losses, last_val, step_times = [], None, []
    generator = torch.Generator()
    model.train()
    t_log = time.perf_counter()
    while global_step < args.max_train_steps:
        t0 = time.perf_counter()
        images, captions, _ = stream.sample(global_step, args.train_batch_size, accelerator.process_index)
        generator.manual_seed(args.seed * 1_000_003 + global_step * 31 + accelerator.process_index)
        pixel = clip_normalize(augment(to_unit(images), generator, args.flip_prob, args.blur_prob)).to(accelerator.device)
        tok = tokenizer(captions, padding=True, truncation=True, return_tensors="pt").to(accelerator.device)
        with accelerator.autocast():
            loss, logs = contrastive_loss(model, tok.input_ids, tok.attention_mask, pixel, captions)
        accelerator.backward(loss)
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            accelerator.unwrap_model(model).logit_scale.clamp_(0, math.log(100))
        global_step += 1
        step_times.append(time.perf_counter() - t0)
        losses.append(logs["loss"])
        logs.update(lr=scheduler.get_last_lr()[0], temperature=1 / accelerator.unwrap_model(model).logit_scale.detach().exp().item())
        accelerator.log(logs, step=global_step)
        if accelerator.is_main_process and (global_step % args.log_steps == 0 or global_step == args.max_train_steps):
            window = step_times[-args.log_steps :]
            record = {"step": global_step, **{k: float(f"{v:.5g}") for k, v in logs.items()}, "s_per_step": round(sum(window) / len(window), 4),
                      "render_s": round(stream.render_seconds, 1), "elapsed_s": round(time.perf_counter() - t_log, 1)}
            append_jsonl(out / "train_log.jsonl", record)
            accelerator.print(json.dumps(record))
        if accelerator.is_main_process and args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, out, global_step, args.checkpoints_total_limit)
        if accelerator.is_main_process and args.validation_steps and global_step % args.validation_steps == 0:
            last_val = validate(global_step)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if last_val is None or last_val["step"] != global_step:
            last_val = validate(global_step)
        final = accelerator.unwrap_model(model)

        def write(folder: Path) -> None:
            final.save_pretrained(folder)
            save_clip_tokenizer(tokenizer, folder)
            (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(args.image_size), indent=2))
            (folder / "eval.json").write_text(json.dumps({"validation": last_val, "args": _jsonable_args(args), "tokenizer": tokenizer.vocab_source}, indent=2))
            (folder / "README.md").write_text(_model_card(args, last_val, tokenizer, global_step))

        atomic_save(model_dir, write)
        accelerator.print(f"saved {model_dir}")
    accelerator.end_training()
    return {"first_step": first_step, "global_step": global_step, "losses": losses, "validation": last_val, "model_dir": str(model_dir),
            "seconds_per_step": float(np.mean(step_times)) if step_times else None}


def preprocessor_config(size: int) -> dict:
    """``CLIPImageProcessor``'s config for ``size`` px (bicubic short-side resize, centre crop, CLIP mean/std)."""
    return {
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": list(CLIP_MEAN), "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD), "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": size},
    }


def _jsonable_args(args) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, tuple, type(None)))}


def _model_card(args, metrics: dict | None, tokenizer, steps: int) -> str:
    m = metrics or {}
    rp = next((v for k, v in m.items() if k.startswith("r_precision")), None)
    rp_key = next((k for k in m if k.startswith("r_precision")), "r_precision")
    return f"""---
library_name: transformers
tags: [clip, synthobjects, my3dgen-hf]
---
# SynthObjects CLIP

A small CLIP (`transformers.CLIPModel`) trained by `training/train_synthobjects_clip.py` of my3dgen-hf on SynthObjects
renders (procedural chairs and tables) and their captions, for CLIP R-precision on that world
(`my3dgen_hf.metrics.clip_rprecision.CLIPRPrecision(<this folder>)`). It knows nothing outside SynthObjects.

- towers: width {args.hidden_size}, {args.text_layers} text / {args.vision_layers} vision layers, {args.image_size} px images in {args.patch_size} px patches
- tokenizer: `CLIPTokenizer`, {"OpenAI CLIP's BPE vocabulary" if tokenizer.vocab_source == "clip" else "BPE learned on the SynthObjects captions"} ({len(tokenizer)} tokens), {args.max_text_length} tokens
- data: world seed {args.data_seed}, category {args.category}, {steps} steps of {args.train_batch_size} (object, view) pairs
- held-out objects (ids from {args.eval_offset}, {m.get('num_objects')} objects x {m.get('num_views')} views):
  image->text top-1 {m.get('i2t_top1')}, top-5 {m.get('i2t_top5')}, text->image top-1 {m.get('t2i_top1')}, {rp_key} {rp}

```python
from transformers import CLIPModel, CLIPTokenizer
model, tokenizer = CLIPModel.from_pretrained(path), CLIPTokenizer.from_pretrained(path)
```
Inputs: RGB on white, resized to {args.image_size} px, CLIP mean/std normalization (`preprocessor_config.json`).
"""


if __name__ == "__main__":
    main()

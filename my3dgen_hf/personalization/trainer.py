"""Personalize a frozen EG3D prior to one person: train an identity adapter (My3DGen) on projected anchors.

The loss is the paper's (``training/loss.py`` of My3DGen): for each image, with its anchor ``w`` fed straight to
``G.synthesis(ws, c, noise_mode="const")`` (the mapping network is bypassed and frozen),

    L = MSE(raw, real_raw) + MSE(image, real) + P(raw, real_raw) + P(image, real)          (all weights 1)

(``perceptual_weight`` scales the two P terms; 0 gives the L2-only ablation that measures what the perceptual term,
or its MS-SSIM substitute, contributes.)

where ``raw`` is the neural rendering, ``real_raw`` the real image downsampled to its size (bilinear, antialiased,
EG3D's ``filtered_resizing``), and ``P`` is :func:`my3dgen_hf.metrics.perceptual_loss` (LPIPS-alex when its backbone
weights are available, else the documented ``1 - MS-SSIM`` substitute; the summary records which one ran).

Reproducibility: the global batch of step ``s`` is drawn from a per-epoch permutation seeded by ``seed``, and the
ray jitter of each sample is seeded by (seed, s, position in the global batch). With ``P`` processes each takes a
``batch_size / P`` slice and DDP averages the gradients, so any number of processes gives the single-process result
(up to float summation order), and a run resumed from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.io import atomic_directory, atomic_path
from .data import PathLike, PersonalizationError, check_output_dir, describe_write_error, tensor_to_pil

DEFAULT_STEPS = 300
DEFAULT_LR = 1e-2
DEFAULT_BATCH_SIZE = 2
DEFAULT_BETAS = (0.9, 0.99)
VALIDATION_VIEWS = ((-0.35, 0.0), (0.0, 0.0), (0.35, 0.0), (0.0, -0.25), (0.0, 0.25))  # (yaw, pitch), radians
ANCHORS_FILE = "anchors.safetensors"
SUMMARY_FILE = "training_summary.json"
SAMPLES_FILE = "samples.png"
CHECKPOINTS_DIR = "checkpoints"
FULL_MODEL_DIR = "finetuned_pipeline"
LOSS_TERMS = ("mse_raw", "mse", "perceptual_raw", "perceptual")


@dataclass
class PersonalizationResult:
    """``adapter_name`` (None for a full fine-tune), ``losses`` (one dict per step: step, loss and its terms),
    ``summary`` (what ``training_summary.json`` holds) and ``output_dir`` (None when nothing was written)."""

    adapter_name: Optional[str]
    losses: list[dict]
    summary: dict
    output_dir: Optional[Path] = None
    stopped_early: bool = False
    anchors: Optional[torch.Tensor] = field(default=None, repr=False)


# ------------------------------------------------------------------------------------------------- determinism
@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 1, epoch]).generate_state(1)[0]))
    return tuple(torch.randperm(n, generator=g).tolist())


def global_batch(step: int, batch_size: int, num_images: int, seed: int) -> list[int]:
    """Image indices of the global batch at ``step``: consecutive slices of per-epoch permutations."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, num_images)
        out.append(_epoch_permutation(seed, epoch, num_images)[pos])
    return out


def sample_seed(seed: int, step: int, position: int) -> int:
    """RNG seed for the ray jitter of sample ``position`` of the global batch at ``step``."""
    return int(np.random.SeedSequence([seed, 2, step, position]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _Seeded:
    """Run a block with the global torch RNG seeded (and restored afterwards)."""

    def __init__(self, seed: int, device: torch.device):
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self.seed = seed

    def __enter__(self):
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


# ------------------------------------------------------------------------------------------------- the loss
class PersonalizationLoss(nn.Module):
    """Per-sample loss terms [B, 4] = (MSE raw, MSE image, P raw, P image) of the generator at anchors ``ws``."""

    def __init__(self, generator: nn.Module, perceptual: nn.Module):
        super().__init__()
        self.generator = generator
        self.perceptual = perceptual

    def forward(self, ws: torch.Tensor, c: torch.Tensor, real: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        rows = []
        for i in range(ws.shape[0]):
            with _Seeded(int(seeds[i]), ws.device):  # the ray jitter of this sample, whatever the batch split
                out = self.generator.synthesis(ws[i : i + 1], c[i : i + 1], noise_mode="const", deterministic=False)
            img, raw = out["image"].float(), out["image_raw"].float()
            target = real[i : i + 1].float()
            if target.shape[-2:] != img.shape[-2:]:
                target = F.interpolate(target, size=img.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            target_raw = F.interpolate(target, size=raw.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            rows.append(
                torch.stack(
                    [
                        (raw - target_raw).square().mean(),
                        (img - target).square().mean(),
                        self.perceptual(raw, target_raw).reshape(()),
                        self.perceptual(img, target).reshape(()),
                    ]
                )
            )
        return torch.stack(rows)


# ------------------------------------------------------------------------------------------------- helpers
def _check_training_inputs(pipe, images, labels, anchors):
    G = pipe.generator
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise PersonalizationError(f"images must be a tensor [N, 3, R, R] in [-1, 1], got {getattr(images, 'shape', type(images))}")
    n = len(images)
    if n == 0:
        raise PersonalizationError("no training images: give at least one")
    if images.shape[-1] != images.shape[-2]:
        raise PersonalizationError(f"images must be square aligned crops, got {tuple(images.shape[-2:])}")
    if not torch.isfinite(images).all():
        raise PersonalizationError("images contain NaN or infinite values")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2 or labels.shape[1] != 25:
        raise PersonalizationError(f"labels must be a tensor [N, 25] of EG3D camera labels, got {getattr(labels, 'shape', type(labels))}")
    if len(labels) != n:
        raise PersonalizationError(f"got {n} images but {len(labels)} labels; give one label per image")
    if not isinstance(anchors, torch.Tensor):
        raise PersonalizationError(f"anchors must be a tensor [N, num_ws, w_dim] (from project_to_w), got {type(anchors)}")
    if anchors.ndim == 2:
        anchors = anchors[:, None, :].repeat(1, G.num_ws, 1)
    if anchors.ndim != 3 or anchors.shape[1:] != (G.num_ws, G.w_dim):
        raise PersonalizationError(
            f"anchors have shape {tuple(anchors.shape)} but this base model needs [N, {G.num_ws}, {G.w_dim}]: they were "
            "projected with another base model; project the images again with this one (project_to_w)"
        )
    if len(anchors) != n:
        raise PersonalizationError(f"got {n} images but {len(anchors)} anchors; give one anchor per image")
    if not torch.isfinite(anchors).all():
        raise PersonalizationError("anchors contain NaN or infinite values; project the images again")
    R = G.img_resolution
    if images.shape[-1] != R:
        images = F.interpolate(images.float(), size=(R, R), mode="bilinear", align_corners=False, antialias=True)
    return images.float(), labels.float(), anchors.float()


def _data_hash(images, labels, anchors) -> str:
    h = hashlib.sha256()
    for t in (images, labels, anchors):
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _trainable(G: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in G.named_parameters() if p.requires_grad]


def _find_checkpoint(output_dir: Optional[Path], resume_from_checkpoint) -> Optional[Path]:
    if resume_from_checkpoint in (None, False, ""):
        return None
    if str(resume_from_checkpoint) == "latest":
        folder = output_dir / CHECKPOINTS_DIR if output_dir is not None else None
        if folder is None or not folder.is_dir():
            return None
        found = []
        for d in folder.iterdir():
            if d.is_dir() and d.name.startswith("checkpoint-") and (d / "state.json").is_file():
                try:
                    found.append((int(d.name.split("-", 1)[1]), d))
                except ValueError:
                    continue
        return max(found)[1] if found else None
    path = Path(resume_from_checkpoint)
    if not (path / "state.json").is_file():
        raise PersonalizationError(f"{path} is not a personalization checkpoint (no state.json); pass a checkpoint-N folder or 'latest'")
    return path


def _version_info() -> dict:
    import diffusers
    import peft

    from .. import __version__

    return {"my3dgen_hf": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__}


@torch.no_grad()
def render_validation_grid(pipe, anchors: torch.Tensor, images: Optional[torch.Tensor] = None, max_rows: int = 3, views=VALIDATION_VIEWS):
    """uint8 [H, W, 3] grid: one row per anchor (the real image first when given), then the novel views
    (yaw -0.35 / 0 / +0.35, pitch -0.25 / +0.25)."""
    rows = []
    yaws, pitches = [v[0] for v in views], [v[1] for v in views]
    for i in range(min(max_rows, len(anchors))):
        out = pipe(ws=anchors[i : i + 1], yaw=yaws, pitch=pitches, output_type="np").images
        tiles = list(out)
        if images is not None:
            real = np.asarray(tensor_to_pil(images[i]).resize(out.shape[1:3][::-1]))
            tiles = [real] + tiles
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def _save_png(array: np.ndarray, path: Path):
    from PIL import Image

    try:
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
    except OSError as e:
        raise describe_write_error(path, e) from e


def _write_json(path: Path, obj):
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(obj, indent=1, default=str))
    except OSError as e:
        raise describe_write_error(path, e) from e


def save_anchors(path: Path, anchors: torch.Tensor, labels: torch.Tensor, names: Optional[Sequence[str]] = None, extra: Optional[dict] = None):
    """``anchors.safetensors``: ``ws`` [N, num_ws, w_dim] and ``labels`` [N, 25]; names and settings in the metadata."""
    from safetensors.torch import save_file

    meta = {"names": json.dumps(list(names) if names is not None else []), **{k: json.dumps(v, default=str) for k, v in (extra or {}).items()}}
    try:
        with atomic_path(path) as tmp:
            save_file({"ws": anchors.detach().cpu().contiguous(), "labels": labels.detach().cpu().float().contiguous()}, str(tmp), metadata=meta)
    except OSError as e:
        raise describe_write_error(path, e) from e


def load_anchors(path: PathLike) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            ws, labels = f.get_tensor("ws"), f.get_tensor("labels")
    except (SafetensorError, OSError, KeyError) as e:
        raise PersonalizationError(f"{path} is not a readable anchors file ({e})") from None
    return ws, labels, json.loads(meta.get("names", "[]"))


# ------------------------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(output_dir: Path, step: int, G: nn.Module, optimizer, state: dict, total_limit: Optional[int]):
    from safetensors.torch import save_file

    folder = output_dir / CHECKPOINTS_DIR
    target = folder / f"checkpoint-{step}"
    try:
        with atomic_directory(target, overwrite=True) as tmp:
            save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(G)}, str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state, default=str))
    except OSError as e:
        raise describe_write_error(target, e) from e
    if total_limit:
        found = sorted(
            (int(d.name.split("-", 1)[1]), d) for d in folder.iterdir() if d.is_dir() and d.name.startswith("checkpoint-") and d.name.split("-", 1)[1].isdigit()
        )
        for _, d in found[: max(0, len(found) - int(total_limit))]:
            shutil.rmtree(d, ignore_errors=True)
    return target


def _load_checkpoint(path: Path, G: nn.Module, signature: dict) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    saved = state.get("signature", {})
    if saved.get("base_model_fingerprint") != signature["base_model_fingerprint"]:
        raise PersonalizationError(
            f"checkpoint {path} was trained on another base model (fingerprint {saved.get('base_model_fingerprint')}, the "
            f"loaded prior is {signature['base_model_fingerprint']}); load the same base model to resume"
        )
    diff = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
    if diff:
        said = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise PersonalizationError(f"checkpoint {path} does not match this run ({said}); resume with the same settings and data")
    tensors = load_file(str(path / "trainable.safetensors"))
    params = dict(_trainable(G))
    if set(tensors) != set(params):
        raise PersonalizationError(f"checkpoint {path} holds other trainable tensors than this run; it was made with other settings")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    return state, optimizer_state


# ------------------------------------------------------------------------------------------------- accelerate
def make_accelerator(mixed_precision: str = "no", report_to: Optional[str] = None, project_dir: Optional[PathLike] = None):
    """An ``Accelerator`` set up for personalization (DDP with ``find_unused_parameters``: the SR noise strengths
    are trainable extras that get no gradient)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    if report_to == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise PersonalizationError("--report_to tensorboard needs tensorboard: pip install tensorboard")
    return Accelerator(
        mixed_precision=mixed_precision,
        log_with=report_to if report_to not in (None, "", "none") else None,
        project_config=ProjectConfiguration(project_dir=str(project_dir), logging_dir=str(Path(project_dir) / "logs")) if project_dir else None,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _log_validation_image(accelerator, grid: np.ndarray, step: int):
    if accelerator is None:
        return
    for tracker in getattr(accelerator, "trackers", []):
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")


# ------------------------------------------------------------------------------------------------- main entry
def personalize(
    pipe,
    images: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    adapter_name: str = "identity",
    rank: int = 1,
    alpha: Optional[float] = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    full_finetune: bool = False,
    callback: Optional[Callable[[dict], Optional[bool]]] = None,
    output_dir: Optional[PathLike] = None,
    seed: int = 0,
    *,
    perceptual: str = "auto",
    perceptual_weight: float = 1.0,
    betas: tuple[float, float] = DEFAULT_BETAS,
    lora_kwargs: Optional[dict] = None,
    checkpointing_steps: Optional[int] = None,
    checkpoints_total_limit: Optional[int] = 2,
    resume_from_checkpoint: Optional[str] = None,
    validation_steps: Optional[int] = None,
    accelerator=None,
    progress: bool = True,
    names: Optional[Sequence[str]] = None,
    base_model: Optional[str] = None,
    extra_summary: Optional[dict] = None,
    log: Callable[[str], Any] = print,
) -> PersonalizationResult:
    """Train identity adapter ``adapter_name`` on ``pipe.generator`` in place (rank/alpha LoRA on the synthesis and
    SR convolutions and their style affines, plus the paper's extras), or with ``full_finetune`` every generator
    parameter except the mapping network (the paper's baseline).

    ``images`` [N, 3, R, R] in [-1, 1], ``labels`` [N, 25], ``anchors`` [N, num_ws, w_dim] (from
    :func:`project_to_w`). ``batch_size`` is the global batch (split over an ``accelerator``'s processes).
    ``callback(dict(step, steps, loss, mse_raw, mse, perceptual_raw, perceptual, lr))`` is called after every step;
    returning False stops early. On return the adapter is active on ``pipe`` with its extras collected. With
    ``output_dir``: the adapter (``pytorch_lora_weights.safetensors``; for a full fine-tune ``finetuned_pipeline/``),
    ``anchors.safetensors``, ``training_summary.json``, ``samples.png`` and validation renders; checkpoints every
    ``checkpointing_steps`` under ``checkpoints/`` and ``resume_from_checkpoint`` ('latest' or a folder)."""
    from ..lora import count_trainable_parameters
    from ..lora.loader import base_model_fingerprint
    from ..metrics import perceptual_loss

    t_start = time.time()
    G = pipe.generator
    device = pipe.device
    nproc = accelerator.num_processes if accelerator is not None else 1
    rank_index = accelerator.process_index if accelerator is not None else 0
    is_main = accelerator is None or accelerator.is_main_process

    # ---- early checks (before anything is changed)
    if not full_finetune and (not isinstance(adapter_name, str) or not adapter_name.strip()):
        raise PersonalizationError("adapter_name must be a non-empty string")
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("rank", rank, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise PersonalizationError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise PersonalizationError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(perceptual_weight, (int, float)) and perceptual_weight >= 0 and math.isfinite(perceptual_weight)):
        raise PersonalizationError(f"perceptual_weight must be a number >= 0, got {perceptual_weight!r}")
    if batch_size % nproc:
        raise PersonalizationError(f"batch_size {batch_size} (the global batch) must be divisible by the number of processes ({nproc})")
    images, labels, anchors = _check_training_inputs(pipe, images, labels, anchors)
    existing = set(getattr(G, "peft_config", {}) or {})
    if full_finetune and existing:
        raise PersonalizationError(f"full_finetune trains the base weights: unload the adapters first ({sorted(existing)})")
    if not full_finetune and adapter_name in existing:
        raise PersonalizationError(f"an adapter named {adapter_name!r} is already loaded; pick another name or pipe.delete_adapters({adapter_name!r})")
    if any(getattr(m, "merged", False) for m in G.modules()):
        raise PersonalizationError("a LoRA is fused into the generator; call pipe.unfuse_lora() before personalizing")
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and is_main:
        check_output_dir(out)
    if (checkpointing_steps or resume_from_checkpoint) and out is None:
        raise PersonalizationError("checkpointing and resuming need an output_dir")
    checkpoint = _find_checkpoint(out, resume_from_checkpoint)
    if resume_from_checkpoint and checkpoint is None:
        log(f"no checkpoint found in {out / CHECKPOINTS_DIR}; starting from step 0")

    fingerprint = base_model_fingerprint(G)
    loss_fn = perceptual_loss(perceptual, reduction="none").to(device)
    lora_kwargs = dict(lora_kwargs or {})
    signature = {
        "base_model_fingerprint": fingerprint, "adapter_name": None if full_finetune else adapter_name,
        "full_finetune": bool(full_finetune), "rank": int(rank), "alpha": alpha, "lora_kwargs": lora_kwargs, "lr": float(lr),
        "betas": list(betas), "batch_size": int(batch_size), "seed": int(seed), "num_images": len(images),
        "perceptual": loss_fn.kind, "data": _data_hash(images, labels, anchors),
    }
    if perceptual_weight != 1.0:  # kept out of the default signature so earlier checkpoints still resume
        signature["perceptual_weight"] = float(perceptual_weight)
    signature = json.loads(json.dumps(signature, default=str))

    # ---- trainable parameters (the adapter's initial factors depend on the seed only)
    from ..lora import original_name

    requires_grad_before = {original_name(G, n): p.requires_grad for n, p in G.named_parameters() if "lora_" not in n}
    with _Seeded(int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]), torch.device("cpu")):
        if full_finetune:
            G.requires_grad_(True)
            G.backbone.mapping.requires_grad_(False)
        else:
            pipe.add_identity_adapter(adapter_name, rank=int(rank), alpha=alpha, **lora_kwargs)
            pipe._apply_extras()  # other adapters' extras off: train from the prior's values
    named = _trainable(G)
    counts = count_trainable_parameters(G)
    try:
        start_step, losses, resumed_from = 0, [], None
        optimizer = torch.optim.Adam([p for _, p in named], lr=float(lr), betas=tuple(betas), eps=1e-8)
        if checkpoint is not None:
            state, opt_state = _load_checkpoint(checkpoint, G, signature)
            optimizer.load_state_dict(opt_state)
            start_step, losses, resumed_from = int(state["step"]), list(state.get("losses", [])), str(checkpoint)
            log(f"resumed from {checkpoint} at step {start_step}")
        module = PersonalizationLoss(G, loss_fn)
        term_weights = torch.tensor([1.0, 1.0, float(perceptual_weight), float(perceptual_weight)], device=device)
        if accelerator is not None:
            if nproc > 1 and getattr(accelerator, "ddp_handler", None) is None:
                from accelerate.utils import DistributedDataParallelKwargs

                accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
            model, optimizer = accelerator.prepare(module, optimizer)
        else:
            model = module

        images_d, labels_d, anchors_d = images.to(device), labels.to(device), anchors.to(device)
        per_process = batch_size // nproc
        bar = None
        if progress and is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(steps), initial=start_step, desc="personalize", unit="step")
        stopped_early = False
        step = start_step
        try:
            while step < steps:
                idx = global_batch(step, batch_size, len(images), seed)
                lo = rank_index * per_process
                local = idx[lo : lo + per_process]
                seeds = [sample_seed(seed, step, lo + j) for j in range(per_process)]
                terms = model(anchors_d[local], labels_d[local], images_d[local], seeds)  # [b, 4]
                loss = (terms * term_weights).sum(1).mean()
                optimizer.zero_grad(set_to_none=True)
                if accelerator is not None:
                    accelerator.backward(loss)
                else:
                    loss.backward()
                optimizer.step()
                step += 1
                mean_terms = terms.detach().mean(0)
                if nproc > 1:
                    mean_terms = accelerator.reduce(mean_terms, reduction="mean")
                entry = {"step": step, "steps": int(steps), "loss": float((mean_terms * term_weights).sum())}
                entry.update({k: float(v) for k, v in zip(LOSS_TERMS, mean_terms)})
                entry["lr"] = float(lr)
                losses.append(entry)
                if accelerator is not None:
                    accelerator.log({k: v for k, v in entry.items() if k != "steps"}, step=step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}")
                if out is not None and checkpointing_steps and step % int(checkpointing_steps) == 0:
                    if is_main:
                        _save_checkpoint(out, step, G, optimizer, {"step": step, "signature": signature, "losses": losses}, checkpoints_total_limit)
                    if accelerator is not None:
                        accelerator.wait_for_everyone()
                if validation_steps and step % int(validation_steps) == 0 and step < steps and is_main:
                    grid = render_validation_grid(pipe, anchors_d, images)
                    if out is not None:
                        _save_png(grid, out / "validation" / f"step_{step:06d}.png")
                    _log_validation_image(accelerator, grid, step)
                if callback is not None and callback(dict(entry)) is False:
                    stopped_early = True
                    break
        finally:
            if bar is not None:
                bar.close()
    except BaseException:
        if not full_finetune and adapter_name in (getattr(G, "peft_config", {}) or {}):
            pipe.delete_adapters(adapter_name)  # a failed run leaves no half-trained adapter behind
        raise
    finally:
        for n, p in G.named_parameters():
            p.requires_grad_(requires_grad_before.get(original_name(G, n), False) if "lora_" not in n else False)

    # ---- finish: make the adapter a regular loaded adapter of the pipeline
    if not full_finetune:
        pipe.collect_trained_extras(adapter_name)
        pipe.set_adapters([adapter_name])  # as after load_lora_weights (PEFT marks the active adapter's factors trainable)
    wall = time.time() - t_start
    last = losses[-1] if losses else {}
    window = losses[-10:]
    summary = {
        "adapter_name": None if full_finetune else adapter_name,
        "mode": "full_finetune" if full_finetune else "lora",
        "base_model": base_model or getattr(pipe, "name_or_path", None) or G.config.get("_name_or_path"),
        "base_model_fingerprint": fingerprint,
        "rank": None if full_finetune else int(rank),
        "alpha": None if full_finetune else (alpha if alpha is not None else int(rank)),
        "lora_kwargs": lora_kwargs,
        "steps": step,
        "requested_steps": int(steps),
        "stopped_early": stopped_early,
        "resumed_from": resumed_from,
        "wall_time_s": round(wall, 2),
        "num_images": len(images),
        "batch_size": int(batch_size),
        "num_processes": nproc,
        "mixed_precision": getattr(accelerator, "mixed_precision", "no") if accelerator is not None else "no",
        "lr": float(lr),
        "betas": list(betas),
        "seed": int(seed),
        "loss": f"MSE(raw) + MSE(image) + {perceptual_weight:g} * (P(raw) + P(image)); raw target: real downsampled (bilinear, antialiased)",
        "perceptual_weight": float(perceptual_weight),
        "perceptual_loss": {"kind": loss_fn.kind, "description": loss_fn.description, "is_substitute": loss_fn.is_substitute},
        "initial_loss": losses[0]["loss"] if losses else None,
        "final_loss": last.get("loss"),
        "final_losses": {k: last.get(k) for k in ("loss",) + LOSS_TERMS} if last else {},
        "final_loss_mean_last_10": float(np.mean([e["loss"] for e in window])) if window else None,
        "trainable_parameters": int(counts["total"]),
        "trainable_parameters_breakdown": {k: counts[k] for k in ("lora", "extras", "frozen", "base_total") if k in counts},
        "versions": _version_info(),
        **(extra_summary or {}),
    }
    if not full_finetune:
        from ..lora import get_adapter_state_dict

        sd = get_adapter_state_dict(G, adapter_name)
        summary["adapter_tensor_bytes"] = int(sum(t.numel() * t.element_size() for t in sd.values()))
    result = PersonalizationResult(None if full_finetune else adapter_name, losses, summary, None, stopped_early, anchors.cpu())
    if out is not None:
        if is_main:
            _write_outputs(pipe, out, result, images, labels, anchors, names, full_finetune, accelerator, step)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        result.output_dir = out
    return result


def _write_outputs(pipe, out: Path, result: PersonalizationResult, images, labels, anchors, names, full_finetune, accelerator, step):
    summary = result.summary
    try:
        if full_finetune:
            with atomic_directory(out / FULL_MODEL_DIR, overwrite=True) as tmp:
                pipe.save_pretrained(tmp)
            summary["model_dir"] = FULL_MODEL_DIR
            summary["adapter_bytes"] = sum(f.stat().st_size for f in (out / FULL_MODEL_DIR).rglob("*") if f.is_file())
        else:
            path = pipe.save_lora_weights(out, adapter_name=result.adapter_name)
            summary["adapter_file"] = path.name
            summary["adapter_bytes"] = path.stat().st_size
    except OSError as e:
        raise describe_write_error(out, e) from e
    save_anchors(out / ANCHORS_FILE, anchors, labels, names, {"base_model_fingerprint": summary["base_model_fingerprint"]})
    grid = render_validation_grid(pipe, anchors.to(pipe.device), images)
    _save_png(grid, out / SAMPLES_FILE)
    _save_png(grid, out / "validation" / f"step_{step:06d}.png")
    _log_validation_image(accelerator, grid, step)
    _write_json(out / SUMMARY_FILE, summary)

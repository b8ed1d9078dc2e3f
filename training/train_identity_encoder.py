"""Train the SynthHeads identity encoder (the ArcFace of the SynthHeads world) and evaluate face verification.

    python training/train_identity_encoder.py --output_dir outputs/synthheads-identity-encoder \
        --cache_dir outputs/.synthheads_id_cache

Data: SynthHeads identities ``0 .. --num_identities-1`` (world seed ``--data_seed``), ``--images_per_identity``
training-split views each, rendered once at ``--resolution`` (supersample ``--supersample``) and kept in memory
(and in ``--cache_dir`` when given, so a rerun does not render again). Views use SynthHeads' wide pose range
(``--yaw_range 0.6`` / ``--pitch_range 0.35``) and its expression, lighting, background and occluder sampling, so
the encoder has to be invariant to all of them. On top, every batch gets augmentations: a random similarity warp
(scale, shift, small rotation), mild brightness/contrast/saturation jitter, random blur (a down-and-up resize,
like the blurrier output of a generator) and pixel noise.

Model: :class:`~my3dgen_hf.synthetic.identity_encoder.SynthHeadsIdentityEncoder`; loss: ArcFace's additive angular
margin ``s * cos(theta_y + m)`` over ``--num_identities`` learned class centres (the margin ramps up linearly over
the first ``--margin_warmup`` fraction of training); AdamW with linear warmup + cosine decay.

Evaluation (written to ``<output_dir>/eval.json``): verification on ``--eval_identities`` held-out identities (ids
``--eval_offset + i``, disjoint from training), ``--eval_images_per_identity`` ``split="test"`` views each at the
paper's pose range (yaw +-0.35, pitch +-0.25, no occluders), rendered at ``--eval_resolution`` (the resolution the
ID metrics see) with SynthHeads' default supersampling. All genuine pairs (same identity) vs all impostor pairs:
TAR at FAR 1e-3 and 1e-4 (thresholds from the impostor scores), ROC AUC, EER and the mean cosine similarities.

The shipped copy (``my3dgen_hf/assets/synthheads-identity-encoder``) is these defaults (800 steps: TAR@FAR1e-3
0.81) followed by a warm restart of 700 steps, ``--init_from <first run> --steps 700 --lr 2e-3 --warmup_steps 20
--margin_warmup 0 --seed 1`` (TAR@FAR1e-3 0.974, ROC AUC 0.99986); see the README there.

The output folder (written atomically) holds ``config.json`` + ``diffusion_pytorch_model.safetensors`` (load with
``load_synthheads_identity_encoder(path)``), ``eval.json`` and ``train_log.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from my3dgen_hf.synthetic import render, sample_identity, sample_image_params
from my3dgen_hf.synthetic.identity_encoder import SynthHeadsIdentityEncoder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=Path, default=Path("outputs/synthheads-identity-encoder"))
    p.add_argument("--cache_dir", type=Path, default=None, help="keep rendered images here (npz) for reruns")
    # data
    p.add_argument("--num_identities", type=int, default=2000, help="training identities (ids 0..N-1)")
    p.add_argument("--images_per_identity", type=int, default=10)
    p.add_argument("--data_seed", type=int, default=0, help="SynthHeads world seed")
    p.add_argument("--resolution", type=int, default=64, help="training (and encoder input) resolution")
    p.add_argument("--supersample", type=int, default=1, help="rays per pixel side when rendering training views")
    p.add_argument("--yaw_range", type=float, default=0.6)
    p.add_argument("--pitch_range", type=float, default=0.35)
    p.add_argument("--occluder_prob", type=float, default=0.1)
    p.add_argument("--render_workers", type=int, default=1)
    # model
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 192])
    p.add_argument("--blocks_per_stage", type=int, default=1)
    p.add_argument("--embedding_dim", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    # optimisation
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--warmup_steps", type=int, default=40)
    p.add_argument("--margin", type=float, default=0.3, help="ArcFace additive angular margin m (radians)")
    p.add_argument("--margin_warmup", type=float, default=0.2, help="fraction of training over which m ramps up")
    p.add_argument("--scale", type=float, default=32.0, help="ArcFace logit scale s")
    p.add_argument("--no_augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=1)
    p.add_argument("--log_every", type=int, default=25)
    # evaluation
    p.add_argument("--eval_identities", type=int, default=200)
    p.add_argument("--eval_images_per_identity", type=int, default=8)
    p.add_argument("--eval_offset", type=int, default=1_000_000, help="first held-out identity id")
    p.add_argument("--eval_resolution", type=int, default=128)
    p.add_argument("--eval_supersample", type=int, default=2)
    p.add_argument("--eval_yaw_range", type=float, default=0.35)
    p.add_argument("--eval_pitch_range", type=float, default=0.25)
    p.add_argument("--eval_occluder_prob", type=float, default=0.0)
    p.add_argument("--eval_only", type=Path, default=None, help="evaluate this encoder folder and exit")
    p.add_argument("--init_from", type=Path, default=None,
                   help="continue from this encoder folder (its architecture wins over --channels etc.); the ArcFace "
                        "class centres start at the normalised class means of its embeddings of the training images")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _render_one(job):
    seed, iid, j, split, res, ss, yaw, pitch, occ = job
    ip = sample_image_params(seed, iid, j, split=split, yaw_range=yaw, pitch_range=pitch, occluder_prob=occ)
    return render(sample_identity(seed, iid), ip, resolution=res, supersample=ss)


def render_set(ids, n_per_id, split, res, ss, yaw, pitch, occ, seed, workers=1, cache_dir=None, desc="render"):
    """uint8 images [len(ids) * n_per_id, res, res, 3] and int64 labels (index into ``ids``), cached when asked."""
    ids = [int(i) for i in ids]
    key = json.dumps([ids[0], ids[-1], len(ids), n_per_id, split, res, ss, yaw, pitch, occ, seed])
    path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / f"{desc}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
        if path.is_file():
            with np.load(path) as z:
                print(f"loaded {len(z['labels'])} cached {desc} images from {path}", flush=True)
                return z["images"], z["labels"]
    jobs = [(seed, iid, j, split, res, ss, yaw, pitch, occ) for iid in ids for j in range(n_per_id)]
    labels = np.repeat(np.arange(len(ids), dtype=np.int64), n_per_id)
    images = np.empty((len(jobs), res, res, 3), dtype=np.uint8)
    bar = tqdm(total=len(jobs), desc=desc, unit="img", mininterval=5)
    if workers > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for k, img in enumerate(pool.imap(_render_one, jobs, chunksize=16)):
                images[k] = img
                bar.update(1)
    else:
        for k, job in enumerate(jobs):
            images[k] = _render_one(job)
            bar.update(1)
    bar.close()
    if path is not None:
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, path)
    return images, labels


def to_float(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Identity-preserving augmentations of a batch in [-1, 1] (the colours that define an identity change only mildly)."""
    n, _, h, w = x.shape

    def U(lo, hi, *shape):
        return torch.rand(*(shape or (n,)), generator=gen) * (hi - lo) + lo

    # random similarity warp: zoom 0.88-1.12, shift up to 6 %, rotation up to 8 degrees (border = edge colour)
    s = U(0.88, 1.12)
    a = U(-0.14, 0.14)
    t = U(-0.06, 0.06, n, 2) * 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(a) / s
    theta[:, 0, 1] = -torch.sin(a) / s
    theta[:, 1, 0] = torch.sin(a) / s
    theta[:, 1, 1] = torch.cos(a) / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # photometric: brightness, contrast, saturation (no hue: skin/hair/eye colours are identity)
    x = (x + 1) / 2
    x = x * U(0.85, 1.15).view(n, 1, 1, 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * U(0.8, 1.2).view(n, 1, 1, 1) + m
    g = x.mean(dim=1, keepdim=True)
    x = (x - g) * U(0.8, 1.2).view(n, 1, 1, 1) + g
    # blur for ~35 % of the batch: resize down to 50-85 % and back
    k = int(0.35 * n)  # the batch is in random order
    if k > 0:
        f = float(U(0.5, 0.85, 1))
        r = max(8, round(h * f))
        small = F.interpolate(x[:k], size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        x = torch.cat([F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), x[k:]], 0)
    # noise
    x = x + torch.randn(x.shape, generator=gen) * U(0.0, 0.03).view(n, 1, 1, 1)
    return (x.clamp(0, 1) * 2 - 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------


class ArcMarginHead(nn.Module):
    """ArcFace logits ``s * cos(theta + m)`` for the target class, ``s * cos(theta)`` for the others."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, margin: float, scale: float):
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-7, 1 - 1e-7)
        cos_y = cos.gather(1, labels[:, None])
        sin_y = (1 - cos_y.square()).clamp_min(0).sqrt()
        cos_ym = cos_y * math.cos(margin) - sin_y * math.sin(margin)
        # keep the target logit monotonic in theta beyond pi - m (insightface's fallback)
        cos_ym = torch.where(cos_y > math.cos(math.pi - margin), cos_ym, cos_y - math.sin(math.pi - margin) * margin)
        logits = cos.scatter(1, labels[:, None], cos_ym) * scale
        return logits, cos


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_all(model: SynthHeadsIdentityEncoder, images_u8: np.ndarray, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(to_float(images_u8[i : i + batch])) for i in range(0, len(images_u8), batch)], 0)


def verification_metrics(emb: torch.Tensor, labels: np.ndarray) -> dict:
    """All genuine vs all impostor pairs (i < j) of L2-normalised embeddings."""
    sim = (emb @ emb.T).numpy().astype(np.float64)
    labels = np.asarray(labels)
    iu = np.triu_indices(len(labels), k=1)
    s = sim[iu]
    same = labels[iu[0]] == labels[iu[1]]
    gen, imp = s[same], s[~same]
    imp_desc = np.sort(imp)[::-1]

    def tar_at(far):
        k = math.floor(far * len(imp))  # at most k impostor pairs above the threshold
        thr = imp_desc[k] if k < len(imp_desc) else -np.inf
        return float((gen > thr).mean()), float(thr), float((imp > thr).mean())

    # ROC AUC by ranks (Mann-Whitney U, ties averaged)
    allv = np.concatenate([gen, imp])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    ranks[order] = np.arange(1, len(allv) + 1)
    sv = allv[order]
    # average ranks of ties
    _, start, counts = np.unique(sv, return_index=True, return_counts=True)
    if (counts > 1).any():
        avg = start + (counts + 1) / 2.0
        ranks[order] = np.repeat(avg, counts)
    auc = (ranks[: len(gen)].sum() - len(gen) * (len(gen) + 1) / 2) / (len(gen) * len(imp))
    # EER
    thr_grid = np.quantile(imp, np.linspace(0.5, 1.0, 2001))
    frr = np.array([(gen <= t).mean() for t in thr_grid])
    far = np.array([(imp > t).mean() for t in thr_grid])
    e = int(np.argmin(np.abs(frr - far)))
    tar3, thr3, far3 = tar_at(1e-3)
    tar4, thr4, _ = tar_at(1e-4)
    return {
        "num_genuine_pairs": len(gen),
        "num_impostor_pairs": len(imp),
        "tar_at_far_1e-3": tar3,
        "threshold_at_far_1e-3": thr3,
        "achieved_far_1e-3": far3,
        "tar_at_far_1e-4": tar4,
        "threshold_at_far_1e-4": thr4,
        "roc_auc": float(auc),
        "eer": float((frr[e] + far[e]) / 2),
        "mean_genuine_cos": float(gen.mean()),
        "mean_impostor_cos": float(imp.mean()),
        "min_genuine_cos": float(gen.min()),
        "max_impostor_cos": float(imp.max()),
    }


def evaluate(model, args) -> dict:
    ids = range(args.eval_offset, args.eval_offset + args.eval_identities)
    images, labels = render_set(
        ids, args.eval_images_per_identity, "test", args.eval_resolution, args.eval_supersample,
        args.eval_yaw_range, args.eval_pitch_range, args.eval_occluder_prob, args.data_seed,
        workers=args.render_workers, cache_dir=args.cache_dir, desc="eval",
    )
    t = time.time()
    emb = embed_all(model, images)
    res = verification_metrics(emb, labels)
    res["embed_seconds_per_image"] = (time.time() - t) / len(images)
    res["protocol"] = {
        "identities": f"{args.eval_offset}..{args.eval_offset + args.eval_identities - 1} (held out, SynthHeads seed {args.data_seed})",
        "images_per_identity": args.eval_images_per_identity,
        "split": "test",
        "yaw_range": args.eval_yaw_range,
        "pitch_range": args.eval_pitch_range,
        "occluder_prob": args.eval_occluder_prob,
        "resolution": args.eval_resolution,
        "supersample": args.eval_supersample,
        "pairs": "all genuine vs all impostor pairs (i < j), cosine similarity",
    }
    return res


# ---------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------


def save_atomically(model: SynthHeadsIdentityEncoder, out: Path, extra_files: dict) -> None:
    """Write the folder next to ``out`` and swap it in, so ``out`` is never half written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="." + out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        cfg = json.loads((tmp / "config.json").read_text())
        if cfg.pop("_name_or_path", None) is not None:  # set when the model came from --init_from
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for name, content in extra_files.items():
            (tmp / name).write_text(content)
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        old = None
        if out.exists():
            old = out.with_name("." + out.name + f".old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    if args.eval_only is not None:
        from my3dgen_hf.synthetic.identity_encoder import (
            load_synthheads_identity_encoder,
        )

        res = evaluate(load_synthheads_identity_encoder(args.eval_only), args)
        print(json.dumps(res, indent=1))
        return res

    images, labels = render_set(
        range(args.num_identities), args.images_per_identity, "train", args.resolution, args.supersample,
        args.yaw_range, args.pitch_range, args.occluder_prob, args.data_seed,
        workers=args.render_workers, cache_dir=args.cache_dir, desc="train",
    )
    t_data = time.time() - t0
    labels_t = torch.from_numpy(labels)

    if args.init_from is not None:
        from my3dgen_hf.synthetic.identity_encoder import (
            load_synthheads_identity_encoder,
        )

        model = load_synthheads_identity_encoder(args.init_from)
        if int(model.config.resolution) != args.resolution:
            raise ValueError(f"--init_from encoder works at {model.config.resolution} px, --resolution is {args.resolution}")
        args.embedding_dim = int(model.config.embedding_dim)
        head = ArcMarginHead(args.embedding_dim, args.num_identities)
        emb = embed_all(model, images)
        centres = torch.zeros(args.num_identities, args.embedding_dim).index_add_(0, labels_t, emb)
        head.weight.data.copy_(F.normalize(centres, dim=1))
        print(f"initialised from {args.init_from} (class centres from {len(images)} embeddings)", flush=True)
    else:
        model = SynthHeadsIdentityEncoder(
            resolution=args.resolution, channels=tuple(args.channels), blocks_per_stage=args.blocks_per_stage,
            embedding_dim=args.embedding_dim, dropout=args.dropout,
        )
        head = ArcMarginHead(args.embedding_dim, args.num_identities)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"encoder: {n_params:,} parameters; {len(images)} training images of {args.num_identities} identities", flush=True)

    decay, no_decay = [], []
    for n_, p_ in model.named_parameters():
        (decay if p_.ndim > 1 else no_decay).append(p_)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": head.parameters(), "weight_decay": 0.0},
        ],
        lr=args.lr, betas=(0.9, 0.999),
    )

    def lr_lambda(step):
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        prog = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(args.seed)
    args.output_dir.parent.mkdir(parents=True, exist_ok=True)
    log_lines = []
    model.train()
    head.train()
    t_train = time.time()
    bar = tqdm(range(args.steps), desc="train", mininterval=10)
    run_loss = run_acc = None
    perm, pos = torch.randperm(len(images), generator=gen), 0
    for step in bar:
        if pos + args.batch_size > len(perm):
            perm, pos = torch.randperm(len(images), generator=gen), 0
        idx = perm[pos : pos + args.batch_size]
        pos += args.batch_size
        x = to_float(images[idx.numpy()])
        if not args.no_augment:
            x = augment(x, gen)
        y = labels_t[idx]
        m = args.margin * min(1.0, (step + 1) / max(1, args.margin_warmup * args.steps))
        logits, cos = head(model.features(x), y, m, args.scale)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = (cos.argmax(1) == y).float().mean().item()
        run_loss = loss.item() if run_loss is None else 0.95 * run_loss + 0.05 * loss.item()
        run_acc = acc if run_acc is None else 0.95 * run_acc + 0.05 * acc
        if step % args.log_every == 0 or step == args.steps - 1:
            rec = {"step": step, "loss": round(run_loss, 4), "train_acc": round(run_acc, 4), "margin": round(m, 4),
                   "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t_train, 1)}
            log_lines.append(json.dumps(rec))
            bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}", m=f"{m:.2f}")
    bar.close()
    train_seconds = time.time() - t_train

    t_eval = time.time()
    res = evaluate(model, args)
    res.update({
        "num_parameters": n_params,
        "train": {
            "num_identities": args.num_identities, "images_per_identity": args.images_per_identity,
            "identity_ids": f"0..{args.num_identities - 1}", "data_seed": args.data_seed,
            "resolution": args.resolution, "supersample": args.supersample, "yaw_range": args.yaw_range,
            "pitch_range": args.pitch_range, "occluder_prob": args.occluder_prob, "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "margin": args.margin, "scale": args.scale,
            "augment": not args.no_augment, "init_from": None if args.init_from is None else str(args.init_from),
            "final_loss": run_loss, "final_train_acc": run_acc,
            "command": "python training/train_identity_encoder.py " + " ".join(sys.argv[1:] if argv is None else argv),
        },
        "seconds": {"data": round(t_data, 1), "train": round(train_seconds, 1), "eval": round(time.time() - t_eval, 1),
                    "total": round(time.time() - t0, 1)},
    })
    print(json.dumps({k: v for k, v in res.items() if k not in ("protocol", "train")}, indent=1), flush=True)
    save_atomically(model.eval(), args.output_dir, {
        "eval.json": json.dumps(res, indent=1) + "\n",
        "train_log.jsonl": "\n".join(log_lines) + "\n",
    })
    print(f"saved to {args.output_dir}", flush=True)
    return res


if __name__ == "__main__":
    main()

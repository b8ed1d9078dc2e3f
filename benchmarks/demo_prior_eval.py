"""Measure the shipped SynthHeads demo prior (the figures its model card reports).

    python benchmarks/demo_prior_eval.py --out outputs/demo_prior_eval [--quick]

1. A 16-seed sample grid at yaw -0.35 / 0 / +0.35 (look at it).
2. Frechet distance between identity-encoder features of N prior samples and N SynthHeads images, next to the
   same figure for a randomly initialized generator and for two disjoint SynthHeads halves.
3. Capacity and 3D: for held-out identities, W-space inversion of one frontal image; PSNR/SSIM at the input view,
   PSNR/SSIM against ground-truth renders at yaw +-0.35, ID similarity (identity encoder) of novel views vs truth,
   and LPIPS at both when its backbone weights are installed (``docs/metrics.md``).
   The projector is the library's (one ``w``, noise-annealed Adam) with a higher peak learning rate and an L2 term next
   to the perceptual loss (``--projection_lr 0.1 --projection_mse_weight 5``): the figure measures what W can
   hold; ``--projection_lr 0.01 --projection_mse_weight 0`` gives the original EG3D projector's settings.
Writes ``results.json``, ``results.md``, ``samples_16_seeds.png`` (``--grid_seeds``) and ``inversions.png`` (truth over inversion at
yaw -0.35 / 0 / +0.35 for six identities) to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from my3dgen_hf import EG3DGenerator, EG3DPipeline
from my3dgen_hf.metrics import perceptual_availability, perceptual_loss
from my3dgen_hf.synthetic import render, sample_identity, sample_image_params
from my3dgen_hf.synthetic.evaluation import evaluate_inversions, ground_truth_view, to_tensor
from my3dgen_hf.utils.export import to_uint8
from my3dgen_hf.utils.io import atomic_path, atomic_write_text
from my3dgen_hf.utils.provenance import provenance_lines, run_provenance

HELD_OUT_OFFSET = 1_000_000  # SynthHeads identity ids never used in training


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))  # tiny imaginary parts from round-off are dropped
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def embed(encoder, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    return torch.cat([encoder(images[i : i + batch]) for i in range(0, len(images), batch)]).numpy()


@torch.no_grad()
def prior_samples(pipe, n: int, seed: int, truncation_psi: float = 1.0) -> torch.Tensor:
    """n samples at random poses in the paper's range (yaw +-0.35, pitch +-0.25)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, 16):
        k = min(16, n - i)
        z = torch.randn(k, pipe.generator.z_dim, generator=g)
        yaw, pitch = (torch.rand(k, generator=g) * 2 - 1) * 0.35, (torch.rand(k, generator=g) * 2 - 1) * 0.25
        ws = pipe.get_ws(latents=z, truncation_psi=truncation_psi)
        out.append(pipe.generator.synthesis(ws, pipe.camera(yaw, pitch), noise_mode="const")["image"].clamp(-1, 1))
    return torch.cat(out)


def synthheads_images(n: int, offset: int, resolution: int, seed: int = 0) -> torch.Tensor:
    imgs = []
    for i in range(n):
        ident = sample_identity(seed, offset + i)
        ip = sample_image_params(seed, offset + i, 0, split="test", yaw_range=0.35, pitch_range=0.25, occluder_prob=0.0)
        imgs.append(to_tensor(render(ident, ip, resolution=resolution)))
    return torch.cat(imgs)


def sample_grid(pipe, path: Path, seeds=range(16), yaws=(-0.35, 0.0, 0.35)):
    rows = []
    for s in seeds:
        rows.append(np.concatenate(list(pipe(seed=s, yaw=list(yaws), output_type="np").images), axis=1))
    # one row of 3 views per seed, in blocks of 4 rows side by side (16 seeds: 4 x 4) for a compact picture
    rows += [np.zeros_like(rows[0])] * (-len(rows) % 4 if len(rows) > 4 else 0)
    blocks = [np.concatenate(rows[i : i + 4], axis=0) for i in range(0, len(rows), 4)]
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(blocks, axis=1)).save(tmp, format="PNG")


def frontal_test_view(identity_id: int, resolution: int):
    """A held-out identity's first test image, turned to the front without occluder -> (identity, params, image, label)."""
    ident = sample_identity(0, identity_id)
    ip = dataclasses.replace(sample_image_params(0, identity_id, 0, split="test", occluder_prob=0.0), yaw=0.0, pitch=0.0)
    return (ident, ip, *ground_truth_view(ident, ip, resolution))


def inversion_eval(pipe, encoder, n_ids: int, resolution: int, cache_dir: Path, distances=None, **projector_settings):
    """W-space inversion of one frontal image per held-out identity, measured at the input and novel views."""
    rows = []
    for k in range(n_ids):
        iid = HELD_OUT_OFFSET + 500 + k
        ident, ip, img, c = frontal_test_view(iid, resolution)
        _, per_image = evaluate_inversions(pipe, img, c, [ip], ident, encoder, cache_dir=cache_dir, distances=distances, **projector_settings)
        rows.append({"identity": iid, **per_image[0]})
    keys = [k for k in rows[0] if k != "identity"]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}, rows


@torch.no_grad()
def inversion_figure(pipe, rows, resolution: int, cache_dir: Path, path: Path, n: int = 6, yaws=(-0.35, 0.0, 0.35), **projector_settings):
    """For the first ``n`` identities: ground truth at each yaw (top) over the inversion of the frontal image rendered
    there (bottom). The ``w`` come from the projection cache that :func:`inversion_eval` filled."""
    from my3dgen_hf.personalization.pti import project_to_adapted_w

    G, columns = pipe.generator, []
    for row in rows[:n]:
        ident, ip, img, c = frontal_test_view(row["identity"], resolution)
        with torch.enable_grad():
            ws = project_to_adapted_w(pipe, img, c, cache_dir=cache_dir, progress=False, **projector_settings)
        truth, ours = [], []
        for yaw in yaws:
            gt, cy = ground_truth_view(ident, ip, resolution, yaw=yaw)
            truth.append(to_uint8(gt)[0])
            ours.append(to_uint8(G.synthesis(ws, cy, noise_mode="const", deterministic=True)["image"])[0])
        columns.append(np.concatenate([np.concatenate(truth, axis=1), np.concatenate(ours, axis=1)], axis=0))
    half = (len(columns) + 1) // 2  # two columns of identities
    grid = np.concatenate([np.concatenate(columns[:half], axis=0), np.concatenate(columns[half:] or [np.zeros_like(columns[0])] * half, axis=0)], axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="my3dgen-hf/demo-synthheads")
    p.add_argument("--out", type=Path, default=Path("outputs/demo_prior_eval"))
    p.add_argument("--num_fd", type=int, default=1000)
    p.add_argument("--num_inversions", type=int, default=20)
    p.add_argument("--projection_steps", type=int, default=300)
    p.add_argument("--projection_lr", type=float, default=0.1, help="peak learning rate of the W projection")
    p.add_argument("--projection_mse_weight", type=float, default=5.0, help="weight of the L2 term next to the perceptual loss")
    p.add_argument("--grid_seeds", type=int, default=16, help="seeds in the sample grid (samples_<N>_seeds.png)")
    p.add_argument("--quick", action="store_true", help="200 FD samples, 4 inversions, 100 projection steps")
    args = p.parse_args(argv)
    if args.quick:
        args.num_fd, args.num_inversions, args.projection_steps = 200, 4, 100
    args.out.mkdir(parents=True, exist_ok=True)
    from my3dgen_hf.synthetic.identity_encoder import load_synthheads_identity_encoder

    t0 = time.perf_counter()
    pipe = EG3DPipeline.from_pretrained(args.model)
    G = pipe.generator.eval()
    encoder = load_synthheads_identity_encoder().eval()
    res = G.img_resolution
    sample_grid(pipe, args.out / f"samples_{args.grid_seeds}_seeds.png", seeds=range(args.grid_seeds))

    real = synthheads_images(2 * args.num_fd, HELD_OUT_OFFSET, res)
    f_real_a, f_real_b = embed(encoder, real[: args.num_fd]), embed(encoder, real[args.num_fd :])
    f_prior = embed(encoder, prior_samples(pipe, args.num_fd, seed=1))
    torch.manual_seed(0)
    random_pipe = EG3DPipeline(generator=EG3DGenerator(**{k: v for k, v in G.config.items() if not k.startswith("_")}).eval())
    f_random = embed(encoder, prior_samples(random_pipe, args.num_fd, seed=1))
    fd = {
        "prior_vs_synthheads": frechet_distance(f_prior, f_real_a),
        "random_init_vs_synthheads": frechet_distance(f_random, f_real_a),
        "synthheads_half_vs_half": frechet_distance(f_real_b, f_real_a),
    }
    settings = dict(steps=args.projection_steps, initial_learning_rate=args.projection_lr, mse_weight=args.projection_mse_weight)
    lpips_missing = perceptual_availability()["lpips-alex"]  # None when its weights are installed
    distances = {"lpips": perceptual_loss("lpips-alex", reduction="none")} if lpips_missing is None else {}
    inv_mean, inv_rows = inversion_eval(pipe, encoder, args.num_inversions, res, args.out / "projection_cache", distances, **settings)
    inversion_figure(pipe, inv_rows, res, args.out / "projection_cache", args.out / "inversions.png", **settings)
    results = {"model": args.model, "num_fd": args.num_fd, "num_inversions": args.num_inversions, "projection_steps": args.projection_steps,
               "projection_lr": args.projection_lr, "projection_mse_weight": args.projection_mse_weight,
               "frechet_identity_features": fd, "inversion": inv_mean, "inversion_rows": inv_rows,
               **run_provenance("benchmarks/demo_prior_eval.py", argv, "cpu", t0)}
    lines = [
        *provenance_lines(results), "",
        f"| Frechet distance (identity-encoder features, {args.num_fd} vs {args.num_fd}) | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in fd.items()], "",
        f"| W-space inversion of a frontal image, {args.num_inversions} held-out identities ({args.projection_steps} steps, "
        f"lr {args.projection_lr}, L2 weight {args.projection_mse_weight}) | mean |", "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in inv_mean.items()],
        *([] if distances else ["", f"LPIPS not measured: {lpips_missing}"]),
    ]
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(args.out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

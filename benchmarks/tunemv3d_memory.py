#!/usr/bin/env python
"""Step time and peak memory of TuneMV3D against the number of views n.

    python benchmarks/tunemv3d_memory.py                          # tiny config, n = 2 4 8, CPU or CUDA
    python benchmarks/tunemv3d_memory.py --config small --views 4 8 16 --gradient_checkpointing --view_chunk_size 4

For each n, one process builds the networks, runs warm-up steps, then times ``--steps`` training steps (forward of
interactive E + NeuS renders of n + n' views, modulation O, frozen UNet; L2 + L1 loss; backward; AdamW) and
inference steps (one denoising step under classifier-free guidance, i.e. a batch of 2 objects). Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, and the growth of the process's peak resident set over the
post-build baseline on CPU (hence one process per n).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

CONFIGS = {
    # UNet / interactive sizes; latent resolution = sample_size.
    "tiny": dict(
        unet=dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        interactive=dict(encoder_channels=8, encoder_layers=1, attention_head_dim=4, norm_num_groups=2, feature_channels=4, time_embed_dim=16,
                         field_hidden_dim=16, field_blocks=2, num_samples=8, num_importance=8, up_sample_steps=2),
        text_len=16,
    ),
    "small": dict(
        unet=dict(block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=32, cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        interactive=dict(encoder_channels=32, encoder_layers=2, attention_head_dim=8, norm_num_groups=8, feature_channels=16, time_embed_dim=64,
                         field_hidden_dim=64, field_blocks=5, num_samples=32, num_importance=32, up_sample_steps=4),
        text_len=77,
    ),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(args) -> dict:
    """One n: times and peak memory of training and inference steps (runs inside its own process)."""
    from diffusers import UNet2DConditionModel

    from my3dgen_hf.tunemv3d import TuneMV3DInteractiveModel, TuneMV3DModulationModel, predict_noise, ring_cameras

    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = CONFIGS[args.config]
    unet = UNet2DConditionModel(**cfg["unet"]).to(device).requires_grad_(False)
    interactive = TuneMV3DInteractiveModel.from_unet(unet, **cfg["interactive"]).to(device)
    modulation = TuneMV3DModulationModel.from_unet(unet).to(device)
    if args.gradient_checkpointing:
        for m in (unet, interactive, modulation):
            m.enable_gradient_checkpointing()
    params = [*interactive.parameters(), *modulation.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    n, n_novel, s = args.n, args.novel_views, cfg["unet"]["sample_size"]
    B, C, D = args.batch_size, unet.config.in_channels, cfg["unet"]["cross_attention_dim"]
    text = torch.randn(B, cfg["text_len"], D, device=device)
    cams = ring_cameras(n + n_novel, 20.0, device=device)[None].expand(B, -1, -1)
    x0 = torch.randn(B, n + n_novel, C, s, s, device=device)
    x_t = torch.randn(B, n, C, s, s, device=device)
    t = torch.randint(0, 1000, (B,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        pred, inter = predict_noise(unet, interactive, modulation, x_t, t, text, cams[:, :n], cams[:, n:] if n_novel else None,
                                    view_chunk_size=args.view_chunk_size, ray_chunk_size=args.ray_chunk_size)
        loss = (pred - x_t).pow(2).mean() + (inter.x0 - x0).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step():  # classifier-free guidance: the batch is doubled
        predict_noise(unet, interactive, modulation, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, text]), torch.cat([cams[:, :n]] * 2),
                      view_chunk_size=args.view_chunk_size, ray_chunk_size=args.ray_chunk_size)

    result = {"n": n, "n_novel": n_novel, "config": args.config, "device": str(device), "batch_size": B}
    base_rss = _rss_mib()  # CPU baseline: the process after imports and building the networks
    for name, step in (("infer", infer_step), ("train", train_step)):
        if args.mode not in (name, "both"):
            continue
        for _ in range(args.warmup):
            step()
        sync()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = None
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        times.sort()
        result[f"{name}_step_s"] = times[len(times) // 2]
        if device.type == "cuda":
            result[f"{name}_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            result[f"{name}_peak_over_weights_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            # Growth of the peak resident set over the baseline; monotonic, so "train" (run last) covers both modes.
            result[f"{name}_peak_rss_mib"] = _rss_mib() - base_rss
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--views", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--novel_views", type=int, default=2, help="n' extra rendered views in the training step")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--view_chunk_size", type=int, default=None)
    p.add_argument("--ray_chunk_size", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)  # worker mode: measure one n
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.n is not None:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return None

    rows = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for n in args.views:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough, "--n", str(n)], capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            rows.append({"n": n, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            rows.append(json.loads(line[len("RESULT "):]))
    mem = "peak_mib" if args.device.startswith("cuda") else "peak_rss_mib"
    print(f"TuneMV3D {args.config} config on {args.device}, batch {args.batch_size}, n' = {args.novel_views}, "
          f"checkpointing {args.gradient_checkpointing}, view_chunk_size {args.view_chunk_size}")
    print(f"{'n':>4} {'train step (s)':>15} {'train peak (MiB)':>17} {'infer step (s)':>15} {'infer peak (MiB)':>17}")
    for r in rows:
        if "error" in r:
            print(f"{r['n']:>4}  error: {r['error']}")
            continue
        cells = [(f"{m}_step_s", 15, ".4f") for m in ("train", "infer")]
        cells = [cells[0], (f"train_{mem}", 17, ".1f"), cells[1], (f"infer_{mem}", 17, ".1f")]
        print(f"{r['n']:>4} " + " ".join(f"{r[k]:>{w}{f}}" if k in r else f"{'-':>{w}}" for k, w, f in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

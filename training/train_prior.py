"""Train a small EG3D prior on SynthHeads (the project's embedded demo prior).

    accelerate launch training/train_prior.py --output_dir outputs/prior      # or plain `python`
    accelerate launch training/train_prior.py --output_dir outputs/prior --resume_from_checkpoint latest

Method: multi-view reconstruction with a variational encoder, since SynthHeads gives ground-truth novel views
and adversarial training does not fit a CPU budget. For each sample the encoder sees one view of an identity
(with its expression, lighting and background) and predicts q(z | x) = N(mu, sigma); the generator maps z with a
pose-conditioning camera (EG3D's generator pose conditioning: the rendering camera, swapped with another sample's
with probability ``--gpc_swap_prob``) and renders *another* view of the same head. Loss: L1 on the final image and
on the raw neural rendering, L1 on depth over the head mask, a KL term that keeps z ~ N(0, I) so random seeds give
heads, and EG3D's density regularization. After training, ``w_avg`` is the mean of ``mapping(z, frontal camera)``
over z ~ N(0, I), so truncation and W-space inversion behave as with the released checkpoints.

Output: an ``EG3DPipeline`` folder (``model_index.json`` + ``generator/``), the encoder in ``encoder/``, validation
grids and a ``train_log.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from my3dgen_hf import EG3DGenerator, EG3DPipeline
from my3dgen_hf.eg3d.camera import frontal_conditioning_label, sample_camera_label
from my3dgen_hf.synthetic import render, sample_identity, sample_image_params

DEMO_PRIOR_CONFIG = dict(
    z_dim=128, c_dim=25, w_dim=128, img_resolution=128, img_channels=3, sr_num_fp16_res=0,
    mapping_kwargs={"num_layers": 2}, channel_base=4096, channel_max=64, num_fp16_res=0, conv_clamp=None,
    fused_modconv_default="inference_only", triplane_resolution=64, neural_rendering_resolution=32,
    sr_kwargs={"channel_base": 4096, "channel_max": 64, "fused_modconv_default": "inference_only", "block_channels": [48, 24]},
    rendering_kwargs={
        "image_resolution": 128, "superresolution_module": "SuperresolutionHybrid2X", "depth_resolution": 24,
        "depth_resolution_importance": 24, "ray_start": 2.25, "ray_end": 3.3, "box_warp": 1, "avg_camera_radius": 2.7,
        "avg_camera_pivot": [0, 0, 0.2], "c_gen_conditioning_zero": False, "c_scale": 1.0, "sr_antialias": True,
        "superresolution_noise_mode": "none", "density_reg": 0.25, "density_reg_p_dist": 0.004,
        "reproduce_raw_aliasing": False, "clamp_mode": "softplus", "disparity_space_sampling": False,
    },
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", type=Path, default=Path("outputs/demo-prior"))
    p.add_argument("--num_identities", type=int, default=4000, help="training identities (ids 0..N-1, SynthHeads seed --data_seed)")
    p.add_argument("--data_seed", type=int, default=0)
    p.add_argument("--train_batch_size", type=int, default=4)
    p.add_argument("--max_train_steps", type=int, default=3000)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--encoder_learning_rate", type=float, default=1e-3)
    p.add_argument("--lr_schedule", choices=["constant", "cosine"], default="constant",
                   help="cosine: decay both learning rates from --lr_decay_start_step to --lr_min_ratio x at --max_train_steps")
    p.add_argument("--lr_decay_start_step", type=int, default=0)
    p.add_argument("--lr_min_ratio", type=float, default=0.1)
    p.add_argument("--kl_weight", type=float, default=1e-3)
    p.add_argument("--depth_weight", type=float, default=1.0)
    p.add_argument("--raw_weight", type=float, default=1.0)
    p.add_argument("--gpc_swap_prob", type=float, default=0.5)
    p.add_argument("--yaw_range", type=float, default=0.6)
    p.add_argument("--pitch_range", type=float, default=0.35)
    p.add_argument("--checkpointing_steps", type=int, default=250)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", type=str, default=None, help="a checkpoint folder or 'latest'")
    p.add_argument("--validation_steps", type=int, default=250)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--report_to", default=None, help="e.g. tensorboard")
    p.add_argument("--dataloader_num_workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--w_avg_samples", type=int, default=10000)
    p.add_argument("--export_only", action="store_true", help="skip training: export the pipeline from the resumed checkpoint")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------- data
class SynthHeadsPairs(torch.utils.data.IterableDataset):
    """Endless (source view, target view) pairs of the same head, expression, lighting and background."""

    def __init__(self, num_identities, data_seed, resolution, yaw_range, pitch_range, seed):
        self.num_identities, self.data_seed, self.resolution = num_identities, data_seed, resolution
        self.yaw_range, self.pitch_range, self.seed = yaw_range, pitch_range, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, int(time.time_ns() % 2**31)])
        while True:
            ident_id = int(rng.integers(self.num_identities))
            ident = sample_identity(self.data_seed, ident_id)
            ip = sample_image_params(self.data_seed, ident_id, int(rng.integers(1 << 30)), yaw_range=self.yaw_range, pitch_range=self.pitch_range)
            tgt = dataclasses.replace(ip, yaw=float(rng.uniform(-self.yaw_range, self.yaw_range)), pitch=float(rng.uniform(-self.pitch_range, self.pitch_range)))
            src_img = render(ident, ip, resolution=self.resolution, supersample=1)
            tgt_img, aux = render(ident, tgt, resolution=self.resolution, supersample=2, return_aux=True)
            yield {
                "source": torch.from_numpy(src_img).permute(2, 0, 1).float() / 127.5 - 1,
                "source_c": torch.from_numpy(ip.camera_label()).float(),
                "target": torch.from_numpy(tgt_img).permute(2, 0, 1).float() / 127.5 - 1,
                "target_c": torch.from_numpy(tgt.camera_label()).float(),
                "depth": torch.from_numpy(aux["depth"]).float()[None],
                "mask": torch.from_numpy(aux["mask"]).float()[None],
            }


# ---------------------------------------------------------------------------------------------------- encoder
class ImageEncoder(nn.Module):
    """x [N, 3, 64, 64] in [-1, 1] and its camera [N, 25] -> (mu, logvar) of q(z | x) [N, z_dim]."""

    def __init__(self, z_dim: int, width: int = 64, resolution: int = 64):
        super().__init__()
        self.resolution = resolution
        layers, ch = [], 3
        for out in (width // 2, width, width * 2, width * 2):  # 64 -> 4
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(ch * 16 + 25, 512), nn.SiLU(), nn.Linear(512, 2 * z_dim))

    def forward(self, x, c):
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True)
        h = self.features(x).flatten(1)
        mu, logvar = self.head(torch.cat([h, c], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-8, 4)


# ------------------------------------------------------------------------------------------------------- loss
def lr_factor(step: int, args) -> float:
    """Stateless schedule (a function of the step only, so any resume point continues it exactly)."""
    if args.lr_schedule == "constant" or step < args.lr_decay_start_step:
        return 1.0
    t = min(1.0, (step - args.lr_decay_start_step) / max(1, args.max_train_steps - args.lr_decay_start_step))
    return args.lr_min_ratio + (1 - args.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def density_regularization(G, ws, p_dist):
    """EG3D's density smoothness term: sigma at random points vs slightly perturbed points (L1)."""
    n = ws.shape[0]
    pts = torch.rand(n, 1000, 3, device=ws.device) * 2 - 1
    pts = torch.cat([pts, pts + torch.randn_like(pts) * p_dist], dim=1)
    sigma = G.sample_mixed(pts, torch.zeros_like(pts), ws)["sigma"]
    return F.l1_loss(sigma[:, :1000], sigma[:, 1000:])


@torch.no_grad()
def compute_w_avg(G, num_samples, device, batch=1000):
    c = frontal_conditioning_label(G.rendering_kwargs, device=device)
    total = torch.zeros(G.w_dim, device=device)
    for i in range(0, num_samples, batch):
        n = min(batch, num_samples - i)
        ws = G.mapping(torch.randn(n, G.z_dim, device=device), c.repeat(n, 1))
        total += ws[:, 0].sum(0)
    return total / num_samples


@torch.no_grad()
def validation_grid(G, path, device, seeds=(0, 1, 2, 3, 4, 5, 6, 7), yaws=(-0.35, 0.0, 0.35), truncation_psi=0.7):
    G.eval()
    c_cond = frontal_conditioning_label(G.rendering_kwargs, device=device)
    rows = []
    for s in seeds:
        z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).float().to(device)
        ws = G.mapping(z, c_cond, truncation_psi=truncation_psi)
        imgs = [G.synthesis(ws, sample_camera_label(y, 0.0, device=device))["image"] for y in yaws]
        rows.append(torch.cat(imgs, dim=3))
    grid = torch.cat(rows, dim=2)[0]
    G.train()
    arr = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def main(argv=None):
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, log_with=args.report_to, project_dir=str(args.output_dir))
    set_seed(args.seed + accelerator.process_index)
    if accelerator.is_main_process:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(args.output_dir, os.W_OK):
            sys.exit(f"output_dir {args.output_dir} is not writable")
    if args.report_to:
        accelerator.init_trackers("train_prior", config={k: str(v) for k, v in vars(args).items()})

    G = EG3DGenerator(**DEMO_PRIOR_CONFIG)
    E = ImageEncoder(G.z_dim)
    opt = torch.optim.Adam([
        {"params": G.parameters(), "lr": args.learning_rate, "betas": (0.0, 0.99)},
        {"params": E.parameters(), "lr": args.encoder_learning_rate, "betas": (0.9, 0.99)},
    ], eps=1e-8)
    data = SynthHeadsPairs(args.num_identities, args.data_seed, G.img_resolution, args.yaw_range, args.pitch_range, args.seed)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.train_batch_size, num_workers=args.dataloader_num_workers, persistent_workers=args.dataloader_num_workers > 0
    )
    G, E, opt, loader = accelerator.prepare(G, E, opt, loader)
    accelerator.register_for_checkpointing(torch.nn.Module())  # keeps state indices stable across versions

    ckpt_root = args.output_dir / "checkpoints"
    global_step = 0
    if args.resume_from_checkpoint:
        path = Path(args.resume_from_checkpoint)
        if args.resume_from_checkpoint == "latest":
            found = sorted(ckpt_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if ckpt_root.exists() else []
            path = found[-1] if found else None
        if path is None:
            accelerator.print("no checkpoint found; starting from scratch")
        else:
            accelerator.load_state(str(path))
            global_step = int(path.name.split("-")[1])
            accelerator.print(f"resumed from {path} at step {global_step}")

    log_path = args.output_dir / "train_log.jsonl"
    G_unwrapped, E_unwrapped = accelerator.unwrap_model(G), accelerator.unwrap_model(E)
    rk = G_unwrapped.rendering_kwargs
    nrr = G_unwrapped.neural_rendering_resolution
    bar = tqdm(total=args.max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="prior")
    it = iter(loader)
    t0 = time.time()
    G.train()
    E.train()
    base_lrs = [args.learning_rate, args.encoder_learning_rate]  # not opt's: a resumed state holds the last *scaled* lr
    while global_step < args.max_train_steps and not args.export_only:
        batch = next(it)
        factor = lr_factor(global_step, args)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * factor
        with accelerator.accumulate(G):
            mu, logvar = E(batch["source"], batch["source_c"])
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            c_cond = batch["target_c"]
            swap = torch.rand(len(z), device=z.device) < args.gpc_swap_prob
            c_cond = torch.where(swap[:, None], c_cond.roll(1, 0), c_cond)
            ws = G_unwrapped.mapping(z, c_cond)
            out = G_unwrapped.synthesis(ws, batch["target_c"])
            target_raw = F.interpolate(batch["target"], size=(nrr, nrr), mode="bilinear", align_corners=False, antialias=True)
            mask_raw = F.interpolate(batch["mask"], size=(nrr, nrr), mode="bilinear", align_corners=False, antialias=True)
            depth_raw = F.interpolate(batch["depth"] * batch["mask"], size=(nrr, nrr), mode="bilinear", align_corners=False, antialias=True)
            depth_raw = depth_raw / mask_raw.clamp_min(1e-3)
            fg = (mask_raw > 0.99).float()
            loss_img = F.l1_loss(out["image"], batch["target"])
            loss_raw = F.l1_loss(out["image_raw"], target_raw)
            loss_depth = (fg * (out["image_depth"] - depth_raw).abs()).sum() / fg.sum().clamp_min(1)
            kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
            reg = density_regularization(G_unwrapped, ws, rk["density_reg_p_dist"])
            loss = loss_img + args.raw_weight * loss_raw + args.depth_weight * loss_depth + args.kl_weight * kl + rk["density_reg"] * reg
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
        global_step += 1
        bar.update(1)
        logs = {"step": global_step, "lr_factor": round(factor, 4), "lr": opt.param_groups[0]["lr"], "loss": loss.item(), "img": loss_img.item(), "raw": loss_raw.item(), "depth": loss_depth.item(),
                "kl": kl.item(), "reg": reg.item(), "elapsed_s": round(time.time() - t0, 1)}
        bar.set_postfix(loss=f"{logs['loss']:.3f}", img=f"{logs['img']:.3f}", depth=f"{logs['depth']:.3f}")
        accelerator.log(logs, step=global_step)
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(logs) + "\n")
            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                save_to = ckpt_root / f"checkpoint-{global_step}"
                accelerator.save_state(str(save_to))
                old = sorted(ckpt_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                for stale in old[: max(0, len(old) - args.checkpoints_total_limit)]:
                    shutil.rmtree(stale, ignore_errors=True)
            if global_step % args.validation_steps == 0:
                validation_grid(G_unwrapped, args.output_dir / "validation" / f"step_{global_step:06d}.png", accelerator.device)
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        G_final = accelerator.unwrap_model(G).eval()
        G_final.backbone.mapping.w_avg.copy_(compute_w_avg(G_final, args.w_avg_samples, accelerator.device))
        EG3DPipeline(generator=G_final).save_pretrained(args.output_dir / "pipeline")
        from safetensors.torch import save_file

        (args.output_dir / "encoder").mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(E).state_dict().items()}, str(args.output_dir / "encoder" / "model.safetensors"))
        validation_grid(G_final, args.output_dir / "validation" / "final.png", accelerator.device)
        summary = {"steps": global_step, "wall_time_s": round(time.time() - t0, 1), "device": str(accelerator.device),
                   "num_processes": accelerator.num_processes, "parameters": sum(p.numel() for p in G_final.parameters()), "args": {k: str(v) for k, v in vars(args).items()}}
        (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.end_training()


if __name__ == "__main__":
    main()

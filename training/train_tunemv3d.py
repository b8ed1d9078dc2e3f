#!/usr/bin/env python
"""Train TuneMV3D's interactive and modulation modules on multi-view renders; the 2D diffusion model stays frozen.

    accelerate launch training/train_tunemv3d.py \\
        --pretrained_model_name_or_path <Stable Diffusion folder or Hub id> \\
        --train_data_dir <root>/<object_id>/{000.png..., cameras.json, caption.txt} \\
        --output_dir tunemv3d-out --num_views 8 --num_novel_views 8 --resolution 256 \\
        --train_batch_size 4 --learning_rate 5e-5 --max_train_steps 100000 --mixed_precision fp16 \\
        --gradient_checkpointing --checkpointing_steps 1000 --validation_prompts "a wooden chair"

Loss: lambda_denoise * mean over views |eps_pred - eps|^2 + lambda_render * |NeuS render - x0|_1 over the n + n'
views. The output folder holds ``checkpoint-<step>/`` (accelerate states; resume with ``--resume_from_checkpoint
latest``), ``validation/`` images and, at the end, the pipeline (load with ``TuneMV3DPipeline.from_pretrained``).
The dataset layout is documented in ``my3dgen_hf/tunemv3d/data.py`` and ``docs/tunemv3d.md``.

Ablations of the supplement (Sec. D), for fresh modules: ``--no_raw_xt`` (encoder O sees only the renders, not the
raw x_t) and ``--render_target features`` (the field renders ``--render_channels``-dimensional features straight
into O instead of the low-dimensional x0; there is no x0 to compare them with, so the render loss is dropped).
The final save also writes ``tunemv3d_training.json`` (steps trained and these settings), which
``benchmarks/tunemv3d_eval.py`` reads to check that compared models were trained for equal steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.tunemv3d.data import MultiViewDataset, collate
from my3dgen_hf.tunemv3d.denoiser import predict_noise

logger = get_logger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--pretrained_model_name_or_path", required=True, help="Stable Diffusion folder / Hub id, or a saved TuneMV3D pipeline to continue.")
    a("--revision", default=None)
    a("--variant", default=None)
    a("--cache_dir", default=None)
    a("--train_data_dir", required=True, help="<root>/<object_id>/{000.png..., cameras.json, caption.txt} (see docs/tunemv3d.md).")
    a("--output_dir", default="tunemv3d-model")
    a("--seed", type=int, default=None)
    a("--resolution", type=int, default=256, help="Image size the views are resized to.")
    a("--num_views", type=int, default=8, help="n: views denoised jointly.")
    a("--num_novel_views", type=int, default=8, help="n': extra views that only supervise the NeuS renders.")
    a("--fixed_views", action="store_true", help="Use each object's first n + n' views instead of a random subset.")
    a("--train_batch_size", type=int, default=4, help="Objects per device and step.")
    a("--num_train_epochs", type=int, default=100)
    a("--max_train_steps", type=int, default=None, help="Overrides num_train_epochs.")
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--gradient_checkpointing", action="store_true")
    a("--learning_rate", type=float, default=5e-5)
    a("--scale_lr", action="store_true", help="Scale the learning rate by accumulation steps x batch size x processes.")
    a("--lr_scheduler", default="constant", help='"linear", "cosine", "constant", "constant_with_warmup", ...')
    a("--lr_warmup_steps", type=int, default=0)
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_weight_decay", type=float, default=1e-3)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=1.0)
    a("--lambda_denoise", type=float, default=1.0)
    a("--lambda_render", type=float, default=1.0)
    a("--omega", type=float, default=1.5, help="Positional-encoding scale: 1.5 for chair-like data, 2.0 for Objaverse-like.")
    a("--interactive_kwargs", type=json.loads, default=None, help='JSON overrides for a fresh interactive module, e.g. \'{"encoder_channels": 64}\'.')
    a("--no_raw_xt", action="store_true", help="Ablation: encoder O does not take the raw x_t (fresh modules only).")
    a("--render_target", default=None, choices=["x0", "features"],
      help="What the NeuS field renders into O: the latent x0 (default) or high-dimensional features (ablation; no render loss).")
    a("--render_channels", type=int, default=None, help="Channels of the rendered features with --render_target features (default 8 x latent).")
    a("--proportion_empty_prompts", type=float, default=0.0, help="Captions replaced by the empty prompt (classifier-free guidance).")
    a("--view_chunk_size", type=int, default=None, help="Views per pass through E, O and the UNet (memory).")
    a("--ray_chunk_size", type=int, default=None, help="Rays per NeuS rendering pass (memory).")
    a("--dataloader_num_workers", type=int, default=0)
    a("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    a("--allow_tf32", action="store_true")
    a("--report_to", default="none", help='"tensorboard", "wandb", "all" or "none".')
    a("--logging_dir", default="logs")
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=None)
    a("--resume_from_checkpoint", default=None, help='A checkpoint folder or "latest".')
    a("--validation_prompts", nargs="+", default=None)
    a("--validation_steps", type=int, default=500)
    a("--validation_num_inference_steps", type=int, default=30)
    a("--validation_guidance_scale", type=float, default=7.5)
    args = p.parse_args(argv)
    if args.num_views < 1 or args.num_novel_views < 0:
        p.error("--num_views must be >= 1 and --num_novel_views >= 0")
    return args


# ---------------------------------------------------------------------------------------------------- the loss
@torch.no_grad()
def encode_views(vae, images: torch.Tensor, generator=None) -> torch.Tensor:
    """images [B, V, 3, H, W] in [-1, 1] -> x0 [B, V, C, h, w] (the images themselves in pixel space)."""
    if vae is None:
        return images
    dist = vae.encode(images.flatten(0, 1).to(vae.dtype)).latent_dist
    return (dist.sample(generator) * vae.config.scaling_factor).unflatten(0, images.shape[:2])


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device), return_dict=False)[0]


def compute_loss(models: dict, batch: dict, noise_scheduler, args, generator=None) -> tuple[torch.Tensor, dict]:
    """L = lambda_denoise * mean_i |pred_i - target_i|^2 + lambda_render * |render(n + n' views) - x0|_1."""
    unet, vae, text_encoder, tokenizer = models["unet"], models["vae"], models["text_encoder"], models["tokenizer"]
    device = unet.device
    n = args.num_views
    images, cameras = batch["images"].to(device), batch["cameras"].to(device)  # [B, V, 3, H, W], [B, V, 25]
    x0 = encode_views(vae, images, generator).float()  # [B, V, C, h, w]
    B = x0.shape[0]
    x0_in = x0[:, :n]
    noise = randn_tensor(x0_in.shape, generator=generator, device=device)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (B,), generator=generator).to(device)
    t_views = t.repeat_interleave(n)
    x_t = noise_scheduler.add_noise(x0_in.flatten(0, 1), noise.flatten(0, 1), t_views).unflatten(0, (B, n))
    text = encode_captions(text_encoder, tokenizer, batch["captions"])

    pred, inter = predict_noise(
        unet, models["interactive"], models["modulation"], x_t, t, text, cameras[:, :n], cameras[:, n:] if x0.shape[1] > n else None,
        view_chunk_size=args.view_chunk_size, ray_chunk_size=args.ray_chunk_size,
    )
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(x0_in.flatten(0, 1), noise.flatten(0, 1), t_views).unflatten(0, (B, n))
    else:
        target = noise
    loss_denoise = F.mse_loss(pred.float(), target.float())
    if _render_target(models["interactive"]) == "x0":
        loss_render = F.l1_loss(inter.x0.float(), x0)
    else:  # rendered features (ablation): nothing to compare them with
        loss_render = torch.zeros((), device=loss_denoise.device)
    loss = args.lambda_denoise * loss_denoise + args.lambda_render * loss_render
    return loss, {"loss": loss.item(), "loss_denoise": loss_denoise.item(), "loss_render": loss_render.item()}


def _render_target(interactive) -> str:
    """The interactive module's ``render_target``, also through DDP / compile wrappers."""
    module = getattr(interactive, "module", getattr(interactive, "_orig_mod", interactive))
    return getattr(module.config, "render_target", "x0")


# ------------------------------------------------------------------------------------------------- validation
def log_validation(pipe: TuneMV3DPipeline, args, accelerator: Accelerator, step: int) -> list[Path]:
    logger.info(f"Running validation on {len(args.validation_prompts)} prompts")
    for m in (pipe.interactive, pipe.modulation):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    paths, grids = [], []
    for i, prompt in enumerate(args.validation_prompts):
        with torch.autocast(accelerator.device.type, enabled=accelerator.mixed_precision in ("fp16", "bf16")):
            images = pipe(
                prompt, num_views=args.num_views, num_inference_steps=args.validation_num_inference_steps,
                guidance_scale=args.validation_guidance_scale, generator=generator, output_type="np",
            ).images
        grid = (np.concatenate(list(images), axis=1) * 255).round().astype(np.uint8)  # the n views side by side
        paths.append(folder / f"step-{step:06d}-{i}.png")
        PIL.Image.fromarray(grid).save(paths[-1])
        grids.append(grid)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(grids), step, dataformats="NHWC")
    for m in (pipe.interactive, pipe.modulation):
        m.train()
    return paths


# ------------------------------------------------------------------------------------------------------ main
def _checkpoints(output_dir: str) -> list[Path]:
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def main(args: argparse.Namespace) -> dict:
    """Train; returns {"first_step", "global_step", "losses" (per optimizer step), "output_dir"}."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.seed is not None:
        set_seed(args.seed)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    # Models: the frozen 2D model, fresh (or saved) interactive and modulation modules.
    interactive_kwargs = {"omega": args.omega, **(args.interactive_kwargs or {})}
    if args.render_target is not None:
        interactive_kwargs["render_target"] = args.render_target
    if args.render_channels is not None:
        interactive_kwargs["render_channels"] = args.render_channels
    pipe = TuneMV3DPipeline.from_pretrained(
        args.pretrained_model_name_or_path, interactive_kwargs=interactive_kwargs, modulation_kwargs={"use_raw_xt": False} if args.no_raw_xt else None,
        revision=args.revision, variant=args.variant, cache_dir=args.cache_dir,
    )
    pipe.set_progress_bar_config(disable=True)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
        if frozen is not None:
            frozen.requires_grad_(False).to(accelerator.device)
            if weight_dtype != torch.float32:
                frozen.to(dtype=weight_dtype)
    interactive, modulation = pipe.interactive.train(), pipe.modulation.train()
    if args.gradient_checkpointing:
        pipe.enable_gradient_checkpointing()

    lr = args.learning_rate
    if args.scale_lr:
        lr *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        [*interactive.parameters(), *modulation.parameters()], lr=lr, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    dataset = MultiViewDataset(args.train_data_dir, args.num_views, args.num_novel_views, args.resolution, random_views=not args.fixed_views)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, shuffle=True, collate_fn=collate, num_workers=args.dataloader_num_workers, drop_last=False
    )
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    interactive, modulation, optimizer, dataloader, lr_scheduler = accelerator.prepare(interactive, modulation, optimizer, dataloader, lr_scheduler)
    num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tunemv3d", config=config)

    global_step = 0
    if args.resume_from_checkpoint:
        path = _checkpoints(args.output_dir)[-1:] if args.resume_from_checkpoint == "latest" else [Path(args.resume_from_checkpoint)]
        if not path or not path[0].is_dir():
            accelerator.print(f"Checkpoint {args.resume_from_checkpoint!r} not found; starting a new run.")
        else:
            accelerator.print(f"Resuming from {path[0]}")
            accelerator.load_state(str(path[0]))
            global_step = int(path[0].name.split("-")[-1])
    first_step = global_step
    first_epoch = global_step // steps_per_epoch

    logger.info(f"{len(dataset)} objects, {args.num_views} + {args.num_novel_views} views, {args.max_train_steps} steps")
    models = dict(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, interactive=interactive, modulation=modulation)
    losses = []
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    for _epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:
            break
        for batch in dataloader:
            if args.proportion_empty_prompts > 0:
                batch["captions"] = ["" if torch.rand(()) < args.proportion_empty_prompts else c for c in batch["captions"]]
            with accelerator.accumulate(interactive, modulation):
                loss, logs = compute_loss(models, batch, noise_scheduler, args)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_([*interactive.parameters(), *modulation.parameters()], args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            losses.append(logs["loss"])
            logs["lr"] = lr_scheduler.get_last_lr()[0]
            progress.set_postfix(**{k: f"{v:.4g}" for k, v in logs.items()})
            accelerator.log(logs, step=global_step)
            if accelerator.is_main_process and args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                if args.checkpoints_total_limit is not None:
                    for old in _checkpoints(args.output_dir)[: max(0, len(_checkpoints(args.output_dir)) - args.checkpoints_total_limit + 1)]:
                        shutil.rmtree(old)
                accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
            if accelerator.is_main_process and args.validation_prompts and global_step % args.validation_steps == 0:
                log_validation(_pipeline(pipe, accelerator, interactive, modulation), args, accelerator, global_step)
            if global_step >= args.max_train_steps:
                break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = _pipeline(pipe, accelerator, interactive, modulation)
        if args.validation_prompts and global_step % args.validation_steps != 0:  # else done in the loop
            log_validation(final, args, accelerator, global_step)
        final.save_pretrained(args.output_dir)
        summary = {
            "global_step": global_step, "use_raw_xt": bool(final.modulation.config.get("use_raw_xt", True)),
            "render_target": final.interactive.config.render_target, "render_channels": final.interactive.num_render_channels,
            "num_views": args.num_views, "num_novel_views": args.num_novel_views, "resolution": args.resolution,
            "train_batch_size": args.train_batch_size, "learning_rate": args.learning_rate,
        }
        meta = Path(args.train_data_dir) / "meta.json"  # a SynthObjects export: which world and objects were trained on
        if meta.is_file():
            info = json.loads(meta.read_text())
            ids = [o["object_id"] for o in info.get("objects", [])]
            summary["synthobjects"] = {"seed": info.get("seed"), "category": info.get("category"), "object_ids": [min(ids), max(ids)] if ids else None}
        (Path(args.output_dir) / "tunemv3d_training.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.end_training()
    return {"first_step": first_step, "global_step": global_step, "losses": losses, "output_dir": args.output_dir}


def _pipeline(pipe: TuneMV3DPipeline, accelerator: Accelerator, interactive, modulation) -> TuneMV3DPipeline:
    """The pipeline with the (unwrapped) modules being trained."""
    components = dict(pipe.components, interactive=accelerator.unwrap_model(interactive), modulation=accelerator.unwrap_model(modulation))
    out = TuneMV3DPipeline(**components)
    out.set_progress_bar_config(disable=True)
    return out


if __name__ == "__main__":
    main(parse_args())

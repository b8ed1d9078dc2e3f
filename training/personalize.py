"""Personalize an EG3D prior to one person: photos (or an EG3D dataset) in, identity adapter out.

    accelerate launch training/personalize.py --data_dir photos/ --output_dir my-adapter        # or plain `python`
    accelerate launch training/personalize.py --data_dir photos/ --output_dir my-adapter --resume_from_checkpoint latest

``--data_dir`` is an EG3D dataset (square crops + ``dataset.json`` with 25-value camera labels) or a folder of plain
photos (faces are detected, FFHQ-aligned and given a camera from the head pose; crops and labels are written to
``<output_dir>/preprocessed/``). Every image is projected into W of the prior (cached), then a My3DGen identity
adapter is trained on the (anchor, image) pairs. ``--batch_size`` is the global batch: any number of processes gives
the same result. Outputs: ``pytorch_lora_weights.safetensors``, ``anchors.safetensors``, ``training_summary.json``,
``samples.png`` and ``validation/``. The logic lives in ``my3dgen_hf.personalization``; see docs/personalization.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from my3dgen_hf.lora.loader import AdapterError
from my3dgen_hf.personalization import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_PROJECTION_STEPS,
    DEFAULT_STEPS,
    PersonalizationError,
    ProjectorSettings,
    check_output_dir,
    is_eg3d_dataset,
    load_eg3d_dataset,
    load_training_data,
    make_accelerator,
    personalize,
    project_to_w,
)

DEFAULT_BASE_MODEL = "my3dgen-hf/demo-synthheads"


def default_cache_dir() -> Path:
    root = os.environ.get("MY3DGEN_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "my3dgen_hf")
    return Path(root) / "projections"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default=DEFAULT_BASE_MODEL, help="the prior: a shipped name, a local pipeline folder or a Hub id")
    p.add_argument("--revision", default=None, help="Hub revision of --base_model")
    p.add_argument("--data_dir", type=Path, required=True, help="an EG3D dataset folder or a folder of photos of one person")
    p.add_argument("--output_dir", type=Path, default=Path("personalized"))
    p.add_argument("--adapter_name", default="identity")
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, i.e. scaling 1)")
    p.add_argument("--decomposition", choices=["im2col", "my3dgen", "loralib"], default="im2col",
                   help="conv LoRA factorization; 'my3dgen' reproduces the paper's parameter counts")
    p.add_argument("--train_extras", action=argparse.BooleanOptionalAction, default=True,
                   help="also tune biases, noise strengths and b4.const (the paper's 'extras')")
    p.add_argument("--full_finetune", action="store_true", help="the paper's baseline: all generator weights but the mapping network")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps")
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="global batch (split over the processes)")
    p.add_argument("--num_images", type=int, default=50, help="use at most this many training images")
    p.add_argument("--perceptual", default="auto", help="auto (LPIPS when its weights are found, else 1 - MS-SSIM), lpips-alex, lpips-vgg, dists, ms-ssim")
    p.add_argument("--perceptual_weight", type=float, default=1.0, help="weight of the perceptual terms (the paper: 1; 0 = L2 only)")
    p.add_argument("--projection_steps", type=int, default=DEFAULT_PROJECTION_STEPS, help="W projection steps per image")
    p.add_argument("--projection_lr", type=float, default=ProjectorSettings.initial_learning_rate,
                   help="peak learning rate of the W projection (the original's 0.01; 0.1 converges in far fewer steps)")
    p.add_argument("--projection_mse_weight", type=float, default=ProjectorSettings.mse_weight,
                   help="weight of a pixel L2 term next to the perceptual loss in the projection (the original: 0)")
    p.add_argument("--projection_batch_size", type=int, default=4)
    p.add_argument("--projection_cache_dir", type=Path, default=None, help=f"default: {default_cache_dir()}")
    p.add_argument("--no_projection_cache", action="store_true")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--checkpointing_steps", type=int, default=100)
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-N folder")
    p.add_argument("--validation_steps", type=int, default=100, help="render the novel-view grid every N steps (0: only at the end)")
    p.add_argument("--report_to", default=None, help="e.g. tensorboard")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id", default=None)
    p.add_argument("--hub_token", default=None)
    p.add_argument("--hub_private", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=None,
                   help="torch CPU threads per process (default on CPU: half the cores per process, at least 1; small "
                        "models run faster on few threads, and far faster than on oversubscribed ones)")
    return p.parse_args(argv)


def load_base_model(name: str, revision=None):
    from my3dgen_hf import EG3DPipeline

    path = Path(name)
    if path.exists() and (not path.is_dir() or not (path / "model_index.json").is_file()):
        raise PersonalizationError(f"--base_model {name} is not a pipeline folder (no model_index.json); pass a folder saved with pipe.save_pretrained or a Hub id")
    try:
        return EG3DPipeline.from_pretrained(name, revision=revision)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise PersonalizationError(f"cannot load --base_model {name}: {e}") from e


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        raise PersonalizationError("--push_to_hub needs --hub_model_id user/name")
    if args.push_to_hub and args.full_finetune:
        raise PersonalizationError("--push_to_hub uploads identity adapters; a --full_finetune run writes a whole pipeline (finetuned_pipeline/): upload it yourself")
    if args.num_images < 1:
        raise PersonalizationError(f"--num_images must be at least 1, got {args.num_images}")
    if not args.data_dir.is_dir():
        raise PersonalizationError(f"--data_dir {args.data_dir} does not exist or is not a folder")

    accelerator = make_accelerator(args.mixed_precision, args.report_to, args.output_dir)
    main_process = accelerator.is_main_process
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    elif accelerator.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // (2 * accelerator.num_processes)))
    if main_process:
        check_output_dir(args.output_dir)
    pipe = load_base_model(args.base_model, args.revision).to(accelerator.device)
    G = pipe.generator
    if args.report_to:
        accelerator.init_trackers("personalize", config={k: str(v) for k, v in vars(args).items()})

    # ---- data: the main process preprocesses plain photos; the others read its crops back
    preprocessed = args.output_dir / "preprocessed"
    if is_eg3d_dataset(args.data_dir):
        images, labels, names = load_eg3d_dataset(args.data_dir, G.img_resolution, args.num_images)
    else:
        if main_process:
            images, labels, names = load_training_data(args.data_dir, G.img_resolution, args.num_images, preprocessed, progress=True, log=accelerator.print)
        accelerator.wait_for_everyone()
        if not main_process:
            images, labels, names = load_eg3d_dataset(preprocessed, G.img_resolution, args.num_images)
    accelerator.print(f"{len(images)} training images at {G.img_resolution} px")

    # ---- anchors (cached per image)
    cache = None if args.no_projection_cache else (args.projection_cache_dir or default_cache_dir())
    anchors = project_to_w(
        pipe, images, labels, steps=args.projection_steps, cache_dir=cache, progress=main_process,
        batch_size=args.projection_batch_size, accelerator=accelerator, perceptual=args.perceptual,
        initial_learning_rate=args.projection_lr, mse_weight=args.projection_mse_weight,
    )

    # ---- tuning
    lora_kwargs = {"decomposition": args.decomposition, "train_extras": args.train_extras}
    result = personalize(
        pipe, images, labels, anchors, adapter_name=args.adapter_name, rank=args.rank, alpha=args.alpha, steps=args.steps,
        lr=args.lr, batch_size=args.batch_size, full_finetune=args.full_finetune, output_dir=args.output_dir, seed=args.seed,
        perceptual=args.perceptual, perceptual_weight=args.perceptual_weight, lora_kwargs=lora_kwargs, checkpointing_steps=args.checkpointing_steps or None,
        checkpoints_total_limit=args.checkpoints_total_limit, resume_from_checkpoint=args.resume_from_checkpoint,
        validation_steps=args.validation_steps or None, accelerator=accelerator, progress=main_process, names=names,
        base_model=str(args.base_model), log=accelerator.print,
        extra_summary={
            "data_dir": str(args.data_dir),
            "projection": {"steps": args.projection_steps, "lr": args.projection_lr, "mse_weight": args.projection_mse_weight, "cache_dir": str(cache) if cache else None},
            "torch_threads": torch.get_num_threads(),
        },
    )
    if main_process:
        s = result.summary
        accelerator.print(
            f"done: {s['steps']} steps in {s['wall_time_s']:.0f} s, final loss {s['final_loss']:.4f} "
            f"(perceptual: {s['perceptual_loss']['kind']}), {s['trainable_parameters']:,} trainable parameters -> {args.output_dir}"
        )
        if args.push_to_hub:
            from my3dgen_hf.hub import push_adapter_to_hub

            url = push_adapter_to_hub(args.output_dir, args.hub_model_id, private=args.hub_private, token=args.hub_token, base_model=str(args.base_model))
            accelerator.print(f"pushed to {url}")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (PersonalizationError, AdapterError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

#!/usr/bin/env python
"""Train a tiny Stable-Diffusion-layout text-to-image model on single SynthObjects views and their captions.

    python training/train_synthobjects_t2i.py --output_dir outputs/synthobjects-t2i \\
        --clip_model_path outputs/synthobjects-clip/model
    # or: accelerate launch training/train_synthobjects_t2i.py ... ; resume: --resume_from_checkpoint latest

The result (``<output_dir>/model``, written atomically) is a ``StableDiffusionPipeline`` folder (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``): ``StableDiffusionPipeline.from_pretrained(
folder, safety_checker=None, requires_safety_checker=False)`` samples from it with no custom code, and
``TuneMV3DPipeline.from_pretrained(folder)`` builds TuneMV3D on it as its frozen 2D base.

Components (all diffusers / transformers classes):

* VAE: ``AutoencoderKL`` (``--vae_block_out_channels`` 16 32 64: 4x down-sampling, 4 latent channels; 32 px
  images -> 8 x 8 latents). Stage 1 (``--vae_steps``): L1 + L2 reconstruction + ``--kl_weight`` x KL (means over
  elements). Its ``scaling_factor`` is then set to 1 / std of the latents of a fixed image batch, as Stable
  Diffusion's 0.18215 was. ``--pretrained_vae_path`` loads a trained VAE instead and skips stage 1.
* Text encoder: ``CLIPTextModel``. With ``--clip_model_path`` (a CLIP from ``train_synthobjects_clip.py``) it is
  that CLIP's text tower with its tokenizer, frozen: its embeddings were trained to tell the captions' attributes
  apart, which is what the UNet needs to condition on (Stable Diffusion's recipe). Without it, a fresh small
  ``CLIPTextModel`` is trained jointly with the UNet by the denoising loss (the LDM paper's text-to-image recipe);
  a frozen random encoder would give captions no learned meaning. ``--text_encoder_mode`` overrides either default.
* Tokenizer: the CLIP's, else ``my3dgen_hf/synthetic/clip_tokenizer.py`` (OpenAI CLIP's BPE when found, else
  learned on the SynthObjects captions), ``--max_text_length`` tokens (prompts are padded to it, as in SD).
* UNet: ``UNet2DConditionModel`` (``--unet_block_out_channels`` 32 64 64, cross-attention width = the text
  encoder's), trained in stage 2 (``--max_train_steps`` steps) with the epsilon objective on the DDPM linear beta
  schedule (1e-4 .. 0.02, which leaves no signal at t = T), min-SNR-gamma weighting (``--snr_gamma``), captions
  replaced by the empty prompt with probability ``--proportion_empty_prompts`` (10%, for classifier-free guidance)
  and an EMA of the weights (saved; ``--no_ema`` to keep the raw ones).
* Scheduler: ``DDIMScheduler`` with the training betas ("trailing" timesteps: sampling starts at t = T).

Data: the sliding-window SynthObjects stream of ``train_synthobjects_clip.py`` (world ``--data_seed`` 1, category
``--category``, random views rendered on the fly, ``--resolution`` px on white). Steps are counted across the
stages: ``checkpoint-<step>`` with step <= ``--vae_steps`` is in stage 1. Validation every ``--validation_steps``:
VAE reconstructions (PSNR) in stage 1, samples for held-out captions in stage 2 (``validation/step-<step>.png``:
each sample beside the held-out object's render), with their CLIP R-precision when a CLIP is given
(``--validation_clip_path``, default ``--clip_model_path``); metrics go to ``<output_dir>/validation.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_synthobjects_clip import (
    DEFAULT_EVAL_OFFSET,
    ELEVATION_RANGE,
    SynthObjectsStream,
    _elevation,
    _jsonable_args,
    append_jsonl,
    atomic_save,
    caption_corpus,
    eval_set,
    log_validation,
    lr_lambda,
    parameter_groups,
    resume,
    save_checkpoint,
    setup_run,
    to_unit,
)

from my3dgen_hf.synthetic.clip_tokenizer import build_clip_tokenizer

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--output_dir", default="outputs/synthobjects-t2i")
    a("--model_dir", default=None, help="where the final pipeline goes (default <output_dir>/model)")
    a("--seed", type=int, default=0)
    a("--num_threads", type=int, default=1, help="torch CPU threads (1 is fastest for models this small)")
    # data
    a("--data_seed", type=int, default=1, help="SynthObjects world seed")
    a("--category", choices=("chair", "table", "mixed"), default="mixed")
    a("--resolution", type=int, default=32)
    a("--supersample", type=int, default=2)
    a("--elevation_range", type=_elevation, default=ELEVATION_RANGE, help="camera elevation LO,HI in degrees")
    a("--pool_size", type=int, default=4096, help="objects in the sliding window")
    a("--pool_refresh", type=int, default=4, help="objects entering the window per step")
    a("--views_per_object", type=int, default=2)
    # text
    a("--clip_model_path", default=None, help="a CLIP folder (train_synthobjects_clip.py): its text tower and tokenizer")
    a("--text_encoder_mode", choices=("auto", "frozen", "train"), default="auto",
      help="auto: frozen with --clip_model_path, else a fresh encoder trained jointly")
    a("--tokenizer_source", choices=("auto", "clip", "corpus"), default="auto", help="without --clip_model_path")
    a("--bpe_path", default=None)
    a("--max_text_length", type=int, default=32)
    a("--text_hidden_size", type=int, default=128, help="fresh text encoder only")
    a("--text_layers", type=int, default=3, help="fresh text encoder only")
    a("--text_heads", type=int, default=4, help="fresh text encoder only")
    # VAE
    a("--pretrained_vae_path", default=None, help="an AutoencoderKL folder (or a pipeline folder with vae/): skips stage 1")
    a("--vae_block_out_channels", type=int, nargs="+", default=[16, 32, 64])
    a("--vae_layers_per_block", type=int, default=1)
    a("--vae_norm_num_groups", type=int, default=8)
    a("--latent_channels", type=int, default=4)
    a("--vae_steps", type=int, default=1200)
    a("--vae_batch_size", type=int, default=32)
    a("--vae_learning_rate", type=float, default=5e-4)
    a("--kl_weight", type=float, default=1e-4)
    a("--scaling_factor_images", type=int, default=256, help="held-out renders whose latent std sets the VAE's scaling factor")
    # UNet
    a("--unet_block_out_channels", type=int, nargs="+", default=[32, 64, 64])
    a("--unet_layers_per_block", type=int, default=1)
    a("--unet_norm_num_groups", type=int, default=8)
    a("--unet_attention_heads", type=int, default=4)
    a("--max_train_steps", type=int, default=9000, help="UNet (stage 2) steps")
    a("--train_batch_size", type=int, default=64)
    a("--learning_rate", type=float, default=5e-4)
    a("--lr_warmup_steps", type=int, default=200)
    a("--min_lr_ratio", type=float, default=0.1)
    a("--snr_gamma", type=float, default=5.0, help="min-SNR-gamma loss weighting (0: plain MSE)")
    a("--proportion_empty_prompts", type=float, default=0.1)
    a("--no_ema", action="store_true")
    a("--ema_decay", type=float, default=0.999)
    a("--num_train_timesteps", type=int, default=1000)
    # optimization
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_weight_decay", type=float, default=1e-2)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=1.0)
    a("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    a("--report_to", default="none")
    a("--logging_dir", default="logs")
    a("--log_steps", type=int, default=50)
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=2)
    a("--resume_from_checkpoint", default=None, help='a checkpoint folder or "latest"')
    # validation
    a("--validation_steps", type=int, default=1000)
    a("--validation_prompts", type=int, default=32, help="held-out objects whose captions are sampled")
    a("--validation_grid", type=int, default=8, help="of them, shown in the validation image")
    a("--validation_num_inference_steps", type=int, default=25)
    a("--validation_guidance_scale", type=float, default=3.0)
    a("--validation_clip_path", default=None, help="CLIP for the R-precision of the samples (default --clip_model_path)")
    a("--eval_offset", type=int, default=DEFAULT_EVAL_OFFSET)
    args = p.parse_args(argv)
    if args.pretrained_vae_path:
        args.vae_steps = 0
    if args.vae_steps < 0 or args.max_train_steps < 0:
        p.error("--vae_steps and --max_train_steps must be >= 0")
    return args


# ------------------------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------------------------


def build_text(args):
    """(text_encoder, tokenizer, trainable)."""
    from transformers import CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    mode = args.text_encoder_mode
    if args.clip_model_path:
        clip = CLIPModel.from_pretrained(args.clip_model_path)
        tokenizer = CLIPTokenizer.from_pretrained(args.clip_model_path)
        text_encoder = CLIPTextModel(clip.config.text_config)
        # transformers 5: CLIPModel.text_model is a CLIPTextModel; 4.x: both wrap a CLIPTextTransformer `.text_model`
        getattr(text_encoder, "text_model", text_encoder).load_state_dict(clip.text_model.state_dict())
        tokenizer.vocab_source = "clip-model"
        return text_encoder, tokenizer, mode == "train"
    corpus = caption_corpus() if args.tokenizer_source != "clip" else None
    tokenizer = build_clip_tokenizer(None, args.tokenizer_source, args.bpe_path, corpus, args.max_text_length)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=args.text_hidden_size, intermediate_size=4 * args.text_hidden_size,
            num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads, max_position_embeddings=args.max_text_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    return text_encoder, tokenizer, mode != "frozen"


def build_vae(args):
    from diffusers import AutoencoderKL

    if args.pretrained_vae_path:
        path = Path(args.pretrained_vae_path)
        return AutoencoderKL.from_pretrained(path / "vae" if (path / "vae" / "config.json").is_file() else path)
    n = len(args.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(args.vae_block_out_channels), layers_per_block=args.vae_layers_per_block, latent_channels=args.latent_channels,
        norm_num_groups=args.vae_norm_num_groups, sample_size=args.resolution,
    )


def build_unet(args, latent_channels: int, latent_size: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    n = len(args.unet_block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=tuple(args.unet_block_out_channels), layers_per_block=args.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim, attention_head_dim=args.unet_attention_heads, norm_num_groups=args.unet_norm_num_groups,
    )


def scheduler_config(args) -> dict:
    return {"num_train_timesteps": args.num_train_timesteps, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon"}


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return to_unit(images) * 2 - 1


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, seed: int = 0) -> float:
    """Std of posterior samples of images [B, 3, H, W] in [-1, 1] (the VAE's scaling factor is its inverse)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([vae.encode(images[i : i + 64]).latent_dist.sample(g) for i in range(0, len(images), 64)])
    return float(z.std())


def kl_mean(dist) -> torch.Tensor:
    return 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    return torch.clamp(snr, max=gamma) / snr  # epsilon prediction


def grid_image(rows: list[list[np.ndarray]]) -> PIL.Image.Image:
    """uint8 [H, W, 3] tiles, one list per row (equal lengths) -> one image."""
    return PIL.Image.fromarray(np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0))


class VAETrainer(torch.nn.Module):
    """The VAE's training forward (what accelerate wraps, so distributed runs synchronize its gradients):
    images [B, 3, H, W] in [-1, 1] -> (reconstructions, mean KL)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        dist = self.vae.encode(x).latent_dist
        return self.vae.decode(dist.sample(generator)).sample, kl_mean(dist)


class LatentCache:
    """Posterior (mean, std) of every (object, view) of the stream, encoded once by the frozen VAE."""

    def __init__(self):
        self.store: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def sample(self, vae, images: np.ndarray, keys: list[tuple[int, int]], generator: torch.Generator, window: range) -> torch.Tensor:
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            dist = vae.encode(to_signed(images[missing]).to(vae.device)).latent_dist
            for j, i in enumerate(missing):
                self.store[keys[i]] = (dist.mean[j].cpu(), dist.std[j].cpu())
        if len(self.store) > 4 * len(window):
            self.store = {k: v for k, v in self.store.items() if k[0] in window}
        mean = torch.stack([self.store[k][0] for k in keys])
        std = torch.stack([self.store[k][1] for k in keys])
        return mean + std * torch.randn(mean.shape, generator=generator)


# ------------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    """Train; returns {"first_step", "global_step", "losses", "validation", "model_dir", "seconds_per_step": {stage: s}}."""
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionPipeline,
    )
    from diffusers.training_utils import EMAModel

    accelerator, out, model_dir = setup_run(args)
    if accelerator.is_main_process:
        (out / "validation").mkdir(parents=True, exist_ok=True)

    # ---- components
    text_encoder, tokenizer, train_text = build_text(args)
    vae = build_vae(args)
    if args.resolution % vae_scale_factor(vae):
        raise ValueError(f"--resolution {args.resolution} is not a multiple of the VAE's factor {vae_scale_factor(vae)}")
    latent_size = args.resolution // vae_scale_factor(vae)
    unet = build_unet(args, vae.config.latent_channels, latent_size, text_encoder.config.hidden_size)
    noise_scheduler = DDPMScheduler(**scheduler_config(args))
    text_encoder.requires_grad_(train_text)
    text_encoder.train(train_text)
    accelerator.print(
        f"tokenizer {tokenizer.vocab_source} ({len(tokenizer)} tokens), text encoder {'trained' if train_text else 'frozen'} "
        f"({sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M), VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M "
        f"({args.resolution} px -> {latent_size}^2 x {vae.config.latent_channels}), UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M"
    )

    train_vae = args.vae_steps > 0
    vae.requires_grad_(train_vae)
    unet_params = [*parameter_groups(unet, args.adam_weight_decay)] + (parameter_groups(text_encoder, args.adam_weight_decay) if train_text else [])
    opt_kwargs = {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    unet_opt = torch.optim.AdamW(unet_params, lr=args.learning_rate, **opt_kwargs)
    unet_sched = torch.optim.lr_scheduler.LambdaLR(unet_opt, lr_lambda(args.lr_warmup_steps, args.max_train_steps, args.min_lr_ratio))
    prepared = [unet, unet_opt, unet_sched]
    if train_text:
        prepared.append(text_encoder)
    if train_vae:
        vae_opt = torch.optim.AdamW(parameter_groups(vae, 0.0), lr=args.vae_learning_rate, **opt_kwargs)
        vae_sched = torch.optim.lr_scheduler.LambdaLR(vae_opt, lr_lambda(min(100, args.vae_steps // 10), args.vae_steps, 0.1))
        prepared += [VAETrainer(vae), vae_opt, vae_sched]
    prepared = accelerator.prepare(*prepared)
    unet, unet_opt, unet_sched = prepared[:3]
    if train_text:
        text_encoder = prepared[3]
    if train_vae:
        vae_trainer, vae_opt, vae_sched = prepared[-3:]
        vae.to(accelerator.device)
    else:
        vae.to(accelerator.device).eval()
    if not train_text:
        text_encoder.to(accelerator.device).eval()
    emas = {}
    if not args.no_ema:
        emas["unet"] = EMAModel(accelerator.unwrap_model(unet).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
        if train_text:
            emas["text_encoder"] = EMAModel(accelerator.unwrap_model(text_encoder).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
        for ema in emas.values():
            accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("synthobjects-t2i", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # ---- data
    stream = SynthObjectsStream(
        args.data_seed, args.category, args.resolution, args.supersample, args.pool_size, args.pool_refresh, args.views_per_object,
        args.elevation_range, sample_seed=args.seed,
    )
    total_steps = args.vae_steps + args.max_train_steps
    if stream.last_object_id(total_steps) >= args.eval_offset:
        raise ValueError(f"the training stream reaches object {stream.last_object_id(total_steps)}, past --eval_offset {args.eval_offset}")
    n_val = max(args.validation_prompts, args.validation_grid)
    val_images, val_captions = eval_set(args.data_seed, args.category, n_val, 1, args.resolution, args.supersample, args.elevation_range, args.eval_offset)
    val_images = val_images[:, 0]
    clip_path = args.validation_clip_path or args.clip_model_path
    r_precision = None
    if clip_path:
        from my3dgen_hf.metrics.clip_rprecision import CLIPRPrecision

        r_precision = CLIPRPrecision(clip_path)
        reference = r_precision([im[None] for im in val_images], val_captions)
        accelerator.print(f"CLIP R-precision of the held-out renders themselves: {reference.r_precision:.3f}")

    # ---- resume
    global_step = first_step = resume(accelerator, out, args.resume_from_checkpoint)

    def unwrap(m):
        return accelerator.unwrap_model(m)

    def finish_vae() -> float:
        """Freeze the VAE and set its scaling factor from a fixed batch (deterministic: the same after a resume)."""
        v = vae
        v.requires_grad_(False).eval()
        fixed = eval_set(args.data_seed, args.category, args.scaling_factor_images, 1, args.resolution, args.supersample, args.elevation_range, args.eval_offset + 500_000)[0][:, 0]
        std = latent_std(v, to_signed(fixed).to(accelerator.device), args.seed)
        v.register_to_config(scaling_factor=1.0 / std)
        accelerator.print(f"VAE scaling factor 1/{std:.4f} = {1 / std:.4f}")
        return v.config.scaling_factor

    def pipeline(use_ema: bool = True) -> StableDiffusionPipeline:
        u = copy.deepcopy(unwrap(unet))  # copies: the training modules keep their mode and weights
        te = copy.deepcopy(unwrap(text_encoder)) if train_text else text_encoder
        if use_ema and "unet" in emas:
            emas["unet"].copy_to(u.parameters())
        if use_ema and "text_encoder" in emas:
            emas["text_encoder"].copy_to(te.parameters())
        sched = DDIMScheduler(**scheduler_config(args), clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=te.eval(), tokenizer=tokenizer, unet=u.eval(), scheduler=sched, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate_vae(step: int) -> dict:
        v = vae
        v.eval()
        with torch.no_grad():
            x = to_signed(val_images).to(accelerator.device)
            rec = v(x, sample_posterior=False).sample
        v.train(train_vae and step < args.vae_steps)
        metrics = {"step": step, "stage": "vae", "psnr": psnr(rec.cpu(), x.cpu())}
        k = args.validation_grid
        rec_u8 = ((rec[:k].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        grid_image([list(val_images[:k]), list(rec_u8)]).save(out / "validation" / f"vae-step-{step:06d}.png")
        return metrics

    def validate_unet(step: int) -> dict:
        pipe = pipeline()
        generator = torch.Generator().manual_seed(args.seed)
        images = pipe(
            val_captions, num_inference_steps=args.validation_num_inference_steps, guidance_scale=args.validation_guidance_scale,
            generator=generator, output_type="np", height=args.resolution, width=args.resolution,
        ).images
        u8 = (images * 255).round().astype(np.uint8)
        k = args.validation_grid
        grid_image([list(val_images[:k]), list(u8[:k])]).save(out / "validation" / f"step-{step:06d}.png")
        # a cheap sanity check without a CLIP: samples of objects on white are as bright as the renders
        metrics = {"step": step, "stage": "unet", "guidance_scale": args.validation_guidance_scale,
                   "mean_intensity": float(u8.mean() / 255), "mean_intensity_renders": float(val_images.mean() / 255)}
        if r_precision is not None:
            metrics["clip_r_precision"] = r_precision([im[None] for im in u8], val_captions).r_precision
        return metrics

    def validate(step: int) -> dict:
        metrics = validate_vae(step) if step <= args.vae_steps and train_vae else validate_unet(step)
        return log_validation(accelerator, out, metrics, step)

    # ---- train
    if global_step >= args.vae_steps:
        if train_vae:
            finish_vae()
        elif not args.pretrained_vae_path:
            raise ValueError("--vae_steps 0 needs --pretrained_vae_path")
    t_fill = time.perf_counter()
    stream.advance_to(global_step)  # render the window (not counted in the step times)
    accelerator.print(f"rendered {stream.pool_size} objects x {stream.views_per_object} views in {time.perf_counter() - t_fill:.1f}s")
    text_cache: dict[str, torch.Tensor] = {}
    latents = LatentCache()
    generator = torch.Generator()
    losses, step_times, last_val = [], {"vae": [], "unet": []}, None
    t_start = time.perf_counter()
    while global_step < total_steps:
        t0 = time.perf_counter()
        stage = "vae" if global_step < args.vae_steps else "unet"
        generator.manual_seed(args.seed * 1_000_003 + global_step * 31 + accelerator.process_index)
        if stage == "vae":
            batch = stream.sample(global_step, args.vae_batch_size, accelerator.process_index)
            x = to_signed(batch[0]).to(accelerator.device)
            with accelerator.autocast():
                rec, l_kl = vae_trainer(x, generator)
                l_rec = F.l1_loss(rec.float(), x) + F.mse_loss(rec.float(), x)
                loss = l_rec + args.kl_weight * l_kl
            accelerator.backward(loss)
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(vae_trainer.parameters(), args.max_grad_norm)
            vae_opt.step()
            vae_sched.step()
            vae_opt.zero_grad(set_to_none=True)
            logs = {"loss": loss.item(), "rec": l_rec.item(), "kl": l_kl.item(), "lr": vae_sched.get_last_lr()[0]}
        else:
            images, captions, ids, views = stream.sample(global_step, args.train_batch_size, accelerator.process_index, return_views=True)
            z0 = latents.sample(vae, images, list(zip(ids.tolist(), views.tolist())), generator, stream.window(global_step))
            z0 = (z0 * vae.config.scaling_factor).to(accelerator.device)
            drop = torch.rand(len(captions), generator=generator) < args.proportion_empty_prompts
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            if train_text:
                ids_t = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
                text = text_encoder(ids_t.to(accelerator.device), return_dict=False)[0]
            else:
                missing = [c for c in dict.fromkeys(captions) if c not in text_cache]
                if missing:
                    ids_t = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
                    with torch.no_grad():
                        enc = text_encoder(ids_t.to(accelerator.device), return_dict=False)[0]
                    if len(text_cache) > 4 * args.pool_size:
                        text_cache.clear()
                    text_cache.update(zip(missing, enc))
                text = torch.stack([text_cache[c] for c in captions])
            noise = torch.randn(z0.shape, generator=generator).to(accelerator.device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(z0),), generator=generator).to(accelerator.device)
            z_t = noise_scheduler.add_noise(z0, noise, t)
            with accelerator.autocast():
                pred = unet(z_t, t, text, return_dict=False)[0]
            err = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
            weights = min_snr_weights(noise_scheduler, t.cpu(), args.snr_gamma).to(err.device) if args.snr_gamma else torch.ones_like(err)
            loss = (err * weights).mean()
            accelerator.backward(loss)
            if args.max_grad_norm:
                params = [*unet.parameters(), *(text_encoder.parameters() if train_text else [])]
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            unet_opt.step()
            unet_sched.step()
            unet_opt.zero_grad(set_to_none=True)
            if "unet" in emas:
                emas["unet"].step(unwrap(unet).parameters())
            if "text_encoder" in emas:
                emas["text_encoder"].step(unwrap(text_encoder).parameters())
            logs = {"loss": loss.item(), "mse": err.mean().item(), "lr": unet_sched.get_last_lr()[0]}
        global_step += 1
        step_times[stage].append(time.perf_counter() - t0)
        losses.append(logs["loss"])
        accelerator.log({f"{stage}/{k}": v for k, v in logs.items()}, step=global_step)
        if accelerator.is_main_process and (global_step % args.log_steps == 0 or global_step in (args.vae_steps, total_steps)):
            window = step_times[stage][-args.log_steps :]
            record = {"step": global_step, "stage": stage, **{k: float(f"{v:.5g}") for k, v in logs.items()},
                      "s_per_step": round(sum(window) / max(1, len(window)), 4), "render_s": round(stream.render_seconds, 1),
                      "elapsed_s": round(time.perf_counter() - t_start, 1)}
            append_jsonl(out / "train_log.jsonl", record)
            accelerator.print(json.dumps(record))
        if train_vae and global_step == args.vae_steps:
            if accelerator.is_main_process:
                last_val = validate(global_step)  # the final reconstructions
            finish_vae()
        if accelerator.is_main_process and args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, out, global_step, args.checkpoints_total_limit)
        if accelerator.is_main_process and args.validation_steps and global_step % args.validation_steps == 0 and global_step != args.vae_steps:
            last_val = validate(global_step)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.max_train_steps > 0 and (last_val is None or last_val["step"] != global_step or last_val["stage"] != "unet"):
            last_val = validate(global_step)
        final = pipeline()

        def write(folder: Path) -> None:
            final.save_pretrained(folder)
            from my3dgen_hf.synthetic.clip_tokenizer import (
                tokenizer_bpe,
                write_clip_tokenizer_files,
            )

            write_clip_tokenizer_files(folder / "tokenizer", *tokenizer_bpe(tokenizer))  # for older transformers too
            (folder / "eval.json").write_text(json.dumps({"validation": last_val, "args": _jsonable_args(args), "steps": global_step}, indent=2))
            (folder / "README.md").write_text(_model_card(args, last_val, final, global_step))

        atomic_save(model_dir, write)
        accelerator.print(f"saved {model_dir}")
    accelerator.end_training()
    return {"first_step": first_step, "global_step": global_step, "losses": losses, "validation": last_val, "model_dir": str(model_dir),
            "seconds_per_step": {k: float(np.mean(v)) for k, v in step_times.items() if v}}


def _model_card(args, metrics: dict | None, pipe, steps: int) -> str:
    m = metrics or {}
    trained = args.text_encoder_mode == "train" or (args.text_encoder_mode == "auto" and not args.clip_model_path)
    text = (f"the text tower of the SynthObjects CLIP `{Path(args.clip_model_path).name}`" if args.clip_model_path else "a small CLIPTextModel")
    text += ", trained jointly with the UNet" if trained else ", frozen"
    return f"""---
library_name: diffusers
pipeline_tag: text-to-image
tags: [stable-diffusion-layout, synthobjects, my3dgen-hf]
---
# SynthObjects text-to-image base

A tiny text-to-image model in the Stable Diffusion layout, trained by `training/train_synthobjects_t2i.py` of
my3dgen-hf on single views of SynthObjects (procedural chairs and tables on white) and their captions; TuneMV3D's
frozen 2D base for that world. It knows nothing outside SynthObjects.

- {args.resolution} px images, VAE `AutoencoderKL` {tuple(args.vae_block_out_channels)} -> {pipe.unet.config.sample_size}^2 x {pipe.vae.config.latent_channels} latents (scaling factor {pipe.vae.config.scaling_factor:.4f})
- UNet `UNet2DConditionModel` {tuple(args.unet_block_out_channels)}, text encoder: {text}
- {args.vae_steps} VAE steps, {steps - args.vae_steps} UNet steps (batch {args.train_batch_size}, {int(args.proportion_empty_prompts * 100)}% empty captions, EMA {not args.no_ema}); world seed {args.data_seed}, category {args.category}
- last validation: {json.dumps(m)}

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
image = pipe("a red chair with four thin black legs and a high solid back", guidance_scale={args.validation_guidance_scale}, num_inference_steps=25).images[0]
```
"""


if __name__ == "__main__":
    main()

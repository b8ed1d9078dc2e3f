"""Tiny random TuneMV3D / Stable Diffusion components built offline (seconds on a 2-core CPU).

UNet (8, 16) channels on 8x8 latents, a 2-level VAE (16 px images), a 2-layer CLIP text encoder of width 16 and a
byte-level CLIP tokenizer written to a temporary folder (no merges: one token per byte).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.tunemv3d import TuneMV3DInteractiveModel, TuneMV3DModulationModel

TEXT_DIM = 16
MAX_TOKENS = 16

# The interactive module at test size: one E block of 8 channels, an 8-feature field, 8 + 8 ray samples.
TINY_INTERACTIVE = dict(
    encoder_channels=8, encoder_layers=1, attention_head_dim=4, norm_num_groups=2, feature_channels=4, time_embed_dim=16,
    field_hidden_dim=16, field_blocks=2, num_samples=8, num_importance=8, up_sample_steps=2,
)


def tiny_tokenizer(folder: str | Path | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes (vocab: 256 bytes, 256 end-of-word bytes, BOS 512, EOS/PAD 513)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-clip-tok-"))
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 2 * len(chars), "<|endoftext|>": 2 * len(chars) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)


def tiny_sd_components(seed: int = 0, vae: bool = True) -> dict:
    """unet, vae (or None: pixel space), text_encoder, tokenizer, scheduler (DDIM)."""
    torch.manual_seed(seed)
    channels = 4 if vae else 3
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=channels, out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=4,
    )
    autoencoder = None
    if vae:
        autoencoder = AutoencoderKL(
            block_out_channels=(4, 8), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2, sample_size=16,
        )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=TEXT_DIM, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=2, vocab_size=514, max_position_embeddings=MAX_TOKENS,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return dict(unet=unet.eval(), vae=autoencoder.eval() if vae else None, text_encoder=text_encoder.eval(), tokenizer=tiny_tokenizer(), scheduler=scheduler)


def tiny_modules(unet: UNet2DConditionModel, seed: int = 1, **interactive_overrides):
    torch.manual_seed(seed)
    interactive = TuneMV3DInteractiveModel.from_unet(unet, **{**TINY_INTERACTIVE, **interactive_overrides})
    modulation = TuneMV3DModulationModel.from_unet(unet, xt_encoder_channels=(8,))
    return interactive.eval(), modulation.eval()


def tiny_pipeline(seed: int = 0, vae: bool = True, **interactive_overrides) -> TuneMV3DPipeline:
    parts = tiny_sd_components(seed, vae)
    interactive, modulation = tiny_modules(parts["unet"], seed + 1, **interactive_overrides)
    pipe = TuneMV3DPipeline(interactive=interactive, modulation=modulation, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(**tiny_sd_components(seed), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """A Stable Diffusion folder exactly as ``StableDiffusionPipeline.save_pretrained`` writes it."""
    tiny_sd_pipeline(seed).save_pretrained(path)
    return Path(path)


def randomize_zero_convs(modulation: TuneMV3DModulationModel, std: float = 0.1, seed: int = 0) -> None:
    """Give the zero-initialized output convolutions (and the x_t encoder's) random weights, so the modulation acts."""
    g = torch.Generator().manual_seed(seed)
    convs = [*modulation.controlnet_down_blocks, modulation.controlnet_mid_block, modulation.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * std)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * std)

"""The SynthObjects models that ship inside the package load by name with no network and work: the TuneMV3D demo
(a frozen Stable-Diffusion-layout base + trained interactive and modulation modules) and the SynthObjects CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from my3dgen_hf.assets import ASSETS, resolve_pretrained
from my3dgen_hf.metrics.clip_rprecision import CLIPRPrecision
from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.synthetic.synthobjects import caption, object_cameras, render_views, sample_object
from my3dgen_hf.tunemv3d.evaluation import HELD_OUT_OFFSET

DEMO, CLIP = "my3dgen-hf/demo-synthobjects", "my3dgen-hf/synthobjects-clip"


def test_demo_synthobjects_loads_by_name_and_samples_eight_views():
    from diffusers import StableDiffusionPipeline

    pipe = TuneMV3DPipeline.from_pretrained(DEMO)
    pipe.set_progress_bar_config(disable=True)
    assert Path(resolve_pretrained(DEMO)) == ASSETS / "demo-synthobjects"
    # trained modules: the zero convolutions that start at exactly 0 are not 0 any more
    zero_convs = [p for n, p in pipe.modulation.named_parameters() if "controlnet_down_blocks" in n or "controlnet_mid_block" in n]
    assert zero_convs and all(p.abs().max() > 0 for p in zero_convs)
    out = pipe(caption(sample_object(1, HELD_OUT_OFFSET, "mixed")), num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (8, 3, 32, 32) and out.cameras.shape == (1, 8, 25)
    assert torch.isfinite(out.images).all() and out.images.std() > 0.01
    # the same folder is a Stable Diffusion folder for diffusers' own class: TuneMV3D's frozen base
    sd = StableDiffusionPipeline.from_pretrained(resolve_pretrained(DEMO), safety_checker=None, requires_safety_checker=False)
    assert all(torch.equal(a, b) for a, b in zip(sd.unet.state_dict().values(), pipe.unet.state_dict().values()))


def test_shipped_clip_retrieves_held_out_captions():
    clip = CLIPRPrecision(CLIP)
    objects = [sample_object(1, HELD_OUT_OFFSET + i, "mixed") for i in range(8)]
    views = []
    for i, params in enumerate(objects):
        rgba = render_views(params, object_cameras(1, HELD_OUT_OFFSET + i, 3), 64, 2).astype(np.float32) / 255.0
        views.append(torch.from_numpy(rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]).permute(0, 3, 1, 2))
    result = clip(views, [caption(p) for p in objects], num_candidates=8, seed=0)
    assert result.r_precision >= 0.75  # chance: 1/8


def test_shipped_weights_stay_small():
    sizes = {p.relative_to(ASSETS).parts[0]: 0 for p in ASSETS.rglob("*.safetensors")}
    for p in ASSETS.rglob("*.safetensors"):
        sizes[p.relative_to(ASSETS).parts[0]] += p.stat().st_size
    assert set(sizes) >= {"demo-synthheads", "synthheads-identity-encoder", "demo-synthobjects", "synthobjects-clip"}
    assert sum(sizes.values()) < 30e6, sizes  # the cards give the breakdown

"""TuneMV3DPipeline on tiny random models: the zero-conv no-op, save/load, Stable Diffusion folders, LoRA,
chunking, pixel space, mesh and video export."""

import json

import numpy as np
import pytest
import torch
import trimesh
from peft import LoraConfig

from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline, TuneMV3DPipelineOutput
from my3dgen_hf.tunemv3d import TuneMV3DField, TuneMV3DInteractiveModel, TuneMV3DModulationModel, ring_cameras
from tunemv3d_tiny import randomize_zero_convs, save_tiny_sd, tiny_pipeline, tiny_sd_components, tiny_sd_pipeline

PROMPT = "a red chair"


def _noise(n, channels=4, size=8, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _run(pipe, n=4, **kw):
    kw = {"num_inference_steps": 3, "guidance_scale": 5.0, "output_type": "pt", **kw}
    return pipe(PROMPT, num_views=n, latents=_noise(n), **kw)


# ------------------------------------------------------------------------------------------ zero-conv property
def test_modulation_outputs_zero_residuals_at_init():
    parts = tiny_sd_components()
    modulation = TuneMV3DModulationModel.from_unet(parts["unet"])
    x = torch.randn(2, 4, 8, 8)
    down, mid = modulation.residuals(x, torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 16, 16))
    assert len(down) == 1 + 2 * 1 + 1  # conv_in + layers_per_block per level + one downsampler
    assert all(torch.count_nonzero(r) == 0 for r in (*down, mid))
    # O's encoder is a copy of the UNet's encoder.
    for name in ("conv_in", "down_blocks", "mid_block", "time_embedding"):
        ref = getattr(parts["unet"], name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in getattr(modulation, name).state_dict().items())


def test_pipeline_at_init_equals_stable_diffusion_bit_for_bit():
    pipe, sd = tiny_pipeline(), tiny_sd_pipeline()  # same seed: the same unet, vae, text encoder, tokenizer
    out = _run(pipe)
    ref = sd(PROMPT, num_images_per_prompt=4, latents=_noise(4), num_inference_steps=3, guidance_scale=5.0, output_type="pt").images
    assert isinstance(out, TuneMV3DPipelineOutput) and out.images.shape == (4, 3, 16, 16)
    assert torch.equal(out.images, ref)
    # Also with noise drawn from a generator, two prompts, a negative prompt and without guidance.
    kw = dict(num_inference_steps=2, output_type="np", negative_prompt=["blurry", "dark"])
    for g in (1.0, 4.0):
        a = pipe([PROMPT, "a box"], num_views=3, guidance_scale=g, generator=torch.Generator().manual_seed(1), **kw).images
        b = sd([PROMPT, "a box"], num_images_per_prompt=3, guidance_scale=g, generator=torch.Generator().manual_seed(1), **kw).images
        assert np.abs(a - b).max() <= 1e-6


def test_modulation_changes_the_output_once_trained():
    pipe = tiny_pipeline()
    base = _run(pipe).images
    randomize_zero_convs(pipe.modulation)
    assert (_run(pipe).images - base).abs().max() > 1e-3


def test_pipeline_output_contents():
    pipe = tiny_pipeline()
    out = pipe([PROMPT, "a box"], num_views=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pil")
    assert len(out.images) == 6 and out.images[0].size == (16, 16)
    assert out.cameras.shape == (2, 3, 25) and torch.allclose(out.cameras[0], ring_cameras(3))
    assert out.latents.shape == (2, 3, 4, 8, 8)
    assert isinstance(out.field, TuneMV3DField) and len(out.field) == 2
    assert out.field(torch.zeros(5, 3)).shape == (2, 5) and out.field[1](torch.zeros(5, 3)).shape == (5,)
    # Custom cameras as (cam2world, K), and as [B, n, 25] labels.
    cams = ring_cameras(5, 10.0)
    out = pipe(PROMPT, cameras=(cams[:, :16].reshape(-1, 4, 4), cams[0, 16:].reshape(3, 3)), num_inference_steps=1, output_type="np")
    assert out.images.shape == (5, 16, 16, 3) and torch.allclose(out.cameras[0], cams)
    with pytest.raises(ValueError, match="cameras"):
        pipe(PROMPT, cameras=cams[None].repeat(3, 1, 1), num_inference_steps=1)


def test_view_chunking_gives_the_same_views():
    pipe = tiny_pipeline()
    randomize_zero_convs(pipe.modulation)
    full = _run(pipe).images
    chunked = _run(pipe, view_chunk_size=1, ray_chunk_size=7).images
    assert (full - chunked).abs().max() < 1e-5


def test_pixel_space_pipeline_without_vae(tmp_path):
    pipe = tiny_pipeline(vae=False)
    assert pipe.vae is None and pipe.vae_scale_factor == 1
    out = pipe(PROMPT, num_views=2, num_inference_steps=2, latents=_noise(2, channels=3), output_type="pt")
    assert out.images.shape == (2, 3, 8, 8) and out.latents.shape == (1, 2, 3, 8, 8)
    pipe.save_pretrained(tmp_path / "pix")
    assert json.loads((tmp_path / "pix" / "model_index.json").read_text())["vae"] == [None, None]
    loaded = TuneMV3DPipeline.from_pretrained(tmp_path / "pix")
    loaded.set_progress_bar_config(disable=True)
    again = loaded(PROMPT, num_views=2, num_inference_steps=2, latents=_noise(2, channels=3), output_type="pt")
    assert torch.equal(out.images, again.images)


# ------------------------------------------------------------------------------------------------ save / load
def test_save_load_round_trip(tmp_path):
    pipe = tiny_pipeline()
    randomize_zero_convs(pipe.modulation)
    with torch.no_grad():
        pipe.interactive.background.fill_(0.3)
    ref = _run(pipe)
    pipe.save_pretrained(tmp_path / "tmv3d")
    index = json.loads((tmp_path / "tmv3d" / "model_index.json").read_text())
    assert index["_class_name"] == "TuneMV3DPipeline"
    assert index["interactive"] == ["my3dgen_hf.tunemv3d.interactive", "TuneMV3DInteractiveModel"]
    assert index["modulation"] == ["my3dgen_hf.tunemv3d.modulation", "TuneMV3DModulationModel"]
    loaded = TuneMV3DPipeline.from_pretrained(tmp_path / "tmv3d")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.interactive, TuneMV3DInteractiveModel) and isinstance(loaded.modulation, TuneMV3DModulationModel)
    out = _run(loaded)
    assert torch.equal(out.images, ref.images)
    points = torch.rand(10, 3) - 0.5
    assert torch.equal(out.field(points), ref.field(points))


def test_stable_diffusion_folder_loads_with_fresh_modules(tmp_path):
    sd_path = save_tiny_sd(tmp_path / "sd")
    ref = tiny_sd_pipeline()(PROMPT, num_images_per_prompt=4, latents=_noise(4), num_inference_steps=3, guidance_scale=5.0, output_type="pt").images
    for load in (TuneMV3DPipeline.from_pretrained, TuneMV3DPipeline.from_pretrained_base):
        torch.manual_seed(0)
        pipe = load(sd_path, interactive_kwargs=dict(encoder_channels=8, norm_num_groups=2, attention_head_dim=4, num_samples=8, num_importance=8, omega=2.0))
        pipe.set_progress_bar_config(disable=True)
        assert pipe.interactive.config.omega == 2.0 and pipe.interactive.config.cross_attention_dim == 16
        assert torch.equal(_run(pipe).images, ref)  # fresh modules: still the 2D model
    # The TuneMV3D pipeline saved from it loads through the full path.
    pipe.save_pretrained(tmp_path / "tmv3d")
    assert torch.equal(_run(TuneMV3DPipeline.from_pretrained(tmp_path / "tmv3d")).images, ref)


# ------------------------------------------------------------------------------------------------------ LoRA
def test_lora_on_all_components_round_trip(tmp_path):
    pipe = tiny_pipeline()
    randomize_zero_convs(pipe.modulation)
    base = _run(pipe).images
    torch.manual_seed(3)
    cfg = dict(r=2, lora_alpha=4, init_lora_weights=False)
    pipe.unet.add_adapter(LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out.0"], **cfg), adapter_name="style")
    pipe.text_encoder.add_adapter(LoraConfig(target_modules=["q_proj", "v_proj"], **cfg), adapter_name="style")
    pipe.interactive.add_adapter(LoraConfig(target_modules=["to_q", "to_v", "fc_0", "lin_in"], **cfg), adapter_name="style")
    pipe.modulation.add_adapter(LoraConfig(target_modules=["to_q", "to_v", "conv1"], **cfg), adapter_name="style")
    styled = _run(pipe).images
    assert (styled - base).abs().max() > 1e-3
    pipe.save_lora_adapter_weights(tmp_path / "lora", "style")

    fresh = tiny_pipeline()
    randomize_zero_convs(fresh.modulation)
    fresh.load_lora_weights(tmp_path / "lora", weight_name="pytorch_lora_weights.safetensors", adapter_name="style")
    assert fresh.get_list_adapters() == {c: ["style"] for c in ("unet", "text_encoder", "interactive", "modulation")}
    assert torch.equal(_run(fresh).images, styled)
    fresh.set_adapters("style", 0.0)
    assert (_run(fresh).images - base).abs().max() < 1e-6
    fresh.set_adapters("style", 1.0)
    fresh.fuse_lora()
    assert fresh.fused_loras == {"style"}
    assert (_run(fresh).images - styled).abs().max() < 1e-5
    fresh.unfuse_lora()
    fresh.disable_lora()
    assert (_run(fresh).images - base).abs().max() < 1e-5


# --------------------------------------------------------------------------------------------- mesh and video
def test_extract_mesh_of_the_initial_sphere(tmp_path):
    pipe = tiny_pipeline()
    out = pipe(PROMPT, num_views=2, num_inference_steps=1, output_type="np")
    mesh = pipe.extract_mesh(out.field, resolution=32, output_path=tmp_path / "sphere.ply")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - 0.5).max() < 2.0 / 31  # the initial field is the sphere ||p|| = 0.5
    assert mesh.is_watertight and mesh.volume > 0  # closed, faces pointing outward
    assert abs(mesh.volume - 4 / 3 * np.pi * 0.125) < 0.05
    assert len(trimesh.load(tmp_path / "sphere.ply").faces) == len(mesh.faces)
    # Any callable SDF, and GLB output.
    box = pipe.extract_mesh(lambda p: (p.abs() - 0.3).max(dim=-1).values, resolution=24, bound=0.6, output_path=tmp_path / "box.glb")
    assert np.allclose(np.abs(box.vertices).max(axis=0), 0.3, atol=0.06)
    assert (tmp_path / "box.glb").stat().st_size > 0


def test_view_colors_take_the_facing_view():
    from my3dgen_hf.tunemv3d.cameras import view_colors

    cams = ring_cameras(4, 0.0)  # azimuths 0, 90, 180, 270 degrees
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]])
    images = colors[:, :, None, None].expand(4, 3, 8, 8).clone()
    to_cams = torch.nn.functional.normalize(cams[:, 3:12:4], dim=-1)  # camera centres: column 3 of cam2world
    points = 0.1 * to_cams  # near the origin, each facing one camera
    got = view_colors(points, to_cams, images, cams)
    assert torch.allclose(got, colors, atol=1e-5)  # a point facing exactly one camera takes that view's colour
    mixed = view_colors(torch.zeros(1, 3), torch.nn.functional.normalize(to_cams[0] + to_cams[1], dim=0)[None], images, cams)
    assert torch.allclose(mixed, torch.tensor([[0.5, 0.5, 0.0]]), atol=1e-5)  # halfway between two views: their mean
    down = view_colors(points[:1], torch.tensor([[0.0, -1.0, 0.0]]), images, cams)
    assert torch.allclose(down, colors.mean(0, keepdim=True), atol=1e-5)  # no view faces it: the views' mean


def test_extract_mesh_colours_vertices_from_the_views(tmp_path):
    pipe = tiny_pipeline()
    out = pipe(PROMPT, num_views=4, num_inference_steps=1, output_type="pt")
    red = torch.zeros_like(out.images)
    red[:, 0] = 1.0
    mesh = pipe.extract_mesh(out.field, resolution=24, views=red, output_path=tmp_path / "red.glb")
    loaded = trimesh.load(tmp_path / "red.glb", force="mesh")
    assert loaded.visual.kind == "vertex"
    assert (np.asarray(loaded.visual.vertex_colors)[:, :3] == [255, 0, 0]).all() and len(mesh.faces) > 100
    with pytest.raises(ValueError, match="views must be"):
        pipe.extract_mesh(out.field, resolution=16, views=red[:2])


def test_orbit_video(tmp_path):
    pipe = tiny_pipeline()
    out = pipe(PROMPT, num_views=2, num_inference_steps=1, output_type="np")
    frames = pipe.render_orbit(out.field, num_frames=3, frames_per_batch=2)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    path = pipe.save_orbit_video(tmp_path / "orbit.mp4", out.field, num_frames=4)
    assert path.stat().st_size > 0

"""EG3DPipeline: rendering, save/load round trip, orbit video, mesh extraction, conversion CLI."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from my3dgen_hf import EG3DGenerator, EG3DPipeline
from my3dgen_hf.eg3d.convert import main as convert_main

from tiny import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_call_output_types_and_determinism(pipe):
    out = pipe(seed=3, yaw=0.2, pitch=-0.1, return_depth=True)
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (128, 128)
    assert out.depths.shape == (1, 1, 32, 32) and out.ws.shape == (1, pipe.generator.num_ws, 16)
    arr = pipe(seed=3, yaw=0.2, pitch=-0.1, output_type="np").images
    assert arr.dtype == np.uint8 and arr.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(arr[0], np.asarray(out.images[0]))
    pt = pipe(seed=[3, 4], output_type="pt").images
    assert pt.shape == (2, 3, 128, 128) and not torch.equal(pt[0], pt[1])


def test_seed_matches_original_numpy_convention(pipe):
    z = torch.from_numpy(np.random.RandomState(5).randn(1, 16)).float()
    a = pipe(seed=5, output_type="pt").images
    b = pipe(latents=z, output_type="pt").images
    torch.testing.assert_close(a, b)


def test_one_identity_many_poses_and_ws_input(pipe):
    ws = pipe.get_ws(seed=1)
    views = pipe(ws=ws, yaw=[-0.35, 0.0, 0.35], output_type="pt").images
    assert views.shape[0] == 3 and not torch.equal(views[0], views[2])
    single = pipe(ws=ws, yaw=0.35, output_type="pt").images
    torch.testing.assert_close(views[2:], single, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="camera poses"):
        pipe(seed=[1, 2], yaw=[0.0, 0.1, 0.2])


def test_bad_arguments_have_clear_errors(pipe):
    with pytest.raises(ValueError, match="output_type"):
        pipe(seed=0, output_type="jpg")
    with pytest.raises(ValueError, match=r"latents must have shape \[N, 16\]"):
        pipe(latents=torch.zeros(1, 3))


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["generator"] == ["my3dgen_hf.eg3d.generator", "EG3DGenerator"]
    assert (tmp_path / "p" / "generator" / "diffusion_pytorch_model.safetensors").exists()
    loaded = EG3DPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(loaded.generator, EG3DGenerator)
    assert loaded.generator.config.neural_rendering_resolution == 32
    a = pipe(seed=[7, 8], yaw=0.1, output_type="pt").images
    b = loaded(seed=[7, 8], yaw=0.1, output_type="pt").images
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_orbit_video_is_written(pipe, tmp_path):
    import imageio.v3 as iio

    frames = pipe.render_orbit(pipe.get_ws(seed=0), num_frames=6)
    assert frames.shape == (6, 128, 128, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[3])
    path = pipe.save_orbit_video(tmp_path / "orbit.mp4", seed=0, num_frames=6, fps=6)
    video = iio.imread(path, plugin="FFMPEG")
    assert path.stat().st_size > 1000 and video.shape == (6, 128, 128, 3)




def test_extract_mesh_exports_ply_and_glb(pipe, tmp_path):
    import trimesh

    ws = pipe.get_ws(seed=0)
    pts = torch.rand(1, 2000, 3) - 0.5
    with torch.no_grad():
        sigma = pipe.generator.sample_mixed(pts, torch.zeros_like(pts), ws)["sigma"]
    level = float(sigma.median())
    mesh = pipe.extract_mesh(ws=ws, resolution=24, level=level, output_path=tmp_path / "m.ply")
    assert len(mesh.faces) > 0
    half = pipe.generator.rendering_kwargs["box_warp"] / 2
    assert (np.abs(mesh.vertices) <= half + 1e-6).all()
    assert trimesh.load(tmp_path / "m.ply").faces.shape == mesh.faces.shape
    pipe.extract_mesh(ws=ws, resolution=16, level=level, output_path=tmp_path / "m.glb")
    assert (tmp_path / "m.glb").read_bytes()[:4] == b"glTF"
    with pytest.raises(ValueError, match="outside the field's range"):
        pipe.extract_mesh(ws=ws, resolution=16, level=1e6)


def test_marching_cubes_of_analytic_sphere():
    from my3dgen_hf.utils.export import marching_cubes_mesh, sample_grid

    density = sample_grid(lambda p: 0.3 - p.norm(dim=-1), 48, [-0.5] * 3, [0.5] * 3)
    mesh = marching_cubes_mesh(density, 0.0, [-0.5] * 3, [0.5] * 3, inside="above")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - 0.3) < 0.01 and radii.std() < 0.01
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.3**3, rel=0.03)  # positive: faces point outward
    sdf = marching_cubes_mesh(-density, 0.0, [-0.5] * 3, [0.5] * 3)
    assert sdf.volume == pytest.approx(mesh.volume)


def test_convert_cli_writes_loadable_pipeline(eg3d_fixture_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "converted"
    assert convert_main([str(eg3d_fixture_dir / "network.pkl"), str(out)]) == 0
    pipe = EG3DPipeline.from_pretrained(out)
    expected = load_file(eg3d_fixture_dir / "state_dict.safetensors")
    got = pipe.generator.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    config = json.loads((eg3d_fixture_dir / "config.json").read_text())
    config.pop("class_name")
    for key, value in config.items():
        assert pipe.generator.config[key] == value, key
    # A non-empty output folder is refused (the user's files are never overwritten silently).
    assert convert_main([str(eg3d_fixture_dir / "network.pkl"), str(out)]) == 1
    assert convert_main([str(tmp_path / "missing.pkl"), str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


def test_shipped_demo_prior_loads_by_name_without_network(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the shipped prior must load without any Hub call")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    pipe = EG3DPipeline.from_pretrained("my3dgen-hf/demo-synthheads")
    G = pipe.generator
    assert G.img_resolution == 128 and G.backbone.mapping.w_avg.abs().sum() > 0  # w_avg was computed, not zero
    out = pipe(seed=[0, 1], yaw=[0.0, 0.35], output_type="pt", return_depth=True)
    assert out.images.shape == (2, 3, 128, 128) and not torch.equal(out.images[0], out.images[1])
    rk = G.rendering_kwargs
    assert ((out.depths > rk["ray_start"]) & (out.depths < rk["ray_end"])).float().mean() > 0.9

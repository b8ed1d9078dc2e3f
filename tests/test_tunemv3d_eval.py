"""my3dgen_hf/tunemv3d/evaluation.py and benchmarks/tunemv3d_eval.py on tiny models and SynthObjects renders."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from my3dgen_hf.metrics.clip_rprecision import CLIPRPrecision
from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.synthetic.synthobjects import chamfer_distance, object_points, object_sdf, render_views
from my3dgen_hf.tunemv3d import TuneMV3DInteractiveModel, TuneMV3DModulationModel, orbit_cameras
from my3dgen_hf.tunemv3d.evaluation import (
    HELD_OUT_OFFSET,
    FieldFitConfig,
    camera_azimuths,
    distractor_captions,
    fit_field,
    geometry_metrics,
    held_out_objects,
    leave_one_out_consistency,
    normalize_points,
    sample_independent_views,
    sample_tunemv3d_views,
    sdf_mesh,
    select_holdout_views,
    view_phrase,
)
from tunemv3d_tiny import TINY_INTERACTIVE, randomize_zero_convs, save_tiny_sd, tiny_pipeline, tiny_sd_components, tiny_sd_pipeline, tiny_tokenizer
from script_loader import load_script



bench = load_script("benchmarks/tunemv3d_eval.py")


def _on_white(rgba: np.ndarray) -> torch.Tensor:
    """uint8 RGBA [V, H, W, 4] -> float RGB [V, 3, H, W] in [0, 1] over white."""
    x = torch.from_numpy(rgba).float() / 255.0
    return (x[..., :3] * x[..., 3:] + 1.0 - x[..., 3:]).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------- held-out data
def test_held_out_captions_are_distinct_and_never_trained_on():
    objects = held_out_objects(12, num_views=8)
    captions = [o.caption for o in objects]
    assert len(set(captions)) == 12 and all(o.object_id >= HELD_OUT_OFFSET for o in objects)
    assert objects[0].cameras.shape == (8, 25)
    distractors = distractor_captions(99, captions)
    assert len(set(distractors)) == 99 and not set(distractors) & set(captions)
    # the first 8 SynthObjects cameras are evenly spaced in azimuth: 2 folds hold out opposite views
    az = camera_azimuths(objects[0].cameras)
    a, b = select_holdout_views(objects[0].cameras, 2)
    assert abs(((az[a] - az[b]) % 360) - 180) < 1e-3


def test_view_phrases_follow_the_camera_azimuth():
    cams = orbit_cameras([0.0, 30.0, 90.0, 180.0, 200.0, 270.0, 330.0], 20.0)
    assert torch.allclose(camera_azimuths(cams), torch.tensor([0.0, 30.0, 90.0, 180.0, 200.0, 270.0, 330.0]), atol=1e-3)
    assert [view_phrase(a) for a in camera_azimuths(cams).tolist()] == [
        "front view", "front view", "side view", "back view", "back view", "side view", "front view"]


# ------------------------------------------------------------------------------------------------------ sampling
def test_independent_views_are_stable_diffusion_and_untrained_tunemv3d_matches_them():
    cams = orbit_cameras([0.0, 120.0, 240.0], 20.0)
    sd = tiny_sd_pipeline()
    expected = sd(["a red chair"] * 3, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    ours = sample_independent_views(sd, "a red chair", cams, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert ours.shape == (3, 3, 16, 16) and torch.allclose(ours, expected, atol=1e-6)
    # a TuneMV3D pipeline's frozen base gives the same views, and so does TuneMV3D itself before training
    pipe = tiny_pipeline()
    base_views = sample_independent_views(pipe, "a red chair", cams, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    tune_views, field = sample_tunemv3d_views(pipe, "a red chair", cams, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(base_views, expected, atol=1e-6) and torch.allclose(tune_views, base_views, atol=1e-5)
    assert field(torch.zeros(1, 3)).shape == (1,)
    # view phrases change the prompts, hence the views
    phrased = sample_independent_views(sd, "a red chair", cams, num_inference_steps=3, generator=torch.Generator().manual_seed(0), view_prompts=True)
    assert not torch.allclose(phrased, expected)


# --------------------------------------------------------------------------------------------------- consistency
def test_consistency_is_high_for_one_object_and_low_for_views_of_different_objects():
    objects = held_out_objects(9, num_views=8)
    cams = objects[0].cameras
    consistent = _on_white(render_views(objects[0].params, cams, 24, 2))
    mixed = torch.cat([_on_white(render_views(objects[1 + i].params, cams[i : i + 1], 24, 2)) for i in range(8)])
    config = FieldFitConfig(resolution=24, steps=150)
    good = leave_one_out_consistency(consistent, cams, config, holdout=1)
    bad = leave_one_out_consistency(mixed, cams, config, holdout=1)
    assert good.psnr > 18.0 and good.psnr > bad.psnr + 5.0, (good.psnr, bad.psnr)
    assert good.ssim > bad.ssim + 0.2
    # the fitted field's geometry is near the object's
    g = geometry_metrics(sdf_mesh(good.fitted.sdf, 48), objects[0].params, 2000)
    assert g["chamfer"] < 0.08


def test_field_fit_is_deterministic_by_seed():
    obj = held_out_objects(1, num_views=4)[0]
    views = _on_white(render_views(obj.params, obj.cameras, 12, 1))
    config = FieldFitConfig(resolution=12, steps=5, rays_per_step=64)
    a, b = fit_field(views, obj.cameras, config), fit_field(views, obj.cameras, config)
    c = fit_field(views, obj.cameras, FieldFitConfig(resolution=12, steps=5, rays_per_step=64, seed=1))
    p = torch.rand(50, 3) * 2 - 1
    assert torch.equal(a.sdf(p), b.sdf(p)) and not torch.equal(a.sdf(p), c.sdf(p))


# ------------------------------------------------------------------------------------------------------ geometry
def test_chamfer_of_the_ground_truth_to_itself_is_near_zero_and_to_another_object_larger():
    a, b = held_out_objects(2)
    pa = object_points(a.params, 3000, seed=0)
    assert chamfer_distance(pa, pa) == 0.0
    resampled, other = chamfer_distance(pa, object_points(a.params, 3000, seed=1)), chamfer_distance(pa, object_points(b.params, 3000))
    assert resampled < 0.02 and other > 3 * resampled
    assert np.allclose(normalize_points(pa), pa, atol=0.02)  # ground truth is already centred at half-diagonal 0.6

    # a marching-cubes mesh of the analytic SDF scores near zero, another object's does not
    def sdf_of(params):
        return lambda p: torch.from_numpy(object_sdf(params, p.double().numpy())).float()

    own = geometry_metrics(sdf_mesh(sdf_of(a.params), 64), a.params, 3000)
    cross = geometry_metrics(sdf_mesh(sdf_of(b.params), 64), a.params, 3000)
    assert own["chamfer"] < 0.02 and cross["chamfer"] > 3 * own["chamfer"] and own["chamfer_normalized"] < 0.02
    assert math.isnan(geometry_metrics(None, a.params)["chamfer"])
    assert sdf_mesh(lambda p: p.norm(dim=-1) + 1.0, 16) is None  # no surface


# ------------------------------------------------------------------------------------------------- R-precision
class _OracleTokenizer:
    def __init__(self, texts):
        self.index = {t: i for i, t in enumerate(texts)}

    def __call__(self, texts, **_):
        ids = torch.tensor([[self.index[t]] for t in texts])
        return type("Tok", (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})()


class _OracleCLIP(torch.nn.Module):
    """Text k -> one-hot k; an image filled with the value (k + 1) / (K + 1) -> one-hot k."""

    def __init__(self, num_texts):
        super().__init__()
        self.k = num_texts
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def get_text_features(self, input_ids, attention_mask=None):
        return torch.nn.functional.one_hot(input_ids[:, 0], self.k).float()

    def get_image_features(self, pixel_values):
        value = pixel_values[:, 0].mean((1, 2)) * 0.26862954 + 0.48145466  # undo CLIP normalization (red channel)
        return torch.nn.functional.one_hot((value * (self.k + 1) - 1).round().long(), self.k).float()


def test_r_precision_is_one_with_an_oracle_clip():
    objects = held_out_objects(30)
    prompts = [o.caption for o in objects]
    distractors = distractor_captions(99, prompts)
    texts = prompts + distractors
    K = len(texts)

    def views(i):  # 8 views: 5 show the object's caption, 3 each show another (different) caption
        labels = [i] * 5 + [(i + 1 + j) % K for j in range(3)]
        return torch.stack([torch.full((3, 16, 16), (k + 1) / (K + 1)) for k in labels])

    clip = CLIPRPrecision(_OracleCLIP(K), _OracleTokenizer(texts), image_size=16)
    result = clip([views(i) for i in range(30)], prompts, candidates=distractors, num_candidates=100)
    assert result.r_precision == 1.0 and all(len(c) == 100 for c in result.candidates)
    # with the wrong caption in the majority R-precision drops to 0
    wrong = clip([views((i + 1) % 30) for i in range(30)], prompts, candidates=distractors, num_candidates=100)
    assert wrong.r_precision == 0.0


# ----------------------------------------------------------------------------------------------- the benchmark
def _randomize_outputs(modulation, seed):
    """Random weights in O's zero convolutions (as trained modules have), so TuneMV3D differs from its base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*modulation.controlnet_down_blocks, modulation.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)


def _ablation_pipeline(use_raw_xt=True, seed=0, **interactive_overrides):
    """A tiny TuneMV3D with the supplement's ablation switches (the base is the tiny SD of the same seed)."""
    parts = tiny_sd_components(seed)
    torch.manual_seed(seed + 1)
    interactive = TuneMV3DInteractiveModel.from_unet(parts["unet"], **{**TINY_INTERACTIVE, **interactive_overrides}).eval()
    features = interactive.config.render_target == "features"
    modulation = TuneMV3DModulationModel.from_unet(
        parts["unet"], xt_encoder_channels=(8,), use_raw_xt=use_raw_xt, render_channels=interactive.num_render_channels if features else None
    ).eval()
    _randomize_outputs(modulation, seed + 2)
    return TuneMV3DPipeline(interactive=interactive, modulation=modulation, **parts)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tunemv3d-eval")
    save_tiny_sd(root / "sd")
    pipe = tiny_pipeline()
    randomize_zero_convs(pipe.modulation)
    pipe.save_pretrained(root / "tune")
    _ablation_pipeline(use_raw_xt=False).save_pretrained(root / "no_raw_xt")
    _ablation_pipeline(render_target="features", render_channels=6).save_pretrained(root / "features")
    for name in ("tune", "no_raw_xt", "features"):  # as training/train_tunemv3d.py writes it after a SynthObjects export
        summary = {"global_step": 5, "synthobjects": {"seed": 1, "category": "chair", "object_ids": [0, 99]}}
        (root / name / "tunemv3d_training.json").write_text(json.dumps(summary))
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=96, bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        projection_dim=8,
    ))
    clip.save_pretrained(root / "clip")
    tokenizer = tiny_tokenizer(root / "clip")
    tokenizer.model_max_length = 96
    tokenizer.save_pretrained(root / "clip")
    return root


def test_benchmark_runs_end_to_end_with_ablations(models, tmp_path):
    out = tmp_path / "eval"
    results = bench.main([
        "--quick", "--base_model", str(models / "sd"), "--tunemv3d_model", str(models / "tune"), "--clip_model", str(models / "clip"),
        "--ablation_models", str(models / "no_raw_xt"), f"feat={models / 'features'}", "--out", str(out), "--num_threads", "1",
    ])
    assert (out / "results.md").is_file() and (out / "samples.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == [bench.REFERENCE, "base (independent)", "TuneMV3D", "TuneMV3D [no raw x_t in O]", "TuneMV3D [feat]"]
    assert saved["models"]["base"]["same_unet_as_tunemv3d"] is True
    for name, m in saved["methods"].items():
        for key in ("r_precision", "psnr", "ssim", "chamfer") + (("seconds_per_sample",) if name != bench.REFERENCE else ()):
            assert math.isfinite(m[key]), (name, key, m[key])
        assert len(m["per_object"]) == 2 and 0.0 <= m["r_precision"] <= 1.0
    assert math.isfinite(saved["methods"]["TuneMV3D"]["own_psnr"]) and math.isfinite(saved["methods"]["TuneMV3D"]["own_chamfer"])
    assert "own_psnr" not in saved["methods"]["TuneMV3D [feat]"]  # renders features: nothing to decode
    assert math.isfinite(saved["methods"]["TuneMV3D [feat]"]["own_chamfer"])
    claims = {c["claim"]: c["holds"] for c in saved["claims"]}
    assert len(claims) == 6 + 2 * 4 and all(v in (True, False, None) for v in claims.values())
    # the ground-truth renders are far more consistent than the tiny random models' views
    reference, base = saved["methods"][bench.REFERENCE], saved["methods"]["base (independent)"]
    assert reference["ssim"] > base["ssim"] + 0.2 and reference["chamfer"] < base["chamfer"] / 2
    assert math.isfinite(saved["references"]["sphere_chamfer"])
    # the held-out captions come from TuneMV3D's training world and category, past its training objects
    assert saved["settings"]["category"] == "chair" and saved["settings"]["data_seed"] == 1
    assert all("chair" in row["caption"] for row in saved["methods"]["TuneMV3D"]["per_object"])
    with pytest.raises(SystemExit, match="overlap"):
        bench.main(["--quick", "--base_model", str(models / "sd"), "--tunemv3d_model", str(models / "tune"), "--clip_model",
                    str(models / "clip"), "--object_offset", "50", "--out", str(tmp_path / "never")])
    assert claims["TuneMV3D [feat] was trained for as many steps as the full model (equal steps)"] is True
    md = (out / "results.md").read_text()
    assert "| TuneMV3D [no raw x_t in O] |" in md and "## Claims" in md and "Command: `python benchmarks/tunemv3d_eval.py --quick" in md
    assert results["settings"]["steps"] == 2


def test_missing_demo_model_says_how_to_pass_local_folders(monkeypatch, tmp_path):
    import my3dgen_hf.assets as assets

    monkeypatch.setattr(assets, "ASSETS", tmp_path / "assets")
    with pytest.raises(SystemExit, match="--tunemv3d_model <folder written by training/train_tunemv3d.py>"):
        bench.locate(bench.DEMO_MODEL, "tunemv3d")
    (tmp_path / "assets" / "synthobjects-clip").mkdir(parents=True)
    assert bench.locate(bench.DEMO_CLIP, "clip") == str(tmp_path / "assets" / "synthobjects-clip")  # the shipped copy
    with pytest.raises(SystemExit, match="no such folder"):
        bench.locate(str(tmp_path / "nothing"), "base")
    assert bench.locate(str(tmp_path), "base") == str(tmp_path)  # a plain folder is the model itself

"""The SynthHeads evaluator shared by the benchmarks: inversion measured at the input and at ground-truth novel views."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from my3dgen_hf.synthetic import sample_identity, sample_image_params
from my3dgen_hf.synthetic.evaluation import evaluate_inversions, ground_truth_view, novel_view_metrics

from tiny import tiny_pipeline


def _frontal(identity_id: int):
    ident = sample_identity(0, identity_id)
    ip = dataclasses.replace(sample_image_params(0, identity_id, 0, split="test", occluder_prob=0.0), yaw=0.0, pitch=0.0)
    return ident, ip


def test_ground_truth_view_moves_the_camera_only():
    ident, ip = _frontal(7)
    front, c_front = ground_truth_view(ident, ip, 64)
    side, c_side = ground_truth_view(ident, ip, 64, yaw=0.35)
    assert front.shape == side.shape == (1, 3, 64, 64) and c_front.shape == (1, 25)
    assert -1.0 <= float(front.min()) and float(front.max()) <= 1.0
    assert not torch.equal(c_front, c_side) and float((front - side).abs().mean()) > 0.01
    again, _ = ground_truth_view(ident, dataclasses.replace(ip, yaw=0.35), 64)
    assert torch.equal(again, side)  # same head, expression and light: only the camera differs


def test_evaluate_inversions_rows_and_projector_settings(tmp_path):
    pipe = tiny_pipeline()
    ident, ip = _frontal(3)
    img, c = ground_truth_view(ident, ip, 128)
    images, labels = torch.cat([img, img.flip(-1)]), torch.cat([c, c])
    mean, rows = evaluate_inversions(pipe, images, labels, [ip, ip], ident, steps=2, cache_dir=tmp_path,
                                     initial_learning_rate=0.1, mse_weight=5.0)
    assert len(rows) == 2
    assert set(mean) == {"psnr_input", "ssim_input", "psnr_novel", "ssim_novel"}
    for k, v in mean.items():
        assert math.isfinite(v) and v == pytest.approx(sum(r[k] for r in rows) / 2)
    # The settings reached the projector: they key its cache entries.
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 2
    with safe_open(str(files[0]), "pt") as f:
        settings = json.loads(f.metadata()["settings"])
    assert settings["initial_learning_rate"] == 0.1 and settings["mse_weight"] == 5.0
    with pytest.raises(TypeError, match="unknown projector settings"):
        evaluate_inversions(pipe, img, c, [ip], ident, steps=1, learning_rate=0.1)


def test_novel_view_metrics_match_scoring_by_hand():
    """Renders of ws at each yaw scored against ground-truth views: the numbers scoring by hand gives."""
    from my3dgen_hf.metrics import psnr

    pipe = tiny_pipeline()
    G = pipe.generator
    ident, ip = _frontal(5)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), pipe.conditioning_label(1))
    l1 = lambda x, y: (x - y).abs().mean(dim=(1, 2, 3))  # noqa: E731  any distance(x, y) -> [B]
    out = novel_view_metrics(pipe, ws, ident, ip, yaws=(-0.35, 0.35), distances={"l1": l1})
    by_hand, l1_by_hand = [], []
    for yaw in (-0.35, 0.35):
        gt, c = ground_truth_view(ident, ip, G.img_resolution, yaw=yaw)
        with torch.no_grad():
            img = G.synthesis(ws, c, noise_mode="const", deterministic=True)["image"].clamp(-1, 1)
        by_hand.append(psnr(img, gt).item())
        l1_by_hand.append(float(l1(img, gt)))
    assert set(out) == {"psnr_novel", "ssim_novel", "l1_novel"}
    assert out["psnr_novel"] == pytest.approx(sum(by_hand) / 2, rel=1e-5)
    assert out["l1_novel"] == pytest.approx(sum(l1_by_hand) / 2, rel=1e-5) and out["l1_novel"] > 0.01
    assert 0.0 < out["ssim_novel"] < 1.0

"""benchmarks/demo_prior_eval.py end to end on a tiny generator: every output written, the figures well-formed."""

import json

import numpy as np
import pytest
from PIL import Image

from script_loader import load_script
from tiny import tiny_pipeline


def test_frechet_distance_of_shifted_gaussians():
    bench = load_script("benchmarks/demo_prior_eval.py")
    rng = np.random.RandomState(0)
    a, b = rng.randn(4000, 4), rng.randn(4000, 4) + 1.0  # means 1 apart in 4 dims, same covariance: FD = 4
    assert bench.frechet_distance(a, b) == pytest.approx(4.0, abs=0.15)
    assert bench.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_demo_prior_eval_runs_on_a_tiny_model(tmp_path):
    bench = load_script("benchmarks/demo_prior_eval.py")
    tiny_pipeline().save_pretrained(tmp_path / "tiny")
    out = tmp_path / "eval"
    bench.main(["--model", str(tmp_path / "tiny"), "--out", str(out), "--num_fd", "4", "--num_inversions", "2",
                "--projection_steps", "2", "--grid_seeds", "2"])
    results = json.loads((out / "results.json").read_text())
    assert results["projection_lr"] == 0.1 and results["projection_mse_weight"] == 5.0 and results["command"].startswith("python benchmarks/")
    fd = results["frechet_identity_features"]
    assert set(fd) == {"prior_vs_synthheads", "random_init_vs_synthheads", "synthheads_half_vs_half"} and all(v >= 0 for v in fd.values())
    assert [r["identity"] for r in results["inversion_rows"]] == [1_000_500, 1_000_501]
    assert results["inversion"]["psnr_input"] == pytest.approx(np.mean([r["psnr_input"] for r in results["inversion_rows"]]))
    assert {"psnr_input", "ssim_input", "id_input", "psnr_novel", "ssim_novel", "id_novel"} <= set(results["inversion"])
    md = (out / "results.md").read_text()
    assert "Command: `python benchmarks/demo_prior_eval.py" in md and "| psnr_input |" in md
    assert Image.open(out / "samples_2_seeds.png").size == (3 * 128, 2 * 128)  # two seeds, three yaws each
    # Two identities -> two columns of one block each: truth row over inversion row, three yaws wide.
    assert Image.open(out / "inversions.png").size == (2 * 3 * 128, 2 * 128)
    assert len(list((out / "projection_cache").glob("*.safetensors"))) == 2

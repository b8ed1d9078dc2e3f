"""training/train_prior.py (the demo prior's recipe) on a few steps: outputs, and a resume that continues the schedule."""

import json

import pytest
import torch

from my3dgen_hf import EG3DPipeline

from script_loader import load_script


def _log(path):
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_train_prior_outputs_and_resume_continues_the_lr_schedule(tmp_path):
    train = load_script("training/train_prior.py")
    common = ["--num_identities", "8", "--train_batch_size", "2", "--max_train_steps", "4", "--lr_schedule", "cosine",
              "--lr_min_ratio", "0.1", "--checkpointing_steps", "1", "--checkpoints_total_limit", "10", "--validation_steps", "1000",
              "--dataloader_num_workers", "0", "--w_avg_samples", "64", "--num_threads", "2"]
    out = tmp_path / "run"
    train.main(["--output_dir", str(out), *common])
    straight = _log(out / "train_log.jsonl")
    assert sorted(straight) == [1, 2, 3, 4]
    assert straight[1]["lr"] == pytest.approx(2e-3) and straight[4]["lr"] < straight[2]["lr"] < 2e-3  # cosine decay

    pipe = EG3DPipeline.from_pretrained(out / "pipeline")
    G = pipe.generator
    assert sum(p.numel() for p in G.parameters()) == json.loads((out / "summary.json").read_text())["parameters"]
    assert float(G.backbone.mapping.w_avg.abs().sum()) > 0  # w_avg set from the frontal camera after training
    image = pipe(seed=0, output_type="pt").images
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()
    assert (out / "encoder" / "model.safetensors").is_file() and (out / "validation" / "final.png").is_file()

    # Interrupted after step 2 and resumed: steps 3-4 run at the learning rates the uninterrupted run used.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoints").mkdir()
    import shutil

    shutil.copytree(out / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    train.main(["--output_dir", str(resumed), *common, "--resume_from_checkpoint", "latest"])
    again = _log(resumed / "train_log.jsonl")
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step]["lr"] == pytest.approx(straight[step]["lr"], rel=1e-9)

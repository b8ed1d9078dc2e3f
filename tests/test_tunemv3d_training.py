"""The multi-view dataset layout and training/train_tunemv3d.py on a tiny generated dataset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.tunemv3d.data import MultiViewDataset, collate, read_cameras
from my3dgen_hf.tunemv3d.toy_data import make_toy_dataset
from tunemv3d_tiny import TINY_INTERACTIVE, save_tiny_sd
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


train = load_script("training/train_tunemv3d.py")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tunemv3d-train")
    return {"sd": save_tiny_sd(root / "sd"), "data": make_toy_dataset(root / "data", num_objects=4, num_views=6, resolution=16), "root": root}


def _args(assets, output_dir, steps, *extra):
    return train.parse_args(
        [
            "--pretrained_model_name_or_path", str(assets["sd"]), "--train_data_dir", str(assets["data"]), "--output_dir", str(output_dir),
            "--num_views", "2", "--num_novel_views", "2", "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", str(steps),
            "--seed", "0", "--interactive_kwargs", json.dumps(TINY_INTERACTIVE), *extra,
        ]
    )


def test_toy_dataset_layout(tmp_path):
    root = make_toy_dataset(tmp_path / "toy", num_objects=2, num_views=5, resolution=12, captions_json=True)
    obj = root / "0000"
    assert sorted(p.name for p in obj.iterdir()) == ["000.png", "001.png", "002.png", "003.png", "004.png", "cameras.json"]
    frames = json.loads((obj / "cameras.json").read_text())["frames"]
    assert frames[0]["file"] == "000.png" and len(frames[0]["cam2world"]) == 4 and len(frames[0]["intrinsics"]) == 3
    files, cams = read_cameras(obj / "cameras.json")
    assert len(files) == 5 and cams.shape == (5, 25)
    assert torch.allclose(cams[:, :16].reshape(-1, 4, 4)[:, :3, 3].norm(dim=-1), torch.full((5,), 2.0), atol=1e-5)
    assert json.loads((root / "captions.json").read_text()) == {"0000": "a red sphere", "0001": "a red box"}

    ds = MultiViewDataset(root, num_views=2, num_novel_views=1, resolution=8, random_views=False)
    item = ds[1]
    assert item["caption"] == "a red box" and item["images"].shape == (3, 3, 8, 8)
    assert torch.equal(item["cameras"], read_cameras(root / "0001" / "cameras.json")[1][:3])
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 3, 8, 8) and batch["images"].min() >= -1 and batch["images"].max() <= 1
    with pytest.raises(ValueError, match="views"):
        MultiViewDataset(root, num_views=4, num_novel_views=2)[0]


def test_a_few_training_steps_lower_the_loss(assets):
    before = _args(assets, assets["root"] / "run0", 0)
    train.main(before)  # zero steps: saves the initial pipeline
    result = train.main(_args(assets, assets["root"] / "run1", 12, "--learning_rate", "3e-3", "--checkpointing_steps", "0"))
    assert result["global_step"] == 12 and len(result["losses"]) == 12

    batch = collate([MultiViewDataset(assets["data"], 2, 2, 16, random_views=False)[i] for i in range(4)])

    def loss_of(folder):
        pipe = TuneMV3DPipeline.from_pretrained(folder)
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        logs = []
        for seed in range(3):  # the same noise, timesteps and views for both models
            with torch.no_grad():
                logs.append(train.compute_loss(dict(pipe.components), batch, scheduler, before, torch.Generator().manual_seed(seed))[1])
        return {k: sum(log[k] for log in logs) / len(logs) for k in logs[0]}

    initial, trained = loss_of(assets["root"] / "run0"), loss_of(assets["root"] / "run1")
    assert trained["loss"] < initial["loss"] - 0.01
    assert trained["loss_render"] < initial["loss_render"]
    assert trained["loss_denoise"] < initial["loss_denoise"]


def test_resume_from_latest_checkpoint(assets):
    out = assets["root"] / "resume"
    first = train.main(_args(assets, out, 2, "--checkpointing_steps", "2", "--learning_rate", "1e-3"))
    assert first == {"first_step": 0, "global_step": 2, "losses": first["losses"], "output_dir": str(out)}
    saved = load_file(out / "checkpoint-2" / "model.safetensors")  # the interactive module at step 2
    assert (out / "checkpoint-2" / "optimizer.bin").is_file()

    module = train
    seen = {}
    original = module.compute_loss

    def spy(models, *a, **k):  # the weights the resumed run starts from
        seen.setdefault("state", {k: v.detach().clone() for k, v in models["interactive"].state_dict().items()})
        return original(models, *a, **k)

    module.compute_loss = spy
    try:
        second = train.main(_args(assets, out, 3, "--checkpointing_steps", "2", "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest"))
    finally:
        module.compute_loss = original
    assert second["first_step"] == 2 and second["global_step"] == 3 and len(second["losses"]) == 1
    assert all(torch.equal(seen["state"][k], v) for k, v in saved.items())
    assert (out / "model_index.json").is_file()


def test_gradient_checkpointing_gives_the_same_gradients(assets):
    pipe = TuneMV3DPipeline.from_pretrained(assets["sd"], interactive_kwargs=TINY_INTERACTIVE)
    args = _args(assets, assets["root"] / "unused", 1)
    batch = collate([MultiViewDataset(assets["data"], 2, 2, 16, random_views=False)[i] for i in range(2)])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.interactive.train()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            pipe.enable_gradient_checkpointing()
        pipe.interactive.zero_grad()
        pipe.modulation.zero_grad()
        loss, _ = train.compute_loss(dict(pipe.components), batch, scheduler, args, torch.Generator().manual_seed(0))
        loss.backward()
        grads.append([p.grad.clone() for p in pipe.interactive.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 10
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_validation_images_and_cli(assets):
    out = assets["root"] / "cli"
    cmd = [
        sys.executable, str(ROOT / "training" / "train_tunemv3d.py"), "--pretrained_model_name_or_path", str(assets["sd"]),
        "--train_data_dir", str(assets["data"]), "--output_dir", str(out), "--num_views", "2", "--num_novel_views", "1",
        "--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "1", "--interactive_kwargs", json.dumps(TINY_INTERACTIVE),
        "--validation_prompts", "a red box", "--validation_steps", "1", "--validation_num_inference_steps", "2",
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert (out / "validation" / "step-000001-0.png").is_file()
    assert (out / "interactive" / "config.json").is_file() and (out / "modulation" / "config.json").is_file()


def test_memory_benchmark_worker(capsys):
    bench = load_script("benchmarks/tunemv3d_memory.py")
    bench.main(["--views", "3", "--n", "3", "--steps", "1", "--warmup", "0", "--device", "cpu", "--view_chunk_size", "2"])
    result = json.loads(capsys.readouterr().out.split("RESULT ", 1)[1])
    assert result["n"] == 3 and result["train_step_s"] > 0 and result["infer_step_s"] > 0 and "train_peak_rss_mib" in result

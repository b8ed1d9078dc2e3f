"""``training/personalize.py``: two Accelerate processes match one, resume through the script, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_fixtures import hub_endpoint, hub_server  # noqa: F401 (fixtures)
from my3dgen_hf.personalization import PersonalizationError
from test_personalization_helpers import identity_images, tiny_prior, write_eg3d_dataset
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "personalize.py"


def _script():
    return load_script(str(SCRIPT.relative_to(ROOT)), "personalize_script")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("script")
    tiny_prior().save_pretrained(root / "base")
    images, labels = identity_images(4)
    write_eg3d_dataset(root / "data", images, labels)
    return root


def _args(root: Path, out: str, *extra: str) -> list[str]:
    return [
        "--base_model", str(root / "base"), "--data_dir", str(root / "data"), "--output_dir", str(root / out),
        "--steps", "4", "--batch_size", "2", "--projection_steps", "2", "--projection_cache_dir", str(root / "cache"),
        "--checkpointing_steps", "0", "--validation_steps", "0", "--num_threads", "1", *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env["HF_HOME"] = env.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))  # accelerate reads its config there
    return env


def test_two_processes_match_one_process(setup):
    """Global batch 2: one process with batch 2 (in-process, plain `python` path) == two processes with 1 each."""
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate CLI is not on PATH")
    cmd = [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(SCRIPT), *_args(setup, "two"),
    ]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The single-process run goes meanwhile (it also fills the projection cache both runs share).
    assert _script().main(_args(setup, "one")) == 0
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    one, two = (json.loads((setup / d / "training_summary.json").read_text()) for d in ("one", "two"))
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    a = load_file(str(setup / "one" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(setup / "two" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_script_resume_from_latest_continues_training(setup):
    script = _script()
    assert script.main(_args(setup, "straight", "--steps", "6")) == 0
    assert script.main(_args(setup, "resumed", "--steps", "3", "--checkpointing_steps", "3")) == 0
    assert script.main(_args(setup, "resumed", "--steps", "6", "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest")) == 0
    summary = json.loads((setup / "resumed" / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 6
    a = load_file(str(setup / "straight" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(setup / "resumed" / "pytorch_lora_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    for f in ("anchors.safetensors", "samples.png"):
        assert (setup / "resumed" / f).is_file()


def test_script_projection_settings_reach_the_projector(setup, tmp_path):
    from safetensors import safe_open

    args = _args(setup, "proj", "--steps", "1", "--projection_lr", "0.1", "--projection_mse_weight", "5")
    args[args.index("--projection_cache_dir") + 1] = str(tmp_path / "cache")
    assert _script().main(args) == 0
    summary = json.loads((setup / "proj" / "training_summary.json").read_text())
    assert summary["projection"]["lr"] == 0.1 and summary["projection"]["mse_weight"] == 5.0
    entries = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(entries) == 4  # one w per training image, keyed by these settings
    with safe_open(str(entries[0]), "pt") as f:
        settings = json.loads(f.metadata()["settings"])
    assert (settings["initial_learning_rate"], settings["mse_weight"]) == (0.1, 5.0)


def test_script_bad_inputs_fail_early_and_clearly(setup, tmp_path):
    script = _script()
    (tmp_path / "empty").mkdir()
    (tmp_path / "nobase").mkdir()
    bad = tmp_path / "badjson"
    shutil.copytree(setup / "data", bad)
    (bad / "dataset.json").write_text("{\"labels\": [")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--data_dir", str(tmp_path / "missing")], r"--data_dir .*missing does not exist or is not a folder"),
        (["--data_dir", str(tmp_path / "empty")], r"data folder .*empty is empty"),
        (["--data_dir", str(bad)], r"dataset.json is not valid JSON"),
        (["--base_model", str(tmp_path / "nobase")], r"is not a pipeline folder \(no model_index.json\)"),
        (["--output_dir", str(tmp_path / "file")], r"output_dir .*file exists and is not a folder"),
        (["--push_to_hub"], r"--push_to_hub needs --hub_model_id"),
        (["--num_images", "0"], r"--num_images must be at least 1"),
        (["--full_finetune", "--push_to_hub", "--hub_model_id", "a/b"], r"--push_to_hub uploads identity adapters"),
    ]
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        cases.append((["--report_to", "tensorboard"], r"--report_to tensorboard needs tensorboard: pip install tensorboard"))
    for extra, message in cases:
        with pytest.raises(PersonalizationError, match=message):
            script.main(_args(setup, "never") + extra)
    assert not (setup / "never" / "pytorch_lora_weights.safetensors").exists()


def test_script_reports_errors_on_the_command_line(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: --data_dir") and "Traceback" not in run.stderr


def test_script_pushes_the_adapter_to_the_hub(setup, hub_endpoint):  # noqa: F811
    from hub_server import WRITE_TOKEN

    repo = "hub-test-user/personalized-tiny"
    args = _args(setup, "pushed", "--steps", "2", "--push_to_hub", "--hub_model_id", repo, "--hub_token", WRITE_TOKEN)
    assert _script().main(args) == 0
    fresh = tiny_prior()
    fresh.load_lora_weights(repo, weight_name="pytorch_lora_weights.safetensors", adapter_name="identity", token=WRITE_TOKEN)
    from huggingface_hub import HfApi

    files = set(HfApi(endpoint=hub_endpoint, token=WRITE_TOKEN).list_repo_files(repo))
    assert {"pytorch_lora_weights.safetensors", "anchors.safetensors", "training_summary.json", "samples.png", "README.md"} <= files

"""Personalization API: projection, tuning, checkpoints/resume, outputs and bad-input errors (tiny configs)."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors.torch import load_file

from my3dgen_hf.lora.loader import AdapterError
from my3dgen_hf.personalization import (
    PersonalizationCancelled,
    PersonalizationError,
    global_batch,
    load_anchors,
    load_eg3d_dataset,
    load_training_data,
    personalize,
    project_to_w,
)
from test_personalization_helpers import identity_images, quick_anchors, tiny_prior, write_eg3d_dataset


def _adapter_tensors(folder):
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


# ------------------------------------------------------------------------------------------------- tuning
def test_twenty_steps_lower_the_loss(tmp_path):
    pipe = tiny_prior()
    pipe.generator.backbone.mapping.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in pipe.generator.named_parameters()}
    images, labels = identity_images(4)
    anchors = quick_anchors(pipe, images, labels)
    seen = []
    result = personalize(pipe, images, labels, anchors, steps=20, batch_size=2, progress=False, callback=seen.append, output_dir=tmp_path)
    losses = [e["loss"] for e in result.losses]
    assert len(losses) == 20 and [e["step"] for e in seen] == list(range(1, 21))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    # The adapter is loaded and active; the base parameters' requires_grad is as before; the summary says what ran.
    assert result.adapter_name == "identity" and pipe.get_active_adapters() == ["identity"]
    from my3dgen_hf.lora import original_name

    after = {original_name(pipe.generator, n): p.requires_grad for n, p in pipe.generator.named_parameters() if "lora_" not in n}
    assert after == flags
    s = json.loads((tmp_path / "training_summary.json").read_text())
    assert s["steps"] == 20 and s["num_images"] == 4 and s["final_loss"] == pytest.approx(losses[-1])
    assert s["perceptual_loss"]["kind"] in ("ms-ssim", "lpips-alex") and s["perceptual_loss"]["description"]
    assert s["trainable_parameters"] > 0 and s["adapter_bytes"] == (tmp_path / "pytorch_lora_weights.safetensors").stat().st_size
    for f in ("anchors.safetensors", "samples.png"):
        assert (tmp_path / f).is_file()
    assert list((tmp_path / "validation").glob("step_*.png"))
    ws, lab, _ = load_anchors(tmp_path / "anchors.safetensors")
    assert torch.equal(ws, anchors.cpu()) and torch.allclose(lab, labels)


def test_callback_can_stop_early():
    pipe = tiny_prior()
    images, labels = identity_images(4)
    anchors = quick_anchors(pipe, images, labels)
    result = personalize(pipe, images, labels, anchors, steps=10, batch_size=2, progress=False, callback=lambda e: e["step"] < 3)
    assert result.stopped_early and result.summary["steps"] == 3 and len(result.losses) == 3
    assert pipe.get_active_adapters() == ["identity"]


def test_perceptual_weight_scales_the_perceptual_terms():
    images, labels = identity_images(4)
    pipe = tiny_prior()
    anchors = quick_anchors(pipe, images, labels)
    l2_only = personalize(pipe, images, labels, anchors, steps=2, batch_size=2, progress=False, perceptual_weight=0.0, log=lambda *a: None)
    first = l2_only.losses[0]
    assert first["perceptual"] > 0 and first["loss"] == pytest.approx(first["mse_raw"] + first["mse"], rel=1e-5)
    assert l2_only.summary["perceptual_weight"] == 0.0 and "0 * (P(raw)" in l2_only.summary["loss"]
    with pytest.raises(PersonalizationError, match="perceptual_weight"):
        personalize(tiny_prior(), images, labels, anchors, steps=1, progress=False, perceptual_weight=-1.0)


def test_output_adapter_loads_into_fresh_pipeline_and_renders_identically(tmp_path):
    pipe = tiny_prior()
    images, labels = identity_images(4)
    anchors = quick_anchors(pipe, images, labels)
    personalize(pipe, images, labels, anchors, adapter_name="me", steps=4, batch_size=2, progress=False, output_dir=tmp_path)
    fresh = tiny_prior()
    fresh.load_lora_weights(tmp_path, adapter_name="me")
    a = pipe(ws=anchors[:2], yaw=[0.3, -0.2], output_type="pt").images
    b = fresh(ws=anchors[:2], yaw=[0.3, -0.2], output_type="pt").images
    base = tiny_prior()(ws=anchors[:2], yaw=[0.3, -0.2], output_type="pt").images
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - base).abs().max() > 1e-3  # the adapter changed something


def test_resume_continues_at_saved_step_and_matches_uninterrupted_run(tmp_path):
    images, labels = identity_images(4)
    anchors = quick_anchors(tiny_prior(), images, labels)
    kw = dict(steps=8, batch_size=2, progress=False, checkpointing_steps=3, seed=3)

    full = personalize(tiny_prior(), images, labels, anchors, output_dir=tmp_path / "full", **kw)

    def crash(entry):
        if entry["step"] == 5:
            raise KeyboardInterrupt  # killed between two checkpoints

    pipe = tiny_prior()
    with pytest.raises(KeyboardInterrupt):
        personalize(pipe, images, labels, anchors, output_dir=tmp_path / "run", callback=crash, **kw)
    assert "identity" not in (getattr(pipe.generator, "peft_config", {}) or {})  # no half-trained adapter left
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["checkpoint-3"]

    steps_seen = []
    resumed = personalize(
        tiny_prior(), images, labels, anchors, output_dir=tmp_path / "run", resume_from_checkpoint="latest",
        callback=lambda e: steps_seen.append(e["step"]), **kw,
    )
    assert steps_seen[0] == 4 and steps_seen[-1] == 8
    assert resumed.summary["resumed_from"].endswith("checkpoint-3")
    assert [e["step"] for e in resumed.losses] == list(range(1, 9))
    assert [e["loss"] for e in resumed.losses] == pytest.approx([e["loss"] for e in full.losses], rel=1e-6)
    a, b = _adapter_tensors(tmp_path / "full"), _adapter_tensors(tmp_path / "run")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_full_finetune_trains_all_but_mapping(tmp_path):
    pipe = tiny_prior()
    before = {n: p.detach().clone() for n, p in pipe.generator.named_parameters()}
    images, labels = identity_images(2)
    anchors = quick_anchors(pipe, images, labels)
    result = personalize(pipe, images, labels, anchors, steps=2, batch_size=2, lr=1e-3, full_finetune=True, progress=False, output_dir=tmp_path)
    assert result.adapter_name is None and result.summary["mode"] == "full_finetune"
    changed = {n for n, p in pipe.generator.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("backbone.mapping") for n in changed)
    assert any(n.startswith("backbone.synthesis") for n in changed) and any(n.startswith("superresolution") for n in changed)
    from my3dgen_hf import EG3DPipeline

    reloaded = EG3DPipeline.from_pretrained(tmp_path / "finetuned_pipeline")
    for n, p in reloaded.generator.named_parameters():
        torch.testing.assert_close(p, dict(pipe.generator.named_parameters())[n])


def test_global_batches_cover_every_image_each_epoch():
    order = [i for s in range(6) for i in global_batch(s, 2, 6, seed=0)]
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:]) == list(range(6))
    assert global_batch(4, 2, 6, 0) == global_batch(4, 2, 6, 0) and order[:6] != [i for s in range(3) for i in global_batch(s, 2, 6, seed=1)]


# ------------------------------------------------------------------------------------------------- projection
def test_projection_cache_hit_on_rerun(tmp_path):
    pipe = tiny_prior()
    images, labels = identity_images(3)
    calls = []
    ws = project_to_w(pipe, images, labels, steps=3, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert ws.shape == (3, pipe.generator.num_ws, pipe.generator.w_dim)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.safetensors"))) == 3
    # One w per image, broadcast to all num_ws, moved away from w_avg.
    assert torch.equal(ws[:, :1].expand_as(ws), ws)
    calls.clear()
    again = project_to_w(pipe, images, labels, steps=3, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert calls == [] and torch.equal(again, ws)
    # A new image (or other settings) is projected; the cached ones are not.
    more = torch.cat([images, images[:1].flip(-1)])
    project_to_w(pipe, more, torch.cat([labels, labels[:1]]), steps=3, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.safetensors"))) == 4
    calls.clear()
    project_to_w(pipe, images[:1], labels[:1], steps=2, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert len(calls) == 2


def test_projection_lowers_its_loss_and_ignores_batching():
    pipe = tiny_prior()
    images, labels = identity_images(2)
    curve = []
    batched = project_to_w(pipe, images, labels, steps=12, progress=False, callback=lambda d: curve.append(d["loss"]), initial_learning_rate=0.05)
    assert curve[-1] < curve[0]
    single = project_to_w(pipe, images, labels, steps=12, progress=False, batch_size=1, initial_learning_rate=0.05)
    torch.testing.assert_close(batched, single, rtol=1e-3, atol=1e-4)  # batched convs round differently


def test_projection_callback_can_cancel():
    pipe = tiny_prior()
    images, labels = identity_images(2)
    with pytest.raises(PersonalizationCancelled):
        project_to_w(pipe, images, labels, steps=5, progress=False, callback=lambda d: d["step"] < 2)


def test_projection_uses_the_prior_not_an_active_adapter(tmp_path):
    images, labels = identity_images(2)
    plain = project_to_w(tiny_prior(), images, labels, steps=2, progress=False)
    pipe = tiny_prior()
    personalize(pipe, images, labels, plain, steps=3, batch_size=2, progress=False)
    again = project_to_w(pipe, images, labels, steps=2, progress=False)
    torch.testing.assert_close(again, plain, rtol=1e-5, atol=1e-6)
    assert pipe.get_active_adapters() == ["identity"]


# ------------------------------------------------------------------------------------------------- datasets
def test_eg3d_dataset_round_trip(tmp_path):
    images, labels = identity_images(4)
    write_eg3d_dataset(tmp_path, images, labels)
    x, c, names = load_eg3d_dataset(tmp_path)
    assert torch.allclose(x, images, atol=1e-6) and torch.allclose(c, labels) and names[0] == "img_00000.png"
    x, c, names = load_eg3d_dataset(tmp_path, resolution=64, num_images=2)
    assert x.shape == (2, 3, 64, 64) and len(names) == 2
    x2, _, _ = load_training_data(tmp_path, resolution=128, num_images=3)
    assert x2.shape == (3, 3, 128, 128)


# ------------------------------------------------------------------------------------------------- bad inputs
def _dataset(tmp_path, labels_json=None, **files):
    images, labels = identity_images(2)
    write_eg3d_dataset(tmp_path, images, labels)
    if labels_json is not None:
        (tmp_path / "dataset.json").write_text(labels_json if isinstance(labels_json, str) else json.dumps(labels_json))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _label(i=0):
    return [float(v) for v in identity_images(2)[1][i]]


@pytest.mark.parametrize(
    "labels_json, files, message",
    [
        ("{not json", {}, r"dataset.json is not valid JSON \(Expecting property name"),
        ({"images": []}, {}, r'has no "labels" entry'),
        ({"labels": None}, {}, r"unconditional dataset"),
        ({"labels": [["img_00000.png", [0.0] * 24]]}, {}, r"label of 'img_00000.png' \(entry 0\) has 24 values"),
        ({"labels": [["img_00000.png", ["a"] * 25]]}, {}, r"holds a non-number"),
        ({"labels": [["img_00000.png", [2.0] * 25]]}, {}, r"is not a camera: its cam2world rotation is not orthonormal"),
        ({"labels": [["img_00000.png"]]}, {}, r"entry 0 is not a \[file name, \[25 numbers\]\] pair"),
        ({"labels": []}, {}, r"lists no images"),
        ({"labels": [["missing.png", None]]}, {}, r"label of 'missing.png' \(entry 0\) is not a list"),
        ({"labels": [["gone_1.png", _label()], ["img_00000.png", _label()]]}, {}, r"lists files that do not exist: gone_1.png; the labels do not match"),
        ({"labels": [["notes.png", _label()]]}, {"notes.png": b"plain text, not pixels"}, r"notes.png: not an image"),
        ({"labels": [["empty.png", _label()]]}, {"empty.png": b""}, r"empty.png: empty file"),
    ],
)
def test_dataset_errors_are_specific(tmp_path, labels_json, files, message):
    folder = _dataset(tmp_path, labels_json, **files)
    with pytest.raises(PersonalizationError, match=message):
        load_eg3d_dataset(folder)


def test_dataset_image_errors(tmp_path):
    from PIL import Image

    folder = _dataset(tmp_path)
    Image.new("RGB", (16, 16)).save(folder / "small.png")
    Image.new("RGB", (64, 48)).save(folder / "wide.png")
    (folder / "dataset.json").write_text(json.dumps({"labels": [["small.png", _label()]]}))
    with pytest.raises(PersonalizationError, match=r"small.png: image too small \(16x16 px\); need at least 32 px"):
        load_eg3d_dataset(folder)
    (folder / "dataset.json").write_text(json.dumps({"labels": [["wide.png", _label()]]}))
    with pytest.raises(PersonalizationError, match=r"wide.png is 64x48 px, not square"):
        load_eg3d_dataset(folder)
    (folder / "dataset.json").write_text(json.dumps({"labels": [["wide.png", _label()], ["wide.png", _label()]]}))
    with pytest.raises(PersonalizationError, match=r"'wide.png' is listed twice"):
        load_eg3d_dataset(folder)


def test_folder_errors(tmp_path):
    with pytest.raises(PersonalizationError, match=r"does not exist"):
        load_training_data(tmp_path / "nope", 128)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PersonalizationError, match=r"data folder .*empty is empty"):
        load_training_data(tmp_path / "empty", 128)
    with pytest.raises(PersonalizationError, match=r"has no dataset.json"):
        load_eg3d_dataset(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    (tmp_path / "text" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    pytest.importorskip("dlib")
    with pytest.raises(PersonalizationError, match=r"no usable photo in .*2 rejected: a.txt: not an image.*b.jpg: (not an image|corrupt)"):
        load_training_data(tmp_path / "text", 128, log=lambda s: None)


def test_training_input_errors(tmp_path):
    pipe = tiny_prior()
    images, labels = identity_images(2)
    anchors = quick_anchors(pipe, images, labels, steps=1)
    nw = pipe.generator.num_ws
    with pytest.raises(PersonalizationError, match=rf"anchors have shape \(2, {nw}, 8\) but this base model needs \[N, {nw}, 16\]: they were projected with another base model"):
        personalize(pipe, images, labels, anchors[..., :8], steps=1, progress=False)
    with pytest.raises(PersonalizationError, match=r"got 2 images but 1 labels"):
        personalize(pipe, images, labels[:1], anchors, steps=1, progress=False)
    with pytest.raises(PersonalizationError, match=r"labels must be a tensor \[N, 25\]"):
        personalize(pipe, images, labels[:, :16], anchors, steps=1, progress=False)
    with pytest.raises(PersonalizationError, match=r"steps must be an integer >= 1, got 0"):
        personalize(pipe, images, labels, anchors, steps=0, progress=False)
    with pytest.raises(PersonalizationError, match=r"anchors contain NaN"):
        personalize(pipe, images, labels, anchors * float("nan"), steps=1, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PersonalizationError, match=r"output_dir .*file exists and is not a folder"):
        personalize(pipe, images, labels, anchors, steps=1, progress=False, output_dir=tmp_path / "file")
    with pytest.raises(PersonalizationError, match=r"output_dir .*file/sub is not writable"):
        personalize(pipe, images, labels, anchors, steps=1, progress=False, output_dir=tmp_path / "file" / "sub")
    with pytest.raises(PersonalizationError, match=r"checkpointing and resuming need an output_dir"):
        personalize(pipe, images, labels, anchors, steps=1, progress=False, checkpointing_steps=1)
    assert not getattr(pipe.generator, "peft_config", None)  # nothing was added by the failed calls
    personalize(pipe, images, labels, anchors, steps=1, batch_size=2, progress=False)
    with pytest.raises(PersonalizationError, match=r"an adapter named 'identity' is already loaded"):
        personalize(pipe, images, labels, anchors, steps=1, progress=False)


def test_base_model_mismatch_errors(tmp_path):
    images, labels = identity_images(2)
    pipe = tiny_prior()
    anchors = quick_anchors(pipe, images, labels, steps=1)
    personalize(pipe, images, labels, anchors, steps=2, batch_size=2, progress=False, output_dir=tmp_path, checkpointing_steps=1)
    other = tiny_prior(seed=5)  # same architecture, other weights
    with pytest.raises(AdapterError, match=r"trained for another base model"):
        other.load_lora_weights(tmp_path, adapter_name="identity")
    with pytest.raises(PersonalizationError, match=r"checkpoint .*checkpoint-1 was trained on another base model"):
        personalize(other, images, labels, anchors, steps=2, batch_size=2, progress=False, output_dir=tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoints" / "checkpoint-1"))
    with pytest.raises(PersonalizationError, match=r"does not match this run \(rank: checkpoint 1, now 2\)"):
        personalize(tiny_prior(), images, labels, anchors, rank=2, steps=2, batch_size=2, progress=False, output_dir=tmp_path, resume_from_checkpoint="latest")


def test_disk_full_during_save_leaves_no_half_written_adapter(tmp_path, monkeypatch):
    import safetensors.torch

    images, labels = identity_images(2)
    pipe = tiny_prior()
    anchors = quick_anchors(pipe, images, labels, steps=1)
    personalize(pipe, images, labels, anchors, steps=1, batch_size=2, progress=False, output_dir=tmp_path)
    before = (tmp_path / "pytorch_lora_weights.safetensors").read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # a partial write, then the device is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(PersonalizationError, match=r"disk full while writing .*: nothing was written \(any previous file there is intact\)"):
        personalize(tiny_prior(), images, labels, anchors, steps=2, batch_size=2, progress=False, output_dir=tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

"""Pivotal Tuning Inversion on EG3DPipeline: tuning quality, adapters left untouched, early stop, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from my3dgen_hf.personalization.data import PersonalizationCancelled, PersonalizationError
from my3dgen_hf.personalization.pti import PTIResult, adapted_generator_copy, pti_invert

from test_personalization_helpers import identity_images, tiny_prior, train_like


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a.float() - b.float()).square().mean()))  # images in [-1, 1]


@torch.no_grad()
def render_at(G, ws, c) -> torch.Tensor:
    return G.synthesis(ws, c, noise_mode="const", deterministic=True)["image"]


@pytest.fixture(scope="module")
def target():
    images, labels = identity_images(1)
    return images[0], labels[0]  # [3, 128, 128], [25]


@pytest.fixture()
def adapted_pipe(tmp_path):
    """A prior with an identity adapter loaded through the pipeline mixin (save_lora_weights -> load_lora_weights)."""
    src = tiny_prior()
    train_like(src, "alice", 1)
    src.save_lora_weights(tmp_path / "alice")
    pipe = tiny_prior()
    pipe.load_lora_weights(tmp_path / "alice", adapter_name="alice")
    return pipe


def _read_adapter(path):
    """(tensors, metadata) of a saved adapter. The bytes are not compared: safetensors writes the header's
    metadata entries in a varying order."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in sorted(f.keys())}, f.metadata()


def _snapshot(pipe):
    G = pipe.generator
    return (
        {k: v.detach().clone() for k, v in G.state_dict().items()},
        {n: p.requires_grad for n, p in G.named_parameters()},
        G.training,
    )


def _assert_same(pipe, snap):
    state, flags, training = snap
    now = pipe.generator.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert {n: p.requires_grad for n, p in pipe.generator.named_parameters()} == flags
    assert pipe.generator.training == training


# ------------------------------------------------------------------------------------------------- quality
def test_pti_lowers_the_loss_and_reconstructs_better_than_the_pivot_alone(target):
    image, label = target
    pipe = tiny_prior()
    snap = _snapshot(pipe)
    seen = []
    result = pti_invert(pipe, image, label, w_steps=3, tune_steps=20, early_stop=None, progress=False, callback=seen.append)
    assert isinstance(result, PTIResult)
    G = pipe.generator
    assert result.ws.shape == (1, G.num_ws, G.w_dim) and result.label.shape == (1, 25)
    assert [d["step"] for d in seen if d["stage"] == "projection"] == [1, 2, 3]
    assert [d["step"] for d in seen if d["stage"] == "pti"] == list(range(1, 21))
    assert result.steps_run == 20 and len(result.losses) == 20 and not result.stopped_early
    losses = [e["loss"] for e in result.losses]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert all(e["loss"] == pytest.approx(e["l2"] + e["perceptual"], rel=1e-5) for e in result.losses)
    assert result.perceptual_kind in ("ms-ssim", "lpips-alex")

    # The tuned copy reproduces the input view much better than the untuned generator at the same pivot.
    x = image[None]
    before = psnr(render_at(G, result.ws, result.label), x)
    after = psnr(result.reconstruction(), x)
    assert after > before + 5.0, (before, after)
    # The tuned pipeline renders novel views; the input pipeline is untouched.
    front = result.render(yaw=0.0, output_type="pt").images
    side = result.render(yaw=0.3, pitch=0.1, output_type="pt").images
    assert front.shape == side.shape == (1, 3, 128, 128) and not torch.allclose(front, side)
    assert type(result.pipeline) is type(pipe) and result.pipeline.generator is result.generator
    assert not any(p.requires_grad for p in result.generator.parameters())
    _assert_same(pipe, snap)


def test_given_pivot_skips_projection_and_zero_steps_is_the_untuned_copy(target):
    image, label = target
    pipe = tiny_prior()
    w = pipe.get_ws(seed=3)
    seen = []
    result = pti_invert(pipe, image, label, w=w, tune_steps=0, progress=False, callback=seen.append)
    assert seen == [] and result.steps_run == 0 and result.losses == []
    assert torch.equal(result.ws, w)
    torch.testing.assert_close(result.reconstruction(), render_at(pipe.generator, w, result.label), atol=0, rtol=0)
    # A single w [1, w_dim] is broadcast to all layers.
    single = pti_invert(pipe, image, label, w=w[:, 0], tune_steps=0, progress=False)
    assert torch.equal(single.ws, w[:, :1].repeat(1, pipe.generator.num_ws, 1))


# ------------------------------------------------------------------------------------------------- adapters
def test_adapter_is_merged_into_the_copy_and_pipe_stays_bit_identical(adapted_pipe, target, tmp_path):
    image, label = target
    pipe = adapted_pipe
    w = pipe.get_ws(seed=4)
    c = label[None]
    with_adapter = render_at(pipe.generator, w, c)
    pipe.disable_lora()
    prior = render_at(pipe.generator, w, c)
    pipe.enable_lora()
    assert psnr(with_adapter, prior) < 40  # the adapter changes the render: the test below is meaningful

    before_file = _read_adapter(pipe.save_lora_weights(tmp_path / "before"))
    extras_before = {k: v.clone() for k, v in pipe._extras_deltas()["alice"].items()}
    snap = _snapshot(pipe)

    # Step 0: the copy renders as the pipe with its adapter, at the input view and at a novel view.
    start = pti_invert(pipe, image, label, w=w, tune_steps=0, progress=False)
    torch.testing.assert_close(start.reconstruction(), with_adapter, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        start.render(yaw=0.3, output_type="pt").images, pipe(ws=w, yaw=0.3, output_type="pt").images, atol=1e-5, rtol=0
    )
    from my3dgen_hf.lora import lora_layers

    assert not lora_layers(start.generator) and not hasattr(start.generator, "peft_config")

    # Tuning (projection included) changes the copy only.
    result = pti_invert(pipe, image, label, w_steps=2, tune_steps=5, early_stop=None, progress=False)
    assert result.steps_run == 5
    assert psnr(result.reconstruction(), image[None]) > psnr(render_at(pipe.generator, result.ws, c), image[None])
    pipe_storages = {p.untyped_storage().data_ptr() for p in pipe.generator.state_dict().values() if p.numel()}
    copy_storages = {p.untyped_storage().data_ptr() for p in result.generator.state_dict().values() if p.numel()}
    assert not pipe_storages & copy_storages

    _assert_same(pipe, snap)
    assert pipe.get_active_adapters() == ["alice"]
    for k, v in extras_before.items():
        assert torch.equal(pipe._extras_deltas()["alice"][k], v)
    after_tensors, after_meta = _read_adapter(pipe.save_lora_weights(tmp_path / "after"))
    assert after_meta == before_file[1] and list(after_tensors) == list(before_file[0])
    for k, v in before_file[0].items():
        assert torch.equal(after_tensors[k], v), k
    torch.testing.assert_close(render_at(pipe.generator, w, c), with_adapter, atol=0, rtol=0)


def test_copy_follows_disabled_mixed_and_fused_adapters(adapted_pipe):
    import warnings

    pipe = adapted_pipe
    w, c = pipe.get_ws(seed=4), pipe.camera(0.2, 0.1)
    pipe.disable_lora()
    prior = render_at(pipe.generator, w, c)
    copy = adapted_generator_copy(pipe)
    torch.testing.assert_close(render_at(copy, w, c), prior, atol=1e-6, rtol=0)
    pipe.enable_lora()
    assert not torch.allclose(render_at(copy, w, c), render_at(pipe.generator, w, c), atol=1e-4)
    # Two adapters mixed with set_adapters weights, then fused: the copy renders as the pipe does.
    train_like(pipe, "bob", 2)
    pipe.set_adapters(["alice", "bob"], [0.5, 0.7])
    mixed = render_at(pipe.generator, w, c)
    torch.testing.assert_close(render_at(adapted_generator_copy(pipe), w, c), mixed, atol=1e-5, rtol=0)
    pipe.fuse_lora()
    fused = render_at(pipe.generator, w, c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy = adapted_generator_copy(pipe)
    torch.testing.assert_close(render_at(copy, w, c), fused, atol=1e-6, rtol=0)


def test_projection_cache_is_reused_per_adapted_generator(adapted_pipe, target, tmp_path):
    image, label = target
    calls = []
    first = pti_invert(adapted_pipe, image, label, w_steps=2, tune_steps=0, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert len(calls) == 2
    again = pti_invert(adapted_pipe, image, label, w_steps=2, tune_steps=0, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert len(calls) == 2 and torch.equal(first.ws, again.ws)
    # The plain prior does not reuse the adapted generator's entry.
    plain = pti_invert(tiny_prior(), image, label, w_steps=2, tune_steps=0, cache_dir=tmp_path, progress=False, callback=calls.append)
    assert len(calls) == 4 and not torch.equal(plain.ws, first.ws)


# ------------------------------------------------------------------------------------------------- control
def test_early_stop_when_the_threshold_is_reached(target):
    image, label = target
    pipe = tiny_prior()
    w = pipe.get_ws(seed=3)
    result = pti_invert(pipe, image, label, w=w, tune_steps=10, early_stop=10.0, progress=False)
    assert result.stopped_early and result.steps_run == 0 and len(result.losses) == 1
    torch.testing.assert_close(result.reconstruction(), render_at(pipe.generator, w, label[None]), atol=0, rtol=0)
    # A threshold between the first and the reachable values stops part-way.
    full = pti_invert(pipe, image, label, w=w, tune_steps=10, early_stop=None, progress=False)
    threshold = (full.losses[0]["perceptual"] + full.losses[-1]["perceptual"]) / 2
    part = pti_invert(pipe, image, label, w=w, tune_steps=10, early_stop=threshold, progress=False)
    assert part.stopped_early and 0 < part.steps_run < 10 and part.losses[-1]["perceptual"] <= threshold
    assert all(e["perceptual"] > threshold for e in part.losses[:-1])


def test_callback_cancels_and_pipe_is_untouched(target):
    image, label = target
    pipe = tiny_prior()
    snap = _snapshot(pipe)
    with pytest.raises(PersonalizationCancelled, match="after 2 steps"):
        pti_invert(pipe, image, label, w=pipe.get_ws(seed=3), tune_steps=5, progress=False, callback=lambda d: d["step"] < 2)
    with pytest.raises(PersonalizationCancelled):
        pti_invert(pipe, image, label, w_steps=4, tune_steps=5, progress=False, callback=lambda d: d["stage"] != "projection")
    _assert_same(pipe, snap)


def test_locality_regularization_runs_and_is_logged(target):
    image, label = target
    pipe = tiny_prior()
    result = pti_invert(
        pipe, image, label, w=pipe.get_ws(seed=3), tune_steps=3, early_stop=None, progress=False, locality_regularization=True,
        locality_alpha=1.0,
    )
    assert result.steps_run == 3 and all("locality" in e for e in result.losses)
    assert result.losses[0]["locality"] == pytest.approx(0.0, abs=1e-6)  # the copy equals the reference at step 0
    assert result.losses[-1]["locality"] > 0


# ------------------------------------------------------------------------------------------------- outputs
def test_orbit_video_and_mesh_of_the_tuned_generator(target, tmp_path):
    import imageio.v3 as iio
    import trimesh

    image, label = target
    pipe = tiny_prior()
    result = pti_invert(pipe, image, label, w=pipe.get_ws(seed=3), tune_steps=2, early_stop=None, progress=False)
    frames = result.render_orbit(num_frames=3)
    assert frames.shape == (3, 128, 128, 3) and frames.dtype == np.uint8
    path = result.save_orbit_video(tmp_path / "orbit.mp4", num_frames=4, fps=4)
    assert iio.imread(path, plugin="FFMPEG").shape == (4, 128, 128, 3)
    pts = torch.rand(1, 2000, 3) - 0.5
    with torch.no_grad():
        sigma = result.generator.sample_mixed(pts, torch.zeros_like(pts), result.ws)["sigma"]
    mesh = result.extract_mesh(resolution=16, level=float(sigma.median()), output_path=tmp_path / "head.ply")
    assert len(mesh.faces) > 0 and trimesh.load(tmp_path / "head.ply").faces.shape == mesh.faces.shape


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(image=torch.zeros(2, 3, 128, 128)), "one RGB image"),
        (dict(image=torch.zeros(1, 1, 128, 128)), "one RGB image"),
        (dict(image=np.zeros((3, 128, 128))), "must be a tensor"),
        (dict(image=torch.zeros(3, 128, 96)), "square"),
        (dict(image=torch.full((3, 128, 128), float("nan"))), "NaN"),
        (dict(label=torch.zeros(24)), "25 values"),
        (dict(label=torch.zeros(2, 25)), "25 values"),
        (dict(tune_steps=-1), "tune_steps must be an integer >= 0"),
        (dict(w_steps=0), "w_steps"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(early_stop=-0.1), "early_stop"),
        (dict(perceptual_weight=float("inf")), "perceptual_weight"),
        (dict(w=torch.zeros(1, 3, 16)), "pivot"),
        (dict(perceptual=3), "perceptual must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(target, change, message):
    image, label = target
    kwargs = dict(image=image, label=label, w_steps=1, tune_steps=1, progress=False)
    kwargs.update(change)
    with pytest.raises(PersonalizationError, match=message):
        pti_invert(tiny_prior(), **kwargs)


def test_projector_settings_need_a_projection(target):
    image, label = target
    pipe = tiny_prior()
    with pytest.raises(TypeError, match="no effect with a given pivot"):
        pti_invert(pipe, image, label, w=pipe.get_ws(seed=0), tune_steps=0, progress=False, initial_learning_rate=0.1)

"""Pipeline-level LoRA API: save/load, extras, mixing, hot-swap, fuse, errors, and Hub round trips."""

import json

import pytest
import torch
from huggingface_hub import ModelCard

from my3dgen_hf.lora.loader import AdapterError, base_model_fingerprint

from hub_fixtures import hub_endpoint, hub_server  # noqa: F401  (pytest fixtures)
from hub_server import WRITE_TOKEN
from test_personalization_helpers import train_like
from tiny import tiny_pipeline


def render(pipe, ws):
    return pipe(ws=ws, yaw=[0.0, 0.3], output_type="pt").images


@pytest.fixture()
def pipe():
    return tiny_pipeline()


def test_fresh_adapter_is_exact_noop(pipe):
    ws = pipe.get_ws(seed=0)
    base = render(pipe, ws)
    pipe.add_identity_adapter("fresh", rank=2)
    assert torch.equal(render(pipe, ws), base)


def test_save_load_gives_identical_renders_and_disable_restores_base(pipe, tmp_path):
    ws = pipe.get_ws(seed=0)
    base = render(pipe, ws)
    train_like(pipe, "alice", 1)
    tuned = render(pipe, ws)
    assert not torch.allclose(tuned, base)
    path = pipe.save_lora_weights(tmp_path / "alice")
    assert path.name == "pytorch_lora_weights.safetensors"

    fresh = tiny_pipeline()
    assert torch.equal(render(fresh, ws), base)
    fresh.load_lora_weights(tmp_path / "alice", adapter_name="alice")
    assert fresh.get_active_adapters() == ["alice"]
    torch.testing.assert_close(render(fresh, ws), tuned, atol=1e-6, rtol=0)
    fresh.disable_lora()
    torch.testing.assert_close(render(fresh, ws), base, atol=1e-6, rtol=0)
    fresh.enable_lora()
    torch.testing.assert_close(render(fresh, ws), tuned, atol=1e-6, rtol=0)
    fresh.unload_lora_weights()
    torch.testing.assert_close(render(fresh, ws), base, atol=1e-6, rtol=0)
    assert not any("lora" in n for n, _ in fresh.generator.named_parameters())


def test_file_format_and_metadata(pipe, tmp_path):
    from safetensors import safe_open

    train_like(pipe, "alice", 1)
    path = pipe.save_lora_weights(tmp_path)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith(("generator.", "generator_extras.")) for k in keys)
    assert any(".lora_A." in k for k in keys) and any(k.startswith("generator_extras.") for k in keys)
    assert meta["generator.r"] == 1 and meta["generator.my3dgen"]["base_model_fingerprint"] == base_model_fingerprint(pipe.generator)


def test_two_identities_mix_linearly_and_hotswap(pipe, tmp_path):
    ws = pipe.get_ws(seed=3)
    train_like(pipe, "a", 1)
    pipe.save_lora_weights(tmp_path / "a", adapter_name="a")
    pipe.delete_adapters("a")
    train_like(pipe, "b", 2)
    pipe.save_lora_weights(tmp_path / "b", adapter_name="b")
    pipe.delete_adapters("b")
    base_params = {n: p.detach().clone() for n, p in pipe._plain_parameters().items()}

    p2 = tiny_pipeline()
    p2.load_lora_weights(tmp_path / "a", adapter_name="a")
    p2.load_lora_weights(tmp_path / "b", adapter_name="b")
    # Weights [1, 0] equal adapter a alone.
    p2.set_adapters(["a", "b"], [1.0, 0.0])
    only_a = render(p2, ws)
    p2.set_adapters(["a"])
    torch.testing.assert_close(render(p2, ws), only_a, atol=1e-6, rtol=0)
    # Extras are linear in the weights: base + 0.3 da + 0.7 db.
    p2.set_adapters(["a", "b"], [0.3, 0.7])
    bias = dict(p2._plain_parameters())["backbone.synthesis.b8.conv0.bias"].detach().clone()
    da = p2._extras_deltas()["a"]["backbone.synthesis.b8.conv0.bias"]
    db = p2._extras_deltas()["b"]["backbone.synthesis.b8.conv0.bias"]
    torch.testing.assert_close(bias, base_params["backbone.synthesis.b8.conv0.bias"] + 0.3 * da + 0.7 * db)

    # Hot-swap: replace identity "a" by "b"'s weights in place, no re-building.
    p3 = tiny_pipeline()
    p3.load_lora_weights(tmp_path / "a", adapter_name="person")
    layer = p3.generator.backbone.synthesis.b8.conv0
    p3.load_lora_weights(tmp_path / "b", adapter_name="person", hotswap=True)
    assert p3.generator.backbone.synthesis.b8.conv0 is layer
    p4 = tiny_pipeline()
    p4.load_lora_weights(tmp_path / "b", adapter_name="b")
    torch.testing.assert_close(render(p3, ws), render(p4, ws), atol=1e-6, rtol=0)


def test_fuse_unfuse(pipe):
    ws = pipe.get_ws(seed=0)
    base_weights = {n: p.detach().clone() for n, p in pipe.generator.named_parameters() if n.endswith("base_layer.weight")}
    train_like(pipe, "alice", 1)
    unfused = render(pipe, ws)
    pipe.fuse_lora(lora_scale=1.0)
    torch.testing.assert_close(render(pipe, ws), unfused, atol=1e-5, rtol=0)
    pipe.unfuse_lora()
    for n, p in pipe.generator.named_parameters():
        if n in base_weights:
            torch.testing.assert_close(p, base_weights[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(render(pipe, ws), unfused, atol=1e-5, rtol=0)


def test_peft_layout_is_accepted(pipe, tmp_path):
    from safetensors.torch import save_file

    from my3dgen_hf.lora import config_to_metadata, get_adapter_state_dict

    ws = pipe.get_ws(seed=0)
    pipe.add_identity_adapter("alice", rank=1, train_extras=False)
    with torch.no_grad():
        for n, p in pipe.generator.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.05)
    tuned = render(pipe, ws)
    out = tmp_path / "peft"
    out.mkdir()
    save_file({f"base_model.model.{k}": v.contiguous() for k, v in get_adapter_state_dict(pipe.generator, "alice").items()},
              str(out / "adapter_model.safetensors"))
    meta = config_to_metadata(pipe.generator.peft_config["alice"])
    (out / "adapter_config.json").write_text(json.dumps(meta))
    fresh = tiny_pipeline()
    fresh.load_lora_weights(out, adapter_name="alice")
    torch.testing.assert_close(render(fresh, ws), tuned, atol=1e-6, rtol=0)


def test_clear_errors(pipe, tmp_path):
    train_like(pipe, "alice", 1)
    path = pipe.save_lora_weights(tmp_path / "ok")
    truncated = tmp_path / "bad" / "pytorch_lora_weights.safetensors"
    truncated.parent.mkdir()
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        tiny_pipeline().load_lora_weights(truncated.parent)
    with pytest.raises(AdapterError, match="another base model"):
        tiny_pipeline(seed=1).load_lora_weights(tmp_path / "ok")
    other = tiny_pipeline(channel_max=8)
    with pytest.raises(AdapterError):
        other.load_lora_weights(tmp_path / "ok")
    with pytest.raises(AdapterError, match="no adapter weights"):
        tiny_pipeline().load_lora_weights(tmp_path)
    with pytest.raises(AdapterError, match="neither an existing local"):
        tiny_pipeline().load_lora_weights("./does/not/exist")
    p = tiny_pipeline()
    p.load_lora_weights(tmp_path / "ok", adapter_name="x")
    with pytest.raises(AdapterError, match="already loaded"):
        p.load_lora_weights(tmp_path / "ok", adapter_name="x")
    # A failed save never leaves a partial file behind.
    with pytest.raises(Exception):
        pipe.save_lora_weights(tmp_path / "ok", generator_lora_layers={"x": object()})
    assert sorted(f.name for f in (tmp_path / "ok").iterdir()) == ["pytorch_lora_weights.safetensors"]


def test_push_pull_through_loopback_hub(pipe, hub_endpoint, tmp_path):  # noqa: F811
    from my3dgen_hf.hub import push_adapter_to_hub

    ws = pipe.get_ws(seed=0)
    train_like(pipe, "alice", 1)
    tuned = render(pipe, ws)
    url = push_adapter_to_hub(pipe, "hub-test-user/alice-adapter", token=WRITE_TOKEN, base_model="my3dgen-hf/tiny-test-prior")
    assert "alice-adapter" in url
    fresh = tiny_pipeline()
    fresh.load_lora_weights("hub-test-user/alice-adapter", adapter_name="alice", token=WRITE_TOKEN)
    torch.testing.assert_close(render(fresh, ws), tuned, atol=1e-6, rtol=0)

    from huggingface_hub import hf_hub_download

    card = ModelCard.load(hf_hub_download("hub-test-user/alice-adapter", "README.md", token=WRITE_TOKEN))
    assert card.data.base_model == "my3dgen-hf/tiny-test-prior" and card.data.library_name == "my3dgen-hf"
    assert {"my3dgen", "eg3d", "lora", "3d"} <= set(card.data.tags)
    assert "load_lora_weights" in card.text and "samples.png" in card.text
    hf_hub_download("hub-test-user/alice-adapter", "samples.png", token=WRITE_TOKEN)

    with pytest.raises(AdapterError, match="not found"):
        fresh.load_lora_weights("hub-test-user/missing", adapter_name="m", token=WRITE_TOKEN)
    with pytest.raises(AdapterError, match="revision"):
        fresh.load_lora_weights("hub-test-user/alice-adapter", adapter_name="r", revision="nope", token=WRITE_TOKEN)
    with pytest.raises(AdapterError, match="token"):
        push_adapter_to_hub(pipe, "hub-test-user/no-token", token=None, base_model="x/y")


def test_offline_with_nothing_cached_is_clear(pipe, monkeypatch, tmp_path):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AdapterError, match="offline"):
        pipe.load_lora_weights("someone/never-downloaded", adapter_name="x")

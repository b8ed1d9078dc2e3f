"""Convolutional LoRA (my3dgen_hf.lora) on tiny EG3D generators: exactness, merging, PEFT/diffusers integration."""

import copy
import json
import math
import warnings

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from tiny import tiny_generator

import my3dgen_hf.lora.layers as lora_layers_module
from my3dgen_hf import EG3DGenerator
from my3dgen_hf.eg3d.camera import sample_camera_label
from my3dgen_hf.eg3d.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    SynthesisLayer,
    ToRGBLayer,
)
from my3dgen_hf.lora import (
    Conv2dLoraLayer,
    FullyConnectedLoraLayer,
    ModulatedConvLoraLayer,
    My3DGenLoraConfig,
    add_my3dgen_adapter,
    config_from_metadata,
    config_to_metadata,
    count_trainable_parameters,
    extra_trainable_parameter_names,
    get_adapter_state_dict,
    infer_config_from_state_dict,
    lora_layers,
    mark_extras_trainable,
    merge_and_unload,
    my3dgen_lora_config,
    register_eg3d_lora_layers,
    set_adapter_state_dict,
)

FULL_FFHQ512 = dict(
    sr_num_fp16_res=4,
    mapping_kwargs={"num_layers": 2},
    num_fp16_res=0,
    conv_clamp=None,
    sr_kwargs={"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
    neural_rendering_resolution=128,
)


@pytest.fixture(autouse=True)
def _quiet_peft():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        yield


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(123)
    z = torch.randn(1, 16, generator=g)
    c = sample_camera_label(0.25, -0.1)
    return z, c


def render(G, inputs):
    z, c = inputs
    with torch.no_grad():
        out = G(z, c)  # mapping + synthesis + rendering + SR (eval: const noise, deterministic sampling)
    return {k: out[k] for k in ("image", "image_raw")}


def assert_renders(a, b, exact=False, atol=1e-5):
    for k in ("image", "image_raw"):
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


def randomize(G, adapter, std=0.2, seed=0):
    """Random A and B (a fresh adapter has B = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(G):
            for name in layer.adapter_layer_names:
                d = getattr(layer, name)
                if adapter in d and hasattr(d[adapter], "weight"):
                    w = d[adapter].weight
                    w.copy_(torch.randn(w.shape, generator=g) * std / math.sqrt(w.shape[1]))


def independent_merged_state(G_lora, adapters_weights):
    """Plain-model state dict with W + sum_i w_i * scale_i * dW_i computed here from the stored factors only."""
    sd = {}
    for name, layer in lora_layers(G_lora):
        base = layer.get_base_layer()
        W = base.weight.detach().clone()
        aff = base.affine.weight.detach().clone() if hasattr(base, "affine") else None
        for adapter, weight in adapters_weights.items():
            if adapter not in layer.lora_A:
                continue
            s = weight * layer.lora_alpha[adapter] / layer.r[adapter]
            A, B = layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()
            if isinstance(base, FullyConnectedLayer):
                W += s * (B @ A) / base.weight_gain  # effective-weight delta, no equalized-lr gain
            else:
                W += s * (B @ A).view(W.shape)  # stored-weight delta before (de)modulation
            if aff is not None and adapter in layer.lora_affine_A:
                Aa, Ba = layer.lora_affine_A[adapter].weight.detach(), layer.lora_affine_B[adapter].weight.detach()
                aff += s * (Ba @ Aa) / base.affine.weight_gain
        sd[f"{name}.weight"] = W
        if aff is not None:
            sd[f"{name}.affine.weight"] = aff
    return sd


# ---------------------------------------------------------------------------------------------------------------------


def test_fresh_adapter_is_exact_noop(inputs):
    G = tiny_generator()
    ref = render(G, inputs)
    add_my3dgen_adapter(G, my3dgen_lora_config(rank=2, mapping=True, decoder=True), "a")
    assert isinstance(G.backbone.synthesis.b8.conv0, ModulatedConvLoraLayer)  # up=2 modulated conv
    assert isinstance(G.backbone.synthesis.b8.torgb, ModulatedConvLoraLayer)
    assert isinstance(G.superresolution.block0.conv0, ModulatedConvLoraLayer)  # SR 2X: up=1
    assert isinstance(G.backbone.mapping.fc0, FullyConnectedLoraLayer)
    assert isinstance(G.decoder.net[0], FullyConnectedLoraLayer)
    assert isinstance(G.backbone.synthesis.b8.conv0.base_layer.affine, FullyConnectedLayer)  # affine not wrapped
    assert repr(G.backbone.synthesis.b8.conv0).startswith("lora.ModulatedConvLoraLayer")
    assert_renders(render(G, inputs), ref, exact=True)
    # loralib decomposition: fresh adapter is a no-op as well
    G2 = tiny_generator()
    add_my3dgen_adapter(G2, my3dgen_lora_config(rank=1, decomposition="loralib"), "a")
    assert_renders(render(G2, inputs), ref, exact=True)


@pytest.mark.parametrize("decomposition, architecture", [("im2col", "skip"), ("loralib", "skip"), ("my3dgen", "resnet")])
def test_unfused_equals_independently_merged_and_merge_unmerge_restores(inputs, decomposition, architecture):
    G = tiny_generator(architecture=architecture)
    plain = copy.deepcopy(G)
    base_sd = {k: v.clone() for k, v in G.state_dict().items()}
    cfg = my3dgen_lora_config(rank=2, alpha=3, mapping=True, decoder=True, decomposition=decomposition)
    add_my3dgen_adapter(G, cfg, "a")
    randomize(G, "a")
    out = render(G, inputs)
    assert (out["image"] - render(plain, inputs)["image"]).abs().max() > 1e-2  # the adapter does something

    expected = independent_merged_state(G, {"a": 1.0})
    merged_plain = copy.deepcopy(plain)
    merged_plain.load_state_dict(expected, strict=False)
    assert_renders(render(merged_plain, inputs), out, atol=1e-5)

    layers = dict(lora_layers(G))
    for layer in layers.values():
        layer.merge()
    assert all(layer.merged for layer in layers.values())
    for name, layer in layers.items():
        base = layer.get_base_layer()
        torch.testing.assert_close(base.weight.data, expected[f"{name}.weight"], atol=1e-6, rtol=1e-6)
        if f"{name}.affine.weight" in expected:
            torch.testing.assert_close(base.affine.weight.data, expected[f"{name}.affine.weight"], atol=1e-6, rtol=1e-6)
    assert_renders(render(G, inputs), out, atol=1e-5)
    for layer in layers.values():
        layer.unmerge()
    checked = 0
    for name, layer in layers.items():
        base = layer.get_base_layer()
        # mapping weights are stored / lr_mul (|W| ~ 300): compare relative to their magnitude
        torch.testing.assert_close(base.weight.data, base_sd[f"{name}.weight"], atol=1e-6, rtol=1e-6)
        checked += 1
        if hasattr(base, "affine"):
            torch.testing.assert_close(base.affine.weight.data, base_sd[f"{name}.affine.weight"], atol=1e-6, rtol=1e-6)
            checked += 1
    kinds = {type(l.get_base_layer()) for l in layers.values()}
    if architecture == "skip":
        assert kinds == {SynthesisLayer, ToRGBLayer, FullyConnectedLayer}
        assert checked == 26 * 2 + 3 + 2  # 26 modulated convs + their affines, mapping fc0/fc1/embed, decoder
    else:  # 'resnet': 1x1 up-sampling skip Conv2dLayers, ToRGB only in the last block
        assert kinds == {SynthesisLayer, ToRGBLayer, FullyConnectedLayer, Conv2dLayer}
        assert isinstance(G.backbone.synthesis.b8.skip, Conv2dLoraLayer)
    assert_renders(render(G, inputs), out, atol=1e-5)  # W + d - d is W only up to rounding


def test_merge_and_unload_gives_plain_generator(inputs):
    G = tiny_generator()
    keys = list(G.state_dict())
    add_my3dgen_adapter(G, my3dgen_lora_config(rank=2, mapping=True), "a")
    randomize(G, "a")
    out = render(G, inputs)
    G2 = copy.deepcopy(G)

    merged = merge_and_unload(G)
    assert type(merged) is EG3DGenerator and not lora_layers(merged)
    assert list(merged.state_dict()) == keys
    assert not hasattr(merged, "peft_config")
    assert_renders(render(merged, inputs), out, atol=1e-5)
    fresh = EG3DGenerator(**merged.config).eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    assert_renders(render(fresh, inputs), out, atol=1e-5)

    # diffusers' own path: fuse_lora (our merge, affines included) + unload_lora
    G2.fuse_lora()
    G2.unload_lora()
    assert not lora_layers(G2) and list(G2.state_dict()) == keys
    assert_renders(render(G2, inputs), out, atol=1e-5)


def test_multiple_adapters_mix_linearly(inputs):
    G = tiny_generator()
    ref = render(G, inputs)
    add_my3dgen_adapter(G, my3dgen_lora_config(rank=2, train_extras=False, mapping=True), "a")
    add_my3dgen_adapter(G, my3dgen_lora_config(rank=3, alpha=1, train_extras=False), "b")
    randomize(G, "a", seed=1)
    randomize(G, "b", seed=2)

    G.set_adapter("a")
    out_a = render(G, inputs)
    G.set_adapters(["a", "b"], [1.0, 0.0])
    assert_renders(render(G, inputs), out_a, atol=1e-6)

    layer = G.backbone.synthesis.b16.conv0
    G.set_adapters(["a", "b"], [1.0, 1.0])
    da, db = layer.get_delta_weight("a"), layer.get_delta_weight("b")
    fa, fb = layer.get_affine_delta_weight("a"), layer.get_affine_delta_weight("b")
    w1, w2 = 0.7, -1.3
    G.set_adapters(["a", "b"], [w1, w2])
    torch.testing.assert_close(layer.active_delta_weight(), w1 * da + w2 * db, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.active_affine_delta_weight(), w1 * fa + w2 * fb, atol=1e-6, rtol=1e-6)
    out_mix = render(G, inputs)
    expected = independent_merged_state(G, {"a": w1, "b": w2})
    plain = tiny_generator()
    plain.load_state_dict(expected, strict=False)
    assert_renders(render(plain, inputs), out_mix, atol=1e-5)

    G.delete_adapters("b")
    G.set_adapters(["a"], [1.0])  # set_adapter alone keeps the last set_adapters weight (diffusers/PEFT semantics)
    assert "b" not in layer.lora_A and "b" not in layer.lora_affine_A and "b" not in layer.scaling
    assert_renders(render(G, inputs), out_a, atol=1e-6)
    G.delete_adapters("a")
    assert_renders(render(G, inputs), ref, exact=True)


def test_layer_level_mixed_batch_forward():
    torch.manual_seed(0)
    layer_base = SynthesisLayer(4, 5, w_dim=6, resolution=8, up=2)
    cfg = my3dgen_lora_config(rank=2, init_lora_weights=False)
    layer = ModulatedConvLoraLayer(layer_base, "a", config=cfg, r=2, lora_alpha=2)
    x, w = torch.randn(3, 4, 4, 4), torch.randn(3, 6)
    kw = dict(noise_mode="const", fused_modconv=True)
    mixed = layer(x, w, adapter_names=["a", "__base__", "a"], **kw)
    with_a = layer(x, w, **kw)
    base = layer_base(x, w, **kw)
    torch.testing.assert_close(mixed[[0, 2]], with_a[[0, 2]])
    torch.testing.assert_close(mixed[1], base[1])


def test_peft_state_dict_round_trip_and_adapter_files(inputs):
    cfg = my3dgen_lora_config(rank=2, mapping=True)
    G1 = tiny_generator()
    add_my3dgen_adapter(G1, cfg, "x")
    randomize(G1, "x", seed=5)
    out = render(G1, inputs)

    sd = get_peft_model_state_dict(G1, adapter_name="x")
    assert "backbone.synthesis.b8.conv0.lora_A.weight" in sd and "backbone.synthesis.b8.conv0.lora_affine_B.weight" in sd
    assert "backbone.mapping.fc0.lora_B.weight" in sd
    assert not any(".x." in k or "base_layer" in k for k in sd)
    assert sd["backbone.synthesis.b8.conv0.lora_A.weight"].shape == (2, 16 * 9)  # im2col A [r, C_in k k]
    G2 = tiny_generator()
    add_my3dgen_adapter(G2, my3dgen_lora_config(rank=2, mapping=True), "y")  # fresh adapter, other name
    result = set_peft_model_state_dict(G2, sd, adapter_name="y")
    assert not result.unexpected_keys
    assert_renders(render(G2, inputs), out, exact=True)

    # with extras: our helpers, a config re-created from JSON metadata, a fresh model
    with torch.no_grad():
        G1.backbone.synthesis.b4.const.add_(0.5)
        G1.backbone.synthesis.b8.conv0.base_layer.bias.add_(0.1)
        G1.superresolution.block1.torgb.base_layer.affine.bias.add_(0.2)
    out_extras = render(G1, inputs)
    full = get_adapter_state_dict(G1, "x")
    extras = set(extra_trainable_parameter_names(G1, "x"))
    assert set(full) == set(sd) | extras
    assert {"backbone.synthesis.b4.const", "backbone.synthesis.b8.conv0.bias", "backbone.synthesis.b8.conv0.noise_strength",
            "backbone.synthesis.b8.conv0.affine.bias", "superresolution.block1.torgb.affine.bias"} <= extras
    meta = json.loads(json.dumps(config_to_metadata(cfg)))
    assert meta["format_version"] == 1 and meta["decomposition"] == "im2col" and meta["train_extras"] is True
    G3 = tiny_generator()
    loaded = set_adapter_state_dict(G3, full, adapter_name="person", config=meta)
    assert not loaded["missing_keys"] and not loaded["unexpected_keys"] and len(loaded["extras"]) == len(extras)
    assert_renders(render(G3, inputs), out_extras, exact=True)
    assert "backbone.synthesis.b4.const" in get_adapter_state_dict(G3, "person")
    with pytest.raises(RuntimeError, match="unexpected"):
        set_adapter_state_dict(G3, {**full, "nonexistent.weight": torch.zeros(1)}, adapter_name="person")


def test_config_metadata_round_trip_and_registration():
    cfg = my3dgen_lora_config(rank=4, alpha=1, decomposition="loralib", style_affine=False, train_extras=False, use_rslora=True)
    meta = config_to_metadata(cfg)
    back = config_from_metadata(json.dumps(meta))
    assert isinstance(back, My3DGenLoraConfig) and isinstance(back, LoraConfig)
    assert back.to_dict() == cfg.to_dict()
    assert back._custom_modules and back._custom_modules[SynthesisLayer] is ModulatedConvLoraLayer
    assert set(meta["lora_config"]).isdisjoint({"decomposition", "style_affine", "train_extras"})
    LoraConfig(**meta["lora_config"])  # the PEFT part alone is a valid LoraConfig
    # registration is idempotent and works on a plain LoraConfig
    plain = LoraConfig(r=1, target_modules=r".*b8\.conv1")
    assert register_eg3d_lora_layers(plain) is plain
    mapping = dict(plain._custom_modules)
    register_eg3d_lora_layers(plain)
    assert plain._custom_modules == mapping and len(mapping) == 4
    G = tiny_generator()
    G.add_adapter(plain, "p")
    assert isinstance(G.backbone.synthesis.b8.conv1, ModulatedConvLoraLayer)
    with pytest.raises(ValueError, match="decomposition"):
        my3dgen_lora_config(decomposition="nope")
    with pytest.raises(ValueError):
        add_my3dgen_adapter(tiny_generator(), LoraConfig(r=1, target_modules=r".*b8\.conv1", use_dora=True))


def test_loralib_decomposition_differs_from_im2col():
    torch.manual_seed(0)
    base = SynthesisLayer(16, 16, w_dim=8, resolution=8)
    ranks = {}
    for dec in ("im2col", "my3dgen", "loralib"):
        cfg = my3dgen_lora_config(rank=1, decomposition=dec, init_lora_weights=False)
        layer = ModulatedConvLoraLayer(copy.deepcopy(base), "a", config=cfg, r=1, lora_alpha=1)
        a, b = layer.lora_A["a"].weight.shape, layer.lora_B["a"].weight.shape
        ranks[dec] = (a, b, torch.linalg.matrix_rank(layer.get_delta_weight("a").reshape(16, -1)).item())
    assert ranks["im2col"] == ((1, 144), (16, 1), 1)
    assert ranks["my3dgen"] == ((3, 144), (16, 3), 3)
    assert ranks["loralib"][:2] == ((3, 48), (48, 3)) and ranks["loralib"][2] > 3  # the .view scrambles the kernel
    # the same factors read both ways: loralib's view is not the im2col reshape of B A
    A, B = torch.randn(3, 48), torch.randn(48, 3)
    loralib = (B @ A).view(16, 16, 3, 3)
    assert torch.linalg.matrix_rank(loralib.reshape(16, -1)) > 3
    # 1x1 ToRGB: all decompositions coincide
    t = ModulatedConvLoraLayer(ToRGBLayer(16, 3, w_dim=8), "a", config=my3dgen_lora_config(decomposition="loralib"), r=1, lora_alpha=1)
    assert t.lora_A["a"].weight.shape == (1, 16) and t.lora_B["a"].weight.shape == (3, 1)


# (decomposition, rank, extras) -> trainable parameters of the full ffhq512-128 generator (30,662,136 parameters)
EXPECTED_COUNTS = {
    ("im2col", 1, True): 115_901, ("im2col", 1, False): 91_110,
    ("im2col", 4, True): 389_231, ("im2col", 4, False): 364_440,
    ("im2col", 16, True): 1_482_551, ("im2col", 16, False): 1_457_760,
    ("my3dgen", 1, True): 243_965, ("my3dgen", 1, False): 219_174,  # paper: 240K ("rank 1")
    ("my3dgen", 4, True): 901_487, ("my3dgen", 4, False): 876_696,  # paper: 0.9M
    ("my3dgen", 16, True): 3_531_575, ("my3dgen", 16, False): 3_506_784,  # paper: 3.5M
    ("loralib", 1, True): 165_053,
}


def test_trainable_parameter_counts_full_ffhq512_config():
    rows = []
    for (dec, rank, extras), expected in EXPECTED_COUNTS.items():
        G = EG3DGenerator(**FULL_FFHQ512)
        if (dec, rank, extras) == ("im2col", 1, True):
            assert sum(p.numel() for p in G.parameters()) == 30_662_136
        add_my3dgen_adapter(G, my3dgen_lora_config(rank=rank, decomposition=dec, train_extras=extras), "a")
        counts = count_trainable_parameters(G)
        rows.append(f"{dec:8s} r={rank:<3d} extras={extras!s:5s} total={counts['total']:>9,d} lora={counts['lora']:>9,d} extras={counts['extras']:>6,d}")
        assert counts["total"] == expected, rows[-1]
        assert counts["extras"] == (24_791 if extras else 0)
        assert counts["total"] == counts["lora"] + counts["extras"]
        assert sum(b["total"] for b in counts["blocks"].values()) == counts["total"]
        assert set(counts["blocks"]) == {f"synthesis.b{2**i}" for i in range(2, 9)} | {"superresolution.block0", "superresolution.block1"}
        if (dec, rank, extras) == ("my3dgen", 1, True):
            # the original code's printout: backbone LoRA 175,264 + 18,944, SR 20,838 + 4,128
            sr = sum(counts["blocks"][f"superresolution.block{i}"]["lora"] for i in (0, 1))
            assert sr == 20_838 + 4_128 and counts["lora"] - sr == 175_264 + 18_944
            assert counts["blocks"]["synthesis.b4"]["extras"] == 8_192 + (512 + 1 + 512) + (96 + 512)  # const, conv1, torgb
    print("\n" + "\n".join(rows))


def test_gradients_reach_only_lora_and_extras(inputs):
    z, c = inputs
    for train_extras in (True, False):
        G = tiny_generator()
        add_my3dgen_adapter(G, my3dgen_lora_config(rank=2, train_extras=train_extras, init_lora_weights=False), "a")
        lora_names = {n for n, _ in G.named_parameters() if ".lora_" in n}
        extras = set(extra_trainable_parameter_names(G, "a")) if train_extras else set()
        trainable = {n for n, p in G.named_parameters() if p.requires_grad}
        assert trainable == lora_names | _live_names(G, extras)
        out = G(z, c)
        (out["image"].square().mean() + out["image_raw"].mean()).backward()
        for n, p in G.named_parameters():
            if n in trainable:
                if n.startswith("superresolution") and n.endswith("noise_strength"):
                    continue  # SR runs with noise_mode 'none' (as in the original): no gradient
                assert p.grad is not None and p.grad.abs().sum() > 0, n
            else:
                assert p.grad is None, n
        counts = count_trainable_parameters(G)
        assert counts["extras"] == sum(p.numel() for n, p in G.named_parameters() if n in trainable and n not in lora_names)
    # mark_extras_trainable can switch them off again
    names = mark_extras_trainable(G, True, "a")
    assert names and all(p.requires_grad for n, p in G.named_parameters() if n in _live_names(G, names))
    mark_extras_trainable(G, my3dgen_lora_config(train_extras=False), "a")
    assert count_trainable_parameters(G)["extras"] == 0


def _live_names(G, plain_names):
    from my3dgen_hf.lora import original_name

    return {n for n, _ in G.named_parameters() if original_name(G, n) in plain_names}


def test_disable_enable_and_extras_mixing_warning(inputs):
    G = tiny_generator()
    ref = render(G, inputs)
    add_my3dgen_adapter(G, my3dgen_lora_config(rank=2), "a")
    randomize(G, "a")
    out = render(G, inputs)
    G.disable_adapters()
    assert_renders(render(G, inputs), ref, exact=True)
    assert not any(p.requires_grad for n, p in G.named_parameters() if ".lora_" in n)
    G.enable_adapters()
    assert_renders(render(G, inputs), out, exact=True)
    assert all(p.requires_grad for n, p in G.named_parameters() if ".lora_" in n)
    # merged + disabled: PEFT semantics (unmerge on the fly)
    G.fuse_lora()
    assert_renders(render(G, inputs), out, atol=1e-5)
    G.disable_lora()
    assert_renders(render(G, inputs), ref, atol=1e-5)  # unmerged on the fly: W + d - d
    G.enable_lora()
    assert_renders(render(G, inputs), out, atol=1e-5)

    add_my3dgen_adapter(G, my3dgen_lora_config(rank=1), "b")
    lora_layers_module._WARNED.discard(("extras", ("a", "b")))
    with pytest.warns(UserWarning, match="train_extras=True"):
        G.set_adapters(["a", "b"], [0.5, 0.5])


@pytest.mark.parametrize("decomposition", ["im2col", "my3dgen", "loralib"])
def test_config_inferred_from_state_dict_or_peft_dict(inputs, decomposition):
    cfg = my3dgen_lora_config(rank=2, alpha=3, mapping=True, decomposition=decomposition, train_extras=False)
    G = tiny_generator()
    add_my3dgen_adapter(G, cfg, "person")
    randomize(G, "person", seed=3)
    out = render(G, inputs)
    lora = get_adapter_state_dict(G, "person", include_extras=False)
    assert set(lora) == set(get_adapter_state_dict(G, "person"))  # train_extras=False: nothing else
    with pytest.warns(UserWarning, match="lora_alpha"):
        inferred = infer_config_from_state_dict(lora)
    assert (inferred.r, inferred.decomposition, inferred.style_affine) == (2, decomposition, True)
    # metadata written by a loader (extra keys) and a plain PEFT dict (adapter_config.json) both work
    meta = {**config_to_metadata(cfg), "my3dgen": {"base_model_fingerprint": "x"}}
    peft_dict = {k: v for k, v in config_to_metadata(cfg)["lora_config"].items()}
    for c2 in (config_from_metadata(meta, lora), config_from_metadata(peft_dict, lora)):
        assert (c2.r, c2.lora_alpha, c2.decomposition, c2.style_affine) == (2, 3, decomposition, True)
        G2 = tiny_generator()
        G2.add_adapter(c2, "other")
        set_adapter_state_dict(G2, lora, "other")
        assert_renders(render(G2, inputs), out, exact=True)
    with pytest.raises(ValueError, match="no adapter metadata"):
        config_from_metadata({})

"""Properties of the pure-PyTorch ops and of general EG3D configurations (not only the fixture's)."""

import math

import pytest
import torch

from my3dgen_hf.eg3d import ops
from my3dgen_hf.eg3d.camera import sample_camera_label
from my3dgen_hf.eg3d.renderer import ImportanceRenderer, sample_pdf

from tiny import tiny_generator


def test_setup_filter_is_normalized_outer_product():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert f.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(f, torch.outer(torch.tensor([1, 3, 3, 1.0]), torch.tensor([1, 3, 3, 1.0])) / 64)


def test_upsample2d_preserves_constant_signal_and_doubles_size():
    x = torch.full([1, 2, 8, 8], 3.0)
    y = ops.upsample2d(x, ops.setup_filter([1, 3, 3, 1]))
    assert y.shape == (1, 2, 16, 16)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))
    z = ops.downsample2d(y, ops.setup_filter([1, 3, 3, 1]))
    assert z.shape == (1, 2, 8, 8)


def test_bias_act_order_gain_then_clamp():
    x = torch.tensor([[-2.0, 1.0, 300.0]])
    y = ops.bias_act(x, torch.tensor([1.0]), dim=0, act="lrelu", clamp=256)
    expected = torch.tensor([[-0.2 * math.sqrt(2), 2 * math.sqrt(2), 256.0]])
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_and_per_sample_modulated_conv_agree(up, demodulate):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8)
    weight = torch.randn(7, 5, 3, 3)
    styles = torch.randn(3, 5)
    noise = torch.randn(3, 1, 8 * up, 8 * up)
    f = ops.setup_filter([1, 3, 3, 1])
    kw = dict(noise=noise, up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=up == 1)
    fused = ops.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    per_sample = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    assert fused.shape == (3, 7, 8 * up, 8 * up)
    torch.testing.assert_close(fused, per_sample, atol=1e-5, rtol=1e-5)


def test_modulated_conv_equals_explicit_per_sample_convolution():
    torch.manual_seed(1)
    x, weight, styles = torch.randn(2, 4, 6, 6), torch.randn(3, 4, 3, 3), torch.randn(2, 4)
    out = ops.modulated_conv2d(x, weight, styles, padding=1)
    for i in range(2):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(out[i : i + 1], torch.nn.functional.conv2d(x[i : i + 1], w, padding=1), atol=1e-5, rtol=1e-5)


def test_sample_pdf_deterministic_is_inverse_cdf():
    bins = torch.linspace(0, 1, 5).expand(2, 5)
    weights = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    s = sample_pdf(bins, weights, 5, deterministic=True)
    torch.testing.assert_close(s[0], torch.linspace(0, 1, 5), atol=1e-4, rtol=0)  # uniform pdf -> identity map
    inner = s[1, 1:-1]  # u = 0 and u = 1 fall on the degenerate ends of the cdf
    assert ((inner >= 0.5 - 1e-3) & (inner <= 0.75 + 1e-3)).all()  # all mass in [0.5, 0.75]


def test_stratified_sampling_jitter_only_when_not_deterministic():
    o = torch.zeros(1, 4, 3)
    det = ImportanceRenderer.sample_stratified(o, 2.0, 3.0, 6, deterministic=True)
    torch.testing.assert_close(det[0, 0, :, 0], torch.linspace(2, 3, 6))
    rnd = ImportanceRenderer.sample_stratified(o, 2.0, 3.0, 6, deterministic=False)
    assert not torch.equal(det, rnd) and (rnd >= det).all() and (rnd <= det + 0.2 + 1e-6).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"channel_max": 8, "mapping_kwargs": {"num_layers": 4}},
        {"neural_rendering_resolution": 64},
        {"rendering_kwargs": {"superresolution_module": "SuperresolutionHybrid2X", "c_gen_conditioning_zero": True,
                              "depth_resolution": 8, "depth_resolution_importance": 8}},
        {"img_resolution": 256, "rendering_kwargs": {"superresolution_module": "SuperresolutionHybrid4X",
                                                     "depth_resolution": 8, "depth_resolution_importance": 8}},
        {"c_dim": 0},
    ],
)
def test_general_configurations_render(overrides):
    G = tiny_generator(**overrides)
    n = 3
    c = sample_camera_label(torch.tensor([0.0, 0.3, -0.3]), 0.1)
    z = torch.randn(n, G.z_dim)
    with torch.no_grad():
        ws = G.mapping(z, c if G.c_dim else torch.zeros(n, 0))
        out = G.synthesis(ws, c)
    r = G.neural_rendering_resolution
    assert ws.shape == (n, G.num_ws, G.w_dim)
    assert out["image"].shape == (n, 3, G.img_resolution, G.img_resolution)
    assert out["image_raw"].shape == (n, 3, r, r) and out["image_depth"].shape == (n, 1, r, r)
    assert torch.isfinite(out["image"]).all()
    rk = G.rendering_kwargs
    assert ((out["image_depth"] >= rk["ray_start"] - 1e-4) & (out["image_depth"] <= rk["ray_end"] + 1e-4)).all()
    if overrides.get("rendering_kwargs", {}).get("c_gen_conditioning_zero"):
        torch.testing.assert_close(ws, G.mapping(z, torch.zeros_like(c)))


def test_batch_elements_are_independent():
    G = tiny_generator()
    z = torch.randn(3, G.z_dim)
    c = sample_camera_label(torch.tensor([0.0, 0.2, -0.2]), 0.0)
    with torch.no_grad():
        batched = G(z, c)["image"]
        single = G(z[1:2], c[1:2])["image"]
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=1e-5)


def test_truncation_cutoff_only_touches_first_ws():
    G = tiny_generator()
    G.backbone.mapping.w_avg.normal_()
    z, c = torch.randn(2, G.z_dim), sample_camera_label(0.0, 0.0).repeat(2, 1)
    full = G.mapping(z, c)
    cut = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=3)
    w_avg = G.backbone.mapping.w_avg
    torch.testing.assert_close(cut[:, :3], w_avg + 0.5 * (full[:, :3] - w_avg))
    torch.testing.assert_close(cut[:, 3:], full[:, 3:])
    torch.testing.assert_close(G.mapping(z, c, truncation_psi=0.0), w_avg.expand_as(full))


def test_train_mode_uses_random_noise_and_jitter():
    G = tiny_generator().train()
    z, c = torch.randn(1, G.z_dim), sample_camera_label(0.0, 0.0)
    a, b = G(z, c)["image_raw"], G(z, c)["image_raw"]
    assert not torch.equal(a, b)
    G.eval()
    with torch.no_grad():
        assert torch.equal(G(z, c)["image_raw"], G(z, c)["image_raw"])


def test_gradients_flow_to_all_parameters_in_training():
    G = tiny_generator().train()
    out = G(torch.randn(2, G.z_dim), sample_camera_label(torch.tensor([0.1, -0.1]), 0.0))
    (out["image"].square().mean() + out["image_raw"].mean()).backward()
    no_grad = {n for n, p in G.named_parameters() if p.grad is None}
    # Everything gets gradients except the SR noise strengths: the SR runs with superresolution_noise_mode='none'.
    assert no_grad == {n for n, _ in G.named_parameters() if n.startswith("superresolution") and n.endswith("noise_strength")}


def test_full_ffhq512_config_builds_and_renders(capsys):
    torch.manual_seed(0)
    from my3dgen_hf import EG3DGenerator

    G = EG3DGenerator(
        sr_num_fp16_res=4, mapping_kwargs={"num_layers": 2}, num_fp16_res=0, conv_clamp=None,
        sr_kwargs={"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
        neural_rendering_resolution=128,
    ).eval()
    n_params = sum(p.numel() for p in G.parameters())
    with capsys.disabled():
        print(f"\nfull ffhq512 EG3D generator: {n_params:,} parameters")
    assert n_params == 30_662_136
    with torch.no_grad():
        out = G(torch.randn(1, 512), sample_camera_label(0.0, 0.0), truncation_psi=0.7, neural_rendering_resolution=32)
    assert out["image"].shape == (1, 3, 512, 512) and torch.isfinite(out["image"]).all()


def test_raw_image_aliasing_of_no_up_superresolution_is_reproduced_and_switchable():
    # 2X SR at its native input resolution: the original returns image_raw = rgb + block0's ToRGB output.
    G = tiny_generator(neural_rendering_resolution=64)
    z, c = torch.randn(1, G.z_dim), sample_camera_label(0.0, 0.0)
    with torch.no_grad():
        aliased = G(z, c)
        G.rendering_kwargs["reproduce_raw_aliasing"] = False
        plain = G(z, c)
        ws = G.mapping(z, c)
        planes = G.synthesize_planes(ws)
    assert torch.equal(aliased["image"], plain["image"])
    assert not torch.allclose(aliased["image_raw"], plain["image_raw"])
    # The plain raw image is the volume-rendered RGB, whatever the SR does.
    feats, _, _ = G.renderer(planes, G.decoder, *G.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), 64), G.rendering_kwargs, True)
    torch.testing.assert_close(plain["image_raw"], feats.permute(0, 2, 1).reshape(1, -1, 64, 64)[:, :3])

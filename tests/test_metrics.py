"""Tests of my3dgen_hf.metrics: identity, perceptual (LPIPS / DISTS / MS-SSIM), image, diversity, importance.

Everything runs offline on tiny inputs. Backbones whose weights do not ship (ArcFace, the ImageNet AlexNet/VGG16)
are tested with random state dicts in the published key format; the numerics of LPIPS and DISTS are checked
against the reference packages (``lpips``, ``DISTS_pytorch``) run with a stub torchvision that hands them the
same random backbone.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from my3dgen_hf.metrics import (
    DISTS,
    LPIPS,
    AlexNetFeatures,
    ArcFaceIRSE50,
    BackboneWeightsNotFound,
    MSSSIMDistance,
    TorchIdentityBackbone,
    VGG16Features,
    detect_blocks,
    id_reconstruction_similarity,
    id_similarity,
    id_similarity_from_embeddings,
    intra_cluster_diversity,
    load_torchvision_features,
    lora_importance,
    ms_ssim,
    per_tensor_change_ratios,
    perceptual_availability,
    perceptual_loss,
    plot_importance,
    psnr,
    ssim,
    weight_change_ratios,
)
from my3dgen_hf.metrics import perceptual as perceptual_mod


def _has(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


needs_lpips_heads = pytest.mark.skipif(not _has("lpips"), reason="LPIPS heads ship in `lpips`: pip install --no-deps lpips")
needs_dists_weights = pytest.mark.skipif(
    not _has("DISTS_pytorch"), reason="DISTS alpha/beta ship in `DISTS_pytorch`: pip install --no-deps DISTS_pytorch"
)


def _astronaut(size: int = 64) -> torch.Tensor:
    """skimage's astronaut photo as a [1, 3, size, size] tensor in [-1, 1]."""
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area")


# --------------------------------------------------------------------------------------------------------------
# torchvision-format random state dicts, from the published layouts (independent of our modules)
# --------------------------------------------------------------------------------------------------------------

ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
VGG_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip


def torchvision_alexnet_sd(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (o, c, k) in ALEX_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(o, c, k, k, generator=g) * math.sqrt(2.0 / (c * k * k))
        sd[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    sd["classifier.6.bias"] = torch.zeros(1000)  # classifier entries are ignored
    return sd


def torchvision_vgg16_sd(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (o, c) in VGG_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g) * math.sqrt(2.0 / (c * 9))
        sd[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    sd["classifier.6.bias"] = torch.zeros(1000)
    return sd


@pytest.fixture(scope="module")
def alex_sd():
    return torchvision_alexnet_sd()


@pytest.fixture(scope="module")
def vgg_sd():
    return torchvision_vgg16_sd()


@pytest.fixture()
def no_backbone_anywhere(monkeypatch, tmp_path):
    """No env var, an empty torch hub cache, and a fresh once-per-process notice registry."""
    monkeypatch.delenv(perceptual_mod.LPIPS_BACKBONE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(perceptual_mod, "_NOTICES_SHOWN", set())
    return tmp_path


# --------------------------------------------------------------------------------------------------------------
# image metrics
# --------------------------------------------------------------------------------------------------------------


def test_psnr_known_value_and_ranges():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = x + 0.1  # MSE 0.01 on a range of width 2
    assert torch.allclose(psnr(x, y), torch.full((2,), 10 * math.log10(4 / 0.01)), atol=1e-4)
    assert torch.allclose(psnr((x + 1) / 2, (y + 1) / 2, data_range=1.0), psnr(x, y), atol=1e-4)
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = _astronaut(48)
    y = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = ssim(x, y)  # [-1, 1] inputs, mapped to [0, 1]
    ref = structural_similarity(
        (x[0].permute(1, 2, 0).double().numpy() + 1) / 2,
        (y[0].permute(1, 2, 0).double().numpy() + 1) / 2,
        data_range=1.0,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert abs(float(ours[0]) - ref) < 1e-3
    assert 0.0 < float(ours[0]) < 0.99
    # the same images given in [0, 1] give the same value
    assert torch.allclose(ssim((x + 1) / 2, (y + 1) / 2, value_range=(0, 1)), ours, atol=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(1), atol=1e-6)


def test_ms_ssim_matches_pytorch_msssim_and_handles_small_images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 176, 176, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = ms_ssim(x, y, value_range=(0, 1))
    assert torch.allclose(ms_ssim(x * 2 - 1, y * 2 - 1), ours, atol=1e-5)
    if _has("pytorch_msssim"):
        from pytorch_msssim import ms_ssim as ref_ms_ssim

        ref = ref_ms_ssim(x, y, data_range=1.0, size_average=False)
        assert torch.allclose(ours, ref, atol=1e-5)
    # 128 px (the raw neural rendering) uses 4 scales instead of failing
    small = ms_ssim(x[..., :128, :128], y[..., :128, :128], value_range=(0, 1))
    assert small.shape == (2,) and torch.isfinite(small).all()
    assert MSSSIMDistance().scales_for(128) == 4 and MSSSIMDistance().scales_for(512) == 5


# --------------------------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------------------------


def _irse50_reference_keys() -> dict:
    """Key -> shape of TreB1eN's model_ir_se50.pth (IR-SE-50, 112 input), written out from the architecture."""
    shapes = {}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})  # fmt: skip

    shapes["input_layer.0.weight"] = (64, 3, 3, 3)
    bn("input_layer.1", 64)
    shapes["input_layer.2.weight"] = (64,)
    i = 0
    for in_c, depth, n in [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)]:
        for u in range(n):
            c_in = in_c if u == 0 else depth
            p = f"body.{i}"
            if c_in != depth:
                shapes[f"{p}.shortcut_layer.0.weight"] = (depth, c_in, 1, 1)
                bn(f"{p}.shortcut_layer.1", depth)
            bn(f"{p}.res_layer.0", c_in)
            shapes[f"{p}.res_layer.1.weight"] = (depth, c_in, 3, 3)
            shapes[f"{p}.res_layer.2.weight"] = (depth,)
            shapes[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            bn(f"{p}.res_layer.4", depth)
            shapes[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            shapes[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            i += 1
    bn("output_layer.0", 512)
    shapes["output_layer.3.weight"] = (512, 512 * 7 * 7)
    shapes["output_layer.3.bias"] = (512,)
    bn("output_layer.4", 512)
    return shapes


def test_arcface_irse50_architecture():
    model = ArcFaceIRSE50()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 43_797_696  # IR-SE-50 at 112x112: "43.8M"
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _irse50_reference_keys()


@pytest.fixture(scope="module")
def irse50_random_sd():
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, s in _irse50_reference_keys().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(s, generator=g) + 0.5
        else:
            sd[k] = torch.randn(s, generator=g) * 0.02
    return sd


def test_arcface_loads_pth_strictly_and_embeds(irse50_random_sd, tmp_path):
    sd = irse50_random_sd
    path = tmp_path / "model_ir_se50.pth"
    torch.save(sd, path)
    loaded = ArcFaceIRSE50.from_pretrained(path)  # strict=True
    assert torch.equal(loaded.output_layer[3].weight, sd["output_layer.3.weight"])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded.train()  # stays an evaluator
    assert not loaded.training
    # embeddings: normalised, differentiable w.r.t. the input (usable as an ID loss)
    x = (torch.rand(1, 3, 128, 128) * 2 - 1).requires_grad_(True)
    e = loaded.embed(x)
    assert e.shape == (1, 512) and torch.allclose(e.norm(dim=1), torch.ones(1), atol=1e-5)
    e[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_arcface_loads_safetensors_and_old_checkpoints(irse50_random_sd, tmp_path):
    from safetensors.torch import save_file

    sd = irse50_random_sd
    save_file(sd, str(tmp_path / "model_ir_se50.safetensors"))
    st = ArcFaceIRSE50.from_pretrained(tmp_path / "model_ir_se50.safetensors")
    assert torch.equal(st.body[23].res_layer[5].fc2.weight, sd["body.23.res_layer.5.fc2.weight"])
    # checkpoints from torch < 0.4.1 have no num_batches_tracked entries (and "module." prefixes from DataParallel)
    old = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    st.load_state_dict(ArcFaceIRSE50.convert_state_dict(old), strict=True)


def test_arcface_missing_weights_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("MY3DGEN_ARCFACE_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="model_ir_se50.pth"):
        ArcFaceIRSE50.from_pretrained(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="MY3DGEN_ARCFACE_WEIGHTS"):
        ArcFaceIRSE50.from_pretrained()


def test_id_similarity_is_eq2_max_then_mean():
    e = torch.eye(3)
    gen = torch.stack([e[0], (e[0] + e[1]) / math.sqrt(2), -e[2]])
    ref = torch.stack([e[0], e[1], 0.5 * e[2]])
    res = id_similarity_from_embeddings(gen, ref)
    assert torch.allclose(res.per_image, torch.tensor([1.0, 1 / math.sqrt(2), 0.0]), atol=1e-6)
    assert res.mean == pytest.approx((1 + 1 / math.sqrt(2) + 0) / 3, abs=1e-6)
    mean_red = id_similarity_from_embeddings(gen, ref, reduction="mean")
    assert mean_red.per_image[0] == pytest.approx(1 / 3, abs=1e-6)


def test_id_similarity_with_torch_backbone_on_images():
    # embedding = mean colour: constant-colour images have a known cosine
    backbone = TorchIdentityBackbone(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), input_size=8)
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0.8, 0]])
    imgs = colours[:, :, None, None].expand(3, 3, 32, 32).contiguous()
    res = id_similarity(imgs[2:3], imgs[:2], backbone)
    assert res.mean == pytest.approx(0.8, abs=1e-5)  # max(0.6, 0.8)
    rec = id_reconstruction_similarity(imgs[:2], imgs[[2, 2]], backbone)
    assert torch.allclose(rec.per_image, torch.tensor([0.6, 0.8]), atol=1e-5)
    # out-of-range inputs are clamped to [-1, 1] first
    assert torch.allclose(backbone.embed(imgs[:2] * 5), backbone.embed(imgs[:2]), atol=1e-6)


def _dlib_or_skip():
    if not _has("dlib") or not _has("face_recognition_models"):
        pytest.skip("dlib face descriptor needs `pip install dlib-bin face_recognition_models`")
    from my3dgen_hf.metrics import DlibFaceDescriptor

    try:
        return DlibFaceDescriptor(verbose=False)
    except (ImportError, FileNotFoundError) as e:  # pragma: no cover
        pytest.skip(f"dlib unavailable: {e}")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_dlib_descriptor_same_vs_different_person():
    desc = _dlib_or_skip()
    from skimage import data

    astro = data.astronaut()  # Eileen Collins
    same = np.clip(astro[:, ::-1][20:480, 30:490].astype(np.float32) * 0.8 + 10, 0, 255).astype(np.uint8)
    if _has("matplotlib"):  # Grace Hopper's portrait ships with matplotlib
        import matplotlib
        from PIL import Image

        other = np.asarray(Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("RGB"))
    else:  # pragma: no cover
        pytest.skip("no second real face photo available (matplotlib's sample data)")
    d_a, d_same, d_other = (desc.descriptors(_to_tensor(a)) for a in (astro, same, other))
    assert desc.last_no_face == []
    same_dist = float(desc.distance(d_a, d_same))
    other_dist = float(desc.distance(d_a, d_other))
    assert same_dist < 0.6 < other_dist, (same_dist, other_dist)
    # unit-norm embeddings for the cosine metrics
    e = desc.embed(_to_tensor(astro))
    assert e.shape == (1, 128) and float(e.norm()) == pytest.approx(1.0, abs=1e-5)


def test_dlib_descriptor_reports_images_without_face():
    desc = _dlib_or_skip()
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 96, 96, generator=g) * 2 - 1
    out = desc.descriptors(noise)
    assert out.shape == (1, 128) and desc.last_no_face == [0]


# --------------------------------------------------------------------------------------------------------------
# LPIPS / DISTS / substitute
# --------------------------------------------------------------------------------------------------------------


def test_torchvision_state_dicts_load_strictly(alex_sd, vgg_sd, tmp_path):
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alex_sd, path)
    feats = load_torchvision_features(path, "alex")
    assert all(k.startswith("features.") for k in feats)
    AlexNetFeatures().load_state_dict(feats, strict=True)
    VGG16Features().load_state_dict(load_torchvision_features(vgg_sd, "vgg"), strict=True)
    VGG16Features(pooling="l2").load_state_dict(load_torchvision_features(vgg_sd, "vgg"), strict=True)
    with pytest.raises(ValueError, match="VGG16"):
        load_torchvision_features(alex_sd, "vgg")
    with pytest.raises(ValueError, match="missing"):
        load_torchvision_features({"net.slice1.0.weight": torch.zeros(1)}, "alex")


@needs_lpips_heads
def test_lpips_zero_on_identical_and_monotone_in_noise(alex_sd):
    m = LPIPS("alex", backbone_weights=alex_sd)
    x = _astronaut(64)
    assert float(m(x, x)) == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    n = torch.randn(x.shape, generator=g)
    vals = [float(m(x, (x + s * n).clamp(-1, 1))) for s in (0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals
    spatial = LPIPS("alex", backbone_weights=alex_sd, spatial=True)
    assert spatial(x, x + 0.1 * n).shape == (1, 1, 64, 64)


def _stub_torchvision(features_by_name):
    """A stand-in torchvision whose models.<name>(...) returns an object with the given `.features`."""
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def constructor(feats):
        return lambda *args, **kwargs: types.SimpleNamespace(features=feats)

    for name, feats in features_by_name.items():
        setattr(models, name, constructor(feats))
    tv.models = models
    tv.transforms = types.ModuleType("torchvision.transforms")
    return tv, models


def _import_with_stub(monkeypatch, module_name, features_by_name):
    tv, models = _stub_torchvision(features_by_name)
    before = set(sys.modules)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", tv.transforms)
    try:
        return importlib.import_module(module_name)
    finally:
        # forget the reference package (it holds the stub); the objects already made keep working
        for k in set(sys.modules) - before:
            if k.split(".")[0] == module_name.split(".")[0]:
                del sys.modules[k]


@needs_lpips_heads
def test_lpips_matches_reference_package(alex_sd, monkeypatch):
    """Same random backbone in ours and in the `lpips` package (run with a stub torchvision): same values."""
    if not (_has("tqdm") and _has("scipy")):
        pytest.skip("the reference lpips package needs tqdm and scipy to import")
    ours = LPIPS("alex", backbone_weights=alex_sd)
    ref_feats = AlexNetFeatures()
    ref_feats.load_state_dict(load_torchvision_features(alex_sd, "alex"))
    lpips_ref = _import_with_stub(monkeypatch, "lpips", {"alexnet": ref_feats.features})
    ref = lpips_ref.LPIPS(net="alex", verbose=False)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(ours(x, y), ref(x, y).flatten(), rtol=1e-4, atol=1e-6)


@needs_dists_weights
def test_dists_matches_reference_package(vgg_sd, monkeypatch):
    """Same random VGG16 in ours and in `DISTS_pytorch` (run with a stub torchvision): same values."""
    import os

    if not os.path.isfile(os.path.join(sys.prefix, "weights.pt")):
        pytest.skip("DISTS_pytorch's reference code reads weights.pt from sys.prefix, which is absent here")
    ours = DISTS(backbone_weights=vgg_sd)
    ref_feats = VGG16Features()
    ref_feats.load_state_dict(load_torchvision_features(vgg_sd, "vgg"))
    mod = _import_with_stub(monkeypatch, "DISTS_pytorch.DISTS_pt", {"vgg16": ref_feats.features})
    ref = mod.DISTS()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 48, 48, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        expected = ref(x, y)
    got = ours(x * 2 - 1, y * 2 - 1)  # ours takes [-1, 1] by default
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert float(ours(x, x, normalize=True).abs().max()) < 1e-5


def test_auto_perceptual_loss_substitutes_ms_ssim_with_notice(no_backbone_anywhere, capsys):
    loss = perceptual_loss("auto")
    err = capsys.readouterr().err
    assert loss.kind == "ms-ssim" and loss.is_substitute
    assert "MS-SSIM" in loss.description and "substitute" in loss.description
    assert err.count("\n") == 1 and "MS-SSIM" in err and perceptual_mod.LPIPS_BACKBONE_ENV in err
    perceptual_loss("auto")  # the notice is printed once per process
    assert capsys.readouterr().err == ""

    x = _astronaut(128)
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    v = loss(x, y)
    v.backward()
    assert float(v.detach()) > 0 and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    per = perceptual_loss("ms-ssim", reduction="none")
    noise = torch.randn_like(x)
    vals = [float(per(x, (x + s * noise).clamp(-1, 1))) for s in (0.05, 0.1, 0.3)]
    assert vals[0] < vals[1] < vals[2]


def test_lpips_and_dists_raise_without_backbone(no_backbone_anywhere):
    avail = perceptual_availability()
    assert avail["ms-ssim"] is None
    assert "vgg16-397923af.pth" in avail["dists"] and "alexnet-owt-7be5be79.pth" in avail["lpips-alex"]
    with pytest.raises(BackboneWeightsNotFound, match="alexnet-owt-7be5be79.pth"):
        LPIPS("alex")
    with pytest.raises(BackboneWeightsNotFound, match="vgg16-397923af.pth"):
        DISTS()
    with pytest.raises(BackboneWeightsNotFound):
        perceptual_loss("dists")
    with pytest.raises(BackboneWeightsNotFound):
        perceptual_loss("lpips-vgg")


@needs_lpips_heads
def test_auto_perceptual_loss_uses_lpips_when_backbone_found(no_backbone_anywhere, alex_sd, monkeypatch, capsys):
    folder = no_backbone_anywhere / "weights"
    folder.mkdir()
    torch.save(alex_sd, folder / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv(perceptual_mod.LPIPS_BACKBONE_ENV, str(folder))
    loss = perceptual_loss("auto", net="alex")
    assert loss.kind == "lpips-alex" and "LPIPS" in loss.description and not loss.is_substitute
    assert capsys.readouterr().err == ""
    x = _astronaut(64)
    y = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    loss(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    # the torch hub cache is searched too
    monkeypatch.delenv(perceptual_mod.LPIPS_BACKBONE_ENV)
    hub = no_backbone_anywhere / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (folder / "alexnet-owt-7be5be79.pth").rename(hub / "alexnet-owt-7be5be79.pth")
    assert perceptual_mod.find_backbone_weights("alex") == hub / "alexnet-owt-7be5be79.pth"
    assert perceptual_mod.find_backbone_weights("vgg") is None
    avail = perceptual_availability()
    assert avail["lpips-alex"] is None and avail["dists"] is not None


# --------------------------------------------------------------------------------------------------------------
# diversity
# --------------------------------------------------------------------------------------------------------------


def _const(values):
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(len(values), 3, 4, 4).contiguous()


def _abs_distance(a, b):
    return (a - b).abs().flatten(1).mean(1)


def test_intra_cluster_diversity_hand_made_clusters():
    train = _const([0.0, 10.0, 100.0])
    samples = _const([0.0, 1.0, 2.0, 10.0, 13.0, 99.0])
    res = intra_cluster_diversity(samples, train, _abs_distance, batch_size=2)
    assert res.assignments.tolist() == [0, 0, 0, 1, 1, 2]
    assert res.cluster_sizes.tolist() == [3, 2, 1]
    assert res.per_cluster == pytest.approx({0: 4 / 3, 1: 3.0})  # cluster 2 has one member: skipped
    assert res.score == pytest.approx((4 / 3 + 3.0) / 2)
    # no cluster with two members: undefined
    assert math.isnan(intra_cluster_diversity(_const([0.0, 10.0]), train, _abs_distance).score)


# --------------------------------------------------------------------------------------------------------------
# importance
# --------------------------------------------------------------------------------------------------------------

BLOCKS = [f"backbone.synthesis.b{r}" for r in (4, 8, 16, 32, 64, 128, 256)] + [
    "superresolution.block0",
    "superresolution.block1",
]


def _synthetic_pair():
    g = torch.Generator().manual_seed(0)
    base, tuned, expected = {}, {}, {}
    for i, b in enumerate(BLOCKS):
        r = 0.01 * (i + 1)
        for name in ("conv1.weight", "conv1.affine.weight", "torgb.weight"):
            w = torch.randn(4, 3, 3, 3, generator=g)
            base[f"{b}.{name}"] = w
            tuned[f"{b}.{name}"] = w * (1 + r)  # dW = r W0 for every tensor: block ratio r
        base[f"{b}.conv1.bias"] = torch.zeros(4)
        tuned[f"{b}.conv1.bias"] = torch.full((4,), 100.0)  # biases are not weights: ignored
        expected[b] = r
    base["mapping.fc0.weight"] = tuned["mapping.fc0.weight"] = torch.ones(2, 2)
    return base, tuned, expected


def test_weight_change_ratios_known_values(tmp_path):
    base, tuned, expected = _synthetic_pair()
    assert list(detect_blocks(base)) == BLOCKS
    ratios = weight_change_ratios(base, tuned)
    assert list(ratios) == BLOCKS
    for b in BLOCKS:
        assert ratios[b] == pytest.approx(expected[b], rel=1e-5)
    # tensors of one block are concatenated: |(4, 0)| / |(3, 4)| = 4 / 5
    b0 = {"backbone.synthesis.b4.conv1.weight": torch.tensor([3.0]), "backbone.synthesis.b4.torgb.weight": torch.tensor([4.0])}
    b1 = {"backbone.synthesis.b4.conv1.weight": torch.tensor([7.0]), "backbone.synthesis.b4.torgb.weight": torch.tensor([4.0])}
    assert weight_change_ratios(b0, b1)["backbone.synthesis.b4"] == pytest.approx(0.8)
    per = per_tensor_change_ratios(b0, b1)
    assert per == pytest.approx({"backbone.synthesis.b4.conv1.weight": 4 / 3, "backbone.synthesis.b4.torgb.weight": 0.0})
    out = plot_importance(ratios, tmp_path / "importance.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_lora_importance_merged_minus_base():
    peft = pytest.importorskip("peft")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Linear(6, 5, bias=False)

    class Synthesis(nn.Module):
        def __init__(self):
            super().__init__()
            self.b4, self.b8 = Block(), Block()

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.synthesis = Synthesis()

    torch.manual_seed(0)
    model = Toy()
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["conv1"])
    model = peft.inject_adapter_in_model(cfg, model)
    expected = {}
    for res in (4, 8):
        layer = getattr(model.backbone.synthesis, f"b{res}").conv1
        nn.init.normal_(layer.lora_B["default"].weight)
        delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * (4 / 2)
        expected[f"backbone.synthesis.b{res}"] = float((delta.norm() / layer.base_layer.weight.norm()).detach())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ratios = lora_importance(model)
    assert ratios == pytest.approx(expected, rel=1e-5)
    # the model itself is left unmerged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reference_packages_do_not_leak(alex_sd):
    """The stubbed reference imports above leave no lpips / DISTS_pytorch / torchvision module behind."""
    assert not {"lpips", "DISTS_pytorch", "torchvision"} & {k.split(".")[0] for k in sys.modules}

"""The SynthHeads identity encoder: shipped weights, identity vs pose invariance, save/load, any input size."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from my3dgen_hf.synthetic import render, sample_identity, sample_image_params
from my3dgen_hf.synthetic.identity_encoder import (
    SHIPPED_IDENTITY_ENCODER,
    SynthHeadsIdentityEncoder,
    load_synthheads_identity_encoder,
)

# identities far from both the training ids (0..) and the encoder's verification ids (1_000_000..)
FRESH = 3_000_000


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _views(identity_id: int, n: int, resolution: int = 64) -> torch.Tensor:
    ident = sample_identity(0, identity_id)
    out = []
    for j in range(n):
        ip = sample_image_params(0, identity_id, j, split="test", yaw_range=0.35, pitch_range=0.25, occluder_prob=0.0)
        out.append(_to_tensor(render(ident, ip, resolution=resolution, supersample=1)))
    return torch.stack(out)


@pytest.fixture(scope="module")
def encoder():
    return load_synthheads_identity_encoder()


def test_shipped_encoder_loads_with_unit_norm_embeddings(encoder):
    assert (SHIPPED_IDENTITY_ENCODER / "diffusion_pytorch_model.safetensors").is_file()
    assert not encoder.training
    n_params = sum(p.numel() for p in encoder.parameters())
    assert n_params < 1_250_000  # well under 5 MB of fp32 weights
    x = _views(FRESH, 2)
    with torch.no_grad():
        emb = encoder(x)
    assert emb.shape == (2, encoder.config.embedding_dim)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    # the Hub-style name resolves to the shipped copy, and eval.json records the verification result
    again = load_synthheads_identity_encoder("my3dgen-hf/synthheads-identity-encoder")
    with torch.no_grad():
        torch.testing.assert_close(again(x), emb)
    ev = json.loads((SHIPPED_IDENTITY_ENCODER / "eval.json").read_text())
    assert 0.0 <= ev["tar_at_far_1e-3"] <= 1.0 and ev["roc_auc"] > 0.9


def test_same_identity_more_similar_than_different_identities(encoder):
    ids = [FRESH + 10 + k for k in range(4)]
    views = 3
    x = torch.cat([_views(i, views) for i in ids])  # different poses, expressions, lighting, backgrounds
    labels = torch.arange(len(ids)).repeat_interleave(views)
    with torch.no_grad():
        emb = encoder(x)
    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    genuine = sim[same & off_diag]
    impostor = sim[~same]
    assert genuine.mean() > impostor.mean() + 0.3, (genuine.mean(), impostor.mean())
    # per identity: on average its own other views beat every other identity's views
    for k in range(len(ids)):
        rows = labels == k
        own = sim[rows][:, rows][~torch.eye(views, dtype=torch.bool)].mean()
        other = sim[rows][:, ~rows].mean()
        assert own > other, (k, own, other)


def test_save_load_round_trip_of_a_tiny_untrained_encoder(tmp_path):
    torch.manual_seed(0)
    model = SynthHeadsIdentityEncoder(resolution=16, channels=(8, 16), embedding_dim=12).eval()
    model.save_pretrained(str(tmp_path / "enc"))
    assert (tmp_path / "enc" / "config.json").is_file()
    assert (tmp_path / "enc" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_synthheads_identity_encoder(tmp_path / "enc")
    assert loaded.config.resolution == 16 and tuple(loaded.config.channels) == (8, 16)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_bad_resolution_is_rejected():
    with pytest.raises(ValueError):
        SynthHeadsIdentityEncoder(resolution=20, channels=(8, 16, 32))


@pytest.mark.parametrize("size", [64, 128])
def test_any_input_size_is_resized(encoder, size):
    img = _views(FRESH + 1, 1, resolution=size)
    assert img.shape[-1] == size
    with torch.no_grad():
        emb = encoder(img)
        assert emb.shape == (1, encoder.config.embedding_dim)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(1), atol=1e-5, rtol=0)
        # the same image given at the training resolution (antialiased resize) gives the same embedding
        r = encoder.config.resolution
        pre = F.interpolate(img, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(encoder(pre), emb, atol=1e-5, rtol=1e-4)
        # a 3-D image (no batch axis) works too
        assert encoder(img[0]).shape == (1, encoder.config.embedding_dim)


def test_resolution_change_keeps_identity(encoder):
    """A 128 px render and a 64 px render of the same view embed close together."""
    with torch.no_grad():
        a = encoder(_views(FRESH + 2, 1, resolution=128))
        b = encoder(_views(FRESH + 2, 1, resolution=64))
    assert float((a * b).sum()) > 0.8

"""Numerical agreement with the original EG3D implementation (../shared/fixtures/eg3d_reference)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from my3dgen_hf import EG3DGenerator


@pytest.fixture(scope="module")
def reference(eg3d_fixture_dir):
    config = json.loads((eg3d_fixture_dir / "config.json").read_text())
    config.pop("class_name")
    G = EG3DGenerator(**config).eval()
    state_dict = load_file(eg3d_fixture_dir / "state_dict.safetensors")
    result = G.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return G, state_dict, load_file(eg3d_fixture_dir / "cases.safetensors")


def test_state_dict_keys_and_shapes_match(reference):
    G, state_dict, _ = reference
    ours = G.state_dict()
    assert set(ours) == set(state_dict)
    assert all(ours[k].shape == v.shape for k, v in state_dict.items())


@pytest.mark.parametrize("tag,psi", [("psi1", 1.0), ("psi07", 0.7)])
def test_mapping_and_planes_match(reference, tag, psi):
    G, _, cases = reference
    with torch.no_grad():
        ws = G.mapping(cases["z"], cases["c"], truncation_psi=psi)
        planes = G.backbone.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(ws, cases[f"{tag}.ws"], atol=1e-4, rtol=0)
    torch.testing.assert_close(planes[:, :, ::8, ::8], cases[f"{tag}.planes_strided"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("tag,psi", [("psi1", 1.0), ("psi07", 0.7)])
def test_rendered_images_match(reference, tag, psi):
    G, _, cases = reference
    with torch.no_grad():
        out = G(cases["z"], cases["c"], truncation_psi=psi, noise_mode="const", deterministic=True)
    for key in ("image_raw", "image_depth", "image"):
        assert out[key].shape == cases[f"{tag}.{key}"].shape
        torch.testing.assert_close(out[key], cases[f"{tag}.{key}"], atol=1e-3, rtol=0, msg=key)


def test_sample_mixed_matches(reference):
    G, _, cases = reference
    with torch.no_grad():
        out = G.sample_mixed(cases["sample.points"], cases["sample.directions"], cases["psi07.ws"], noise_mode="const")
    torch.testing.assert_close(out["sigma"], cases["sample.sigma"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["rgb"], cases["sample.rgb"], atol=1e-4, rtol=0)

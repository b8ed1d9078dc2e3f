"""Downstream tasks in the personal space: hull sampling, interpolation, alpha-space projection, inpainting,
super-resolution and editing, on a tiny generator."""

import pytest
import torch

from my3dgen_hf.personalization import PersonalizationError
from my3dgen_hf.personalization.editing import EditDirection, direction_in_anchor_span, edit_in_hull, fit_direction
from my3dgen_hf.personalization.hull import (
    constrain_alphas,
    hull_ws,
    inpaint,
    interpolate_anchors,
    layered_anchors,
    project_onto_dilated_simplex,
    project_to_hull,
    project_w_to_hull,
    render_interpolation,
    sample_hull_alphas,
    sample_in_hull,
    super_resolve,
)
from test_personalization_helpers import tiny_prior


@pytest.fixture(scope="module")
def pipe():
    return tiny_prior(3)


@pytest.fixture(scope="module")
def anchors(pipe):
    return pipe.get_ws(seed=[11, 12, 13, 14, 15], truncation_psi=1.0)  # [5, num_ws, w_dim]


def test_hull_samples_are_convex_combinations(pipe, anchors):
    out = sample_in_hull(pipe, anchors, num_samples=6, seed=1)
    assert out.images.shape == (6, 3, 128, 128)
    a = out.alphas
    assert torch.allclose(a.sum(1), torch.ones(6)) and (a >= 0).all()
    assert ((a > 0).sum(1) == 3).all()  # MyStyle: 3 anchors per sample
    assert torch.allclose(out.ws, torch.einsum("bn,nld->bld", a, anchors), atol=1e-6)
    assert (out.yaw.abs() <= 0.35).all() and (out.pitch.abs() <= 0.25).all()
    again = sample_in_hull(pipe, anchors, num_samples=6, seed=1, render=False)
    assert torch.equal(again.alphas, a) and again.images is None  # deterministic by seed


def test_sample_hull_alphas_with_few_anchors():
    a = sample_hull_alphas(2, 4, anchors_per_sample=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 2) and torch.allclose(a.sum(1), torch.ones(4))


def test_interpolation_endpoints_are_the_anchors(pipe, anchors):
    ws = interpolate_anchors(anchors[0], anchors[3], 4)
    assert ws.shape == (4, *anchors.shape[1:])
    assert torch.equal(ws[0], anchors[0]) and torch.equal(ws[-1], anchors[3])
    assert torch.allclose(ws[1] - ws[0], ws[2] - ws[1], atol=1e-6)
    imgs = render_interpolation(pipe, anchors, 0, 3, num_steps=3, yaws=(-0.3, 0.3))
    assert imgs.shape == (3, 2, 3, 128, 128)
    with pytest.raises(PersonalizationError, match="at least 2"):
        interpolate_anchors(anchors[0], anchors[1], 1)
    with pytest.raises(PersonalizationError, match="out of range"):
        render_interpolation(pipe, anchors, 0, 9)


def test_constrained_alphas_rows_sum_to_one_and_respect_the_soft_bound():
    raw = torch.tensor([[2.0, -1.0, 0.5, 0.1]])
    a = constrain_alphas(raw, beta=0.03)
    assert torch.allclose(a.sum(-1), torch.ones(1))
    assert a.min() > -0.05  # softplus keeps entries near or above -beta


def test_projection_of_an_anchor_image_concentrates_on_it(pipe, anchors):
    c = pipe.camera(0.1, -0.05)
    target = pipe.generator.synthesis(anchors[2:3], c, noise_mode="const")["image"].detach()
    flags = [p.requires_grad for p in pipe.generator.parameters()]
    res = project_to_hull(pipe, target, c, anchors, steps=40, lr=0.05, perceptual="ms-ssim", progress=False)
    weights = res.alphas[0].mean(0)  # mean over layers [N]
    assert int(weights.argmax()) == 2 and float(weights[2]) > 0.5
    assert torch.allclose(res.alphas.sum(-1), torch.ones_like(res.alphas.sum(-1)), atol=1e-5)
    assert res.losses[-1] < res.losses[0]
    assert torch.allclose(res.ws, hull_ws(res.alphas, layered_anchors(anchors, pipe.generator.num_ws)), atol=1e-5)
    assert [p.requires_grad for p in pipe.generator.parameters()] == flags  # the generator is left as it was


def test_inpainting_keeps_known_pixels_exactly(pipe, anchors):
    c = pipe.camera(0.0, 0.0)
    target = pipe.generator.synthesis(anchors[1:2], c, noise_mode="const")["image"].detach()
    mask = torch.ones(1, 1, 128, 128)
    mask[..., 40:90, 30:100] = 0  # the hole
    res = inpaint(pipe, target, c, mask, anchors, steps=5, perceptual="ms-ssim", progress=False)
    known = mask.expand_as(target).bool()
    assert torch.equal(res.output[known], target[known])
    assert torch.equal(res.output[~known], res.image[~known])
    with pytest.raises(PersonalizationError, match=r"\[0, 1\]"):
        inpaint(pipe, target, c, mask * 2, anchors, steps=1, progress=False)


def test_super_resolution_matches_the_low_res_input(pipe, anchors):
    c = pipe.camera(0.0, 0.0)
    hi = pipe.generator.synthesis(anchors[4:5], c, noise_mode="const")["image"].detach()
    lo = torch.nn.functional.interpolate(hi, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    res = super_resolve(pipe, lo, c, anchors, steps=15, lr=0.02, perceptual="ms-ssim", progress=False)
    assert res.output.shape == (1, 3, 128, 128)
    assert res.losses[-1] < res.losses[0]
    with pytest.raises(PersonalizationError, match="smaller"):
        super_resolve(pipe, hi, c, anchors, steps=1, progress=False)


def test_dilated_simplex_projection_is_feasible_and_idempotent():
    v = torch.randn(7, 3, 6) * 2
    p = project_onto_dilated_simplex(v, beta=0.05)
    assert torch.allclose(p.sum(-1), torch.ones(7, 3), atol=1e-5) and p.min() >= -0.05 - 1e-6
    assert torch.allclose(project_onto_dilated_simplex(p, beta=0.05), p, atol=1e-5)


def test_exact_hull_projection_recovers_points_inside_and_moves_points_outside(anchors):
    A = anchors.float()
    inside = torch.tensor([[0.2, 0.3, 0.5, 0.0, 0.0]])
    w_in = hull_ws(inside, A)
    proj, alphas = project_w_to_hull(w_in, A, beta=0.0, steps=800)
    assert torch.allclose(proj, w_in, atol=1e-3)
    far = w_in + 5 * torch.randn_like(w_in)
    proj_far, a_far = project_w_to_hull(far, A, beta=0.0, steps=300)
    assert (a_far >= -1e-6).all() and torch.allclose(a_far.sum(-1), torch.ones(a_far.shape[:2]), atol=1e-5)
    assert (proj_far - far).norm() < (w_in - far).norm() + 1e-4  # never farther than a feasible point


def test_edit_with_magnitude_zero_is_the_identity(anchors):
    L = anchors.shape[1]
    alphas = constrain_alphas(torch.rand(1, L, 5) + 0.1, beta=0.03)
    d = torch.randn(anchors.shape[-1])
    gamma, cos = direction_in_anchor_span(d / d.norm(), anchors)
    assert gamma.shape == (L, 5) and cos.shape == (L,)
    for policy in ("continue", "stop", "project"):
        res = edit_in_hull(alphas, gamma, anchors, [0.0], policy=policy)
        assert torch.equal(res.ws[0], hull_ws(alphas, anchors)[0])
        assert res.magnitudes == [0.0] and res.outside == [False]


def test_edge_policies():
    A = torch.eye(3)[:, None, :].repeat(1, 2, 1) * 4  # 3 anchors in a 3-dim W, 2 layers
    alphas = torch.full((2, 3), 1 / 3)
    gamma = torch.tensor([1.0, -1.0, 0.0]).expand(2, 3)
    big = 2.0  # leaves the hull: alpha_1 = 1/3 - 2 < -beta
    cont = edit_in_hull(alphas, gamma, A, [big], policy="continue", beta=0.0)
    stop = edit_in_hull(alphas, gamma, A, [big], policy="stop", beta=0.0)
    proj = edit_in_hull(alphas, gamma, A, [big], policy="project", beta=0.0)
    assert cont.outside == [True] and cont.magnitudes == [big]
    assert stop.magnitudes[0] == pytest.approx(1 / 3, abs=1e-6)  # clamped at the edge
    assert torch.allclose(stop.ws[0, 0], torch.tensor([8 / 3, 0.0, 4 / 3]), atol=1e-5)
    assert proj.ws[0, 0, 1] >= -1e-4 and torch.allclose(proj.ws[0, 0], torch.tensor([4.0, 0.0, 0.0]), atol=1e-2)
    with pytest.raises(PersonalizationError, match="policy"):
        edit_in_hull(alphas, gamma, A, [1.0], policy="bounce")


def test_direction_in_span_is_exact_for_directions_in_the_span(anchors):
    d = anchors[1, 0] - anchors[3, 0]
    gamma, cos = direction_in_anchor_span(d / d.norm(), anchors)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)


def test_fit_direction_recovers_a_planted_boundary(tmp_path):
    g = torch.Generator().manual_seed(0)
    ws = torch.randn(400, 16, generator=g) * torch.linspace(0.5, 2.0, 16)
    true = torch.zeros(16)
    true[3], true[7] = 0.6, -0.8
    labels = (ws @ true > 0.1).float()
    d = fit_direction(ws, labels, name="smile")
    assert torch.nn.functional.cosine_similarity(d.direction, true, dim=0) > 0.95
    assert d.accuracy is not None and d.accuracy > 0.9
    back = EditDirection.load(d.save(tmp_path / "smile.safetensors"))
    assert torch.equal(back.direction, d.direction) and back.name == "smile" and back.accuracy == d.accuracy
    import numpy as np

    np.save(tmp_path / "interfacegan.npy", (true * 3)[None].numpy())
    assert torch.allclose(EditDirection.load(tmp_path / "interfacegan.npy").direction, true, atol=1e-6)
    with pytest.raises(PersonalizationError, match="both classes"):
        fit_direction(ws, torch.ones(400))


def test_direction_from_a_user_classifier_separates_its_scores(pipe):
    from my3dgen_hf.personalization import direction_from_classifier

    def brightness(images):  # a stand-in attribute classifier: mean intensity
        return images.mean(dim=(1, 2, 3))

    d = direction_from_classifier(pipe, brightness, num_samples=60, fraction=0.25, seed=0, name="bright")
    assert d.name == "bright" and torch.isclose(d.direction.norm(), torch.tensor(1.0))
    assert d.accuracy is not None and d.accuracy >= 0.8  # the boundary predicts held-out labels
    with pytest.raises(PersonalizationError, match="fraction"):
        direction_from_classifier(pipe, brightness, num_samples=10, fraction=0.9)

"""Cameras, multi-view feature aggregation and NeuS rendering of analytic SDFs."""

import math

import torch

from my3dgen_hf.tunemv3d import NeuSRenderer, TuneMV3DInteractiveModel, orbit_cameras, pixel_rays, project_points, ring_cameras, split_labels
from my3dgen_hf.tunemv3d.neus import PositionalEncoding, aggregate_view_features


def test_ring_cameras_look_at_origin_in_opencv_convention():
    cams = ring_cameras(8, elevation_deg=30.0, radius=2.0, fov_degrees=40.0)
    c2w, K = split_labels(cams)
    origin, forward, down = c2w[:, :3, 3], c2w[:, :3, 2], c2w[:, :3, 1]
    assert torch.allclose(origin.norm(dim=-1), torch.full((8,), 2.0), atol=1e-5)
    assert torch.allclose(forward, -origin / 2.0, atol=1e-5)  # z forward, toward the origin
    assert (down[:, 1] < 0).all()  # y down in a y-up world
    assert torch.allclose(origin[:, 1], torch.full((8,), 2.0 * math.sin(math.radians(30))), atol=1e-5)
    assert torch.allclose(K[0], torch.tensor([[0.5 / math.tan(math.radians(20)), 0, 0.5], [0, 0.5 / math.tan(math.radians(20)), 0.5], [0, 0, 1.0]]))
    # Azimuth 90 looks from +x.
    assert torch.allclose(split_labels(orbit_cameras(90.0, 0.0, 2.0))[0][0, :3, 3], torch.tensor([2.0, 0, 0]), atol=1e-5)


def test_pixel_rays_project_back_to_their_pixels():
    cams = ring_cameras(3, 25.0)[None]  # [1, 3, 25]
    o, d = pixel_rays(cams, 6, 4)  # [1, 3, 24, 3]
    points = o[0, 1] + 1.7 * d[0, 1]  # along view 1's rays
    uv, z = project_points(points[None], cams)
    u, v = (torch.arange(4) + 0.5) / 4, (torch.arange(6) + 0.5) / 6
    expected = torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], -1).reshape(-1, 2)
    assert torch.allclose(uv[0, 1], expected, atol=1e-5)
    assert (z[0, 1] > 0).all()


def test_positional_encoding_frequencies():
    pe = PositionalEncoding(num_freqs=6, omega=2.0)
    p = torch.tensor([[0.1, -0.2, 0.3]])
    out = pe(p)
    assert out.shape == (1, 3 + 36)
    assert torch.allclose(out[0, :3], p[0])
    assert torch.allclose(out[0, 3 + 3 * 5 : 3 + 3 * 6], torch.sin(2.0 * 32 * p[0]))


def test_aggregation_is_mean_and_variance_over_the_views_that_see_a_point():
    cams = ring_cameras(3, 0.0, radius=2.0, fov_degrees=40.0)[None]
    feats = torch.stack([torch.full((2, 4, 4), float(i)) for i in (1, 2, 6)])[None]  # [1, 3, F=2, 4, 4]
    centre = torch.zeros(1, 1, 3)  # seen by all three views
    out = aggregate_view_features(centre, feats, cams)
    assert torch.allclose(out[0, 0, :2], torch.full((2,), 3.0))  # mean of 1, 2, 6
    assert torch.allclose(out[0, 0, 2:], torch.full((2,), 14.0 / 3))  # variance
    behind = torch.tensor([[[0.0, 0.0, 5.0]]])  # behind camera 0 (at +z), outside the others' frusta
    assert torch.count_nonzero(aggregate_view_features(behind, feats, cams)) == 0


def test_neus_renders_sphere_silhouette_and_depth():
    radius, n_samples = 0.5, 32
    cams = ring_cameras(3, 30.0, 2.0, 40.0)[None]
    rays_o, rays_d = (x.flatten(1, 2) for x in pixel_rays(cams, 16, 16))  # [1, 768, 3]
    renderer = NeuSRenderer(num_samples=n_samples, num_importance=32, up_sample_steps=4, bound=1.0, init_variance=0.6)  # s = e^6

    def sphere(points, dirs):
        values = torch.ones(*points.shape[:-1], 2) if dirs is not None else None
        return points.norm(dim=-1) - radius, values

    with torch.no_grad():
        out = renderer(sphere, rays_o, rays_d, background=torch.zeros(2))
    b = (rays_o * rays_d).sum(-1)
    closest = ((rays_o * rays_o).sum(-1) - b * b).clamp(min=0).sqrt()  # distance of the ray to the centre
    t_hit = -b - (radius**2 - closest**2).clamp(min=0).sqrt()
    voxel = 2.0 / (n_samples - 1)  # spacing of the coarse samples in the bounding sphere
    hit, miss = closest < radius - voxel, closest > radius + voxel
    assert hit.sum() > 100 and miss.sum() > 100
    assert out["opacity"][hit].min() > 0.99
    assert out["opacity"][miss].max() < 0.01
    assert (out["depth"][hit] - t_hit[hit]).abs().max() < voxel
    assert torch.allclose(out["values"][hit], torch.ones(int(hit.sum()), 2), atol=1e-2)


def test_initial_field_is_a_sphere_and_renders_it():
    torch.manual_seed(0)
    model = TuneMV3DInteractiveModel(
        latent_channels=4, cross_attention_dim=16, encoder_channels=8, encoder_layers=1, attention_head_dim=4, norm_num_groups=2,
        feature_channels=4, time_embed_dim=16, field_hidden_dim=16, field_blocks=2, num_samples=16, num_importance=16, init_variance=0.5,
    ).eval()
    cams = ring_cameras(4, 20.0)[None]
    with torch.no_grad():
        out = model(torch.randn(1, 4, 4, 8, 8), torch.tensor([500]), torch.randn(1, 5, 16), cams, novel_cameras=ring_cameras(2, 45.0)[None])
        assert out.x0.shape == (1, 6, 4, 8, 8) and out.opacity.shape == (1, 6, 1, 8, 8)
        sdf = out.field(torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 0.9, 0]]))
    assert torch.allclose(sdf, torch.tensor([-0.5, 0.0, 0.4]), atol=1e-6)  # ||p|| - 0.5 + zero-initialized output
    centre = out.opacity[0, :, 0, 3:5, 3:5]
    assert centre.min() > 0.99 and out.opacity[0, :, 0, 0, 0].max() < 0.01  # the sphere in the middle, not the corners

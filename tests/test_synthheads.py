"""SynthHeads: determinism, camera-convention agreement with EG3D, 3D consistency, export layout."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from my3dgen_hf.eg3d.camera import FFHQ_FOCAL, sample_camera_label, split_label
from my3dgen_hf.synthetic import (
    IdentityParams,
    ImageParams,
    camera_label_from_pose,
    camera_rays,
    export_dataset,
    head_landmarks,
    project_points,
    render,
    sample_identity,
    sample_image_params,
)
from my3dgen_hf.synthetic.cli import main as cli_main

R = 64


def _label(yaw, pitch, **kw):
    kw.setdefault("focal", FFHQ_FOCAL)
    return sample_camera_label(yaw, pitch, **kw)[0].numpy()


def _no_occluder(ip):
    return dataclasses.replace(ip, occluder=False)


def _eg3d_ray_sampler(cam2world_matrix, intrinsics, resolution):
    """Verbatim logic of EG3D's training/volumetric_rendering/ray_sampler.py (RaySampler.forward)."""
    N, M = cam2world_matrix.shape[0], resolution**2
    cam_locs_world = cam2world_matrix[:, :3, 3]
    fx = intrinsics[:, 0, 0]
    fy = intrinsics[:, 1, 1]
    cx = intrinsics[:, 0, 2]
    cy = intrinsics[:, 1, 2]
    sk = intrinsics[:, 0, 1]
    uv = torch.stack(
        torch.meshgrid(
            torch.arange(resolution, dtype=torch.float32), torch.arange(resolution, dtype=torch.float32), indexing="ij"
        )
    ) * (1.0 / resolution) + (0.5 / resolution)
    uv = uv.flip(0).reshape(2, -1).transpose(1, 0)
    uv = uv.unsqueeze(0).repeat(cam2world_matrix.shape[0], 1, 1)
    x_cam = uv[:, :, 0].view(N, -1)
    y_cam = uv[:, :, 1].view(N, -1)
    z_cam = torch.ones((N, M))
    x_lift = (
        x_cam - cx.unsqueeze(-1) + cy.unsqueeze(-1) * sk.unsqueeze(-1) / fy.unsqueeze(-1) - sk.unsqueeze(-1) * y_cam / fy.unsqueeze(-1)
    ) / fx.unsqueeze(-1) * z_cam
    y_lift = (y_cam - cy.unsqueeze(-1)) / fy.unsqueeze(-1) * z_cam
    cam_rel_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world_rel_points = torch.bmm(cam2world_matrix, cam_rel_points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    ray_dirs = world_rel_points - cam_locs_world[:, None, :]
    ray_dirs = torch.nn.functional.normalize(ray_dirs, dim=2)
    ray_origins = cam_locs_world.unsqueeze(1).repeat(1, ray_dirs.shape[1], 1)
    return ray_origins, ray_dirs


# ------------------------------------------------------------------------------------------------------------------
# parameters and determinism
# ------------------------------------------------------------------------------------------------------------------


def test_params_are_deterministic_and_roundtrip():
    a, b = sample_identity(7, 3), sample_identity(7, 3)
    assert a == b
    assert sample_identity(7, 4) != a and sample_identity(8, 3) != a
    assert IdentityParams.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    ip = sample_image_params(7, 3, 5)
    assert ip == sample_image_params(7, 3, 5)
    assert ip != sample_image_params(7, 3, 5, split="test")
    assert ImageParams.from_dict(json.loads(json.dumps(ip.to_dict()))) == ip
    assert abs(ip.yaw) <= 0.6 and abs(ip.pitch) <= 0.35
    np.testing.assert_array_equal(ip.camera_label(), _label(ip.yaw, ip.pitch))
    np.testing.assert_array_equal(camera_label_from_pose(ip.yaw, ip.pitch), _label(ip.yaw, ip.pitch))


def test_render_deterministic_by_seed():
    imgs = []
    for seed in (11, 11, 12):
        ident = sample_identity(seed, 0)
        ip = sample_image_params(seed, 0, 0)
        imgs.append(render(ident, ip, ip.camera_label(), R))
    assert imgs[0].dtype == np.uint8 and imgs[0].shape == (R, R, 3)
    assert imgs[0].tobytes() == imgs[1].tobytes()
    assert np.abs(imgs[0].astype(int) - imgs[2]).mean() > 5


def test_render_accepts_label_formats():
    ident, ip = sample_identity(0, 1), sample_image_params(0, 1, 0)
    c = ip.camera_label()
    ref = render(ident, ip, c, 32)
    for cc in (torch.from_numpy(c)[None], c.tolist(), None):
        assert np.array_equal(render(ident, ip, cc, 32), ref)


# ------------------------------------------------------------------------------------------------------------------
# cameras: the renderer, project_points and EG3D's ray sampler agree
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("yaw,pitch,fov", [(0.0, 0.0, None), (0.5, 0.2, None), (-0.6, -0.3, 18.837), (0.25, -0.35, 25.0)])
def test_camera_rays_match_eg3d_ray_sampler(yaw, pitch, fov):
    kw = {"fov_degrees": fov} if fov else {"focal": FFHQ_FOCAL}
    c = sample_camera_label(yaw, pitch, **kw)
    cam2world, K = split_label(c)
    o_ref, d_ref = _eg3d_ray_sampler(cam2world, K, 16)
    o, d = camera_rays(c[0], 16)
    np.testing.assert_allclose(o, o_ref[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(d, d_ref[0].numpy(), atol=2e-6)
    # a point on the ray of pixel (i, j) projects onto that pixel centre (j, i)
    t = 2.6
    xy = project_points(o + t * d, c, 16)
    ii, jj = np.divmod(np.arange(256), 16)
    np.testing.assert_allclose(xy, np.stack([jj, ii], 1), atol=1e-3)


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (0.55, 0.25), (-0.6, -0.3), (0.2, -0.35)])
def test_marker_centroid_matches_projection(yaw, pitch):
    ident = sample_identity(0, 2)
    ip = _no_occluder(sample_image_params(0, 2, 0))
    c = _label(yaw, pitch)
    ii, jj = np.mgrid[0:R, 0:R]
    for pt in ([0.06, -0.03, 0.36], [-0.1, 0.08, 0.33]):
        pt = np.array(pt)
        img, aux = render(ident, ip, c, R, supersample=4, return_aux=True, markers=[(pt, 0.02, (1.0, 0.0, 1.0))])
        m = aux["marker_mask"]
        assert m.sum() > 10
        centroid = np.array([(m * jj).sum() / m.sum(), (m * ii).sum() / m.sum()])
        proj = project_points(pt[None], c, R)[0]
        assert np.abs(centroid - proj).max() < 0.15, (centroid, proj)
        # the marker is drawn in its flat colour at the projected pixel
        x, y = np.round(proj).astype(int)
        assert tuple(img[y, x]) == (255, 0, 255)


def test_landmarks_project_onto_the_face():
    ident = sample_identity(0, 5)
    lm = head_landmarks(ident)
    c = _label(0.0, 0.0)
    xy = project_points(np.stack(list(lm.values())), c, R)
    d = dict(zip(lm, xy))
    # frontal view: face centred, subject's right eye on the image left, mouth below the nose below the eyes
    assert abs(d["nose_tip"][0] - (R - 1) / 2) < 1.0
    assert d["eye_right"][0] < d["nose_tip"][0] < d["eye_left"][0]
    assert d["eye_left"][1] < d["nose_tip"][1] < d["mouth_center"][1] < d["chin"][1]
    # and everything lies in EG3D's box
    assert np.all(np.abs(np.stack(list(lm.values()))) < 0.5)


# ------------------------------------------------------------------------------------------------------------------
# ground truth consistency across identities, cameras and expressions
# ------------------------------------------------------------------------------------------------------------------


def test_identities_differ_same_identity_consistent_across_cameras():
    ip = _no_occluder(sample_image_params(0, 0, 0))
    cA, cB = _label(0.0, 0.0), _label(0.4, -0.2)
    ident = sample_identity(0, 0)
    A, auxA = render(ident, ip, cA, R, supersample=1, return_aux=True)
    B, auxB = render(ident, ip, cB, R, supersample=1, return_aux=True)
    # different identities under identical image parameters and camera look different
    for other in (1, 2, 3):
        C = render(sample_identity(0, other), ip, cA, R, supersample=1)
        assert np.abs(A.astype(int) - C).mean() > 8
    # frontal: the face is centred
    mask = auxA["mask"]
    cols = np.nonzero(mask.sum(0) > 0)[0]
    assert abs((cols.min() + cols.max()) / 2 - (R - 1) / 2) <= 2
    # 3D consistency: unproject camera A's foreground pixels with their depth, reproject into camera B, and compare
    # colours where the point is visible in B (Lambertian shading is view independent)
    o, d = camera_rays(cA, R)
    fg = mask.reshape(-1) > 0.99
    X = o[fg] + d[fg] * auxA["depth"].reshape(-1)[fg][:, None]
    xy = project_points(X, cB, R)
    ij = np.round(xy).astype(int)
    inb = np.all((ij >= 0) & (ij < R), axis=1)
    X, ij = X[inb], ij[inb]
    oB = camera_rays(cB, 1)[0][0]
    visible = np.abs(auxB["depth"][ij[:, 1], ij[:, 0]] - np.linalg.norm(X - oB, axis=1)) < 0.004
    assert visible.sum() > 500
    colA = A.reshape(-1, 3)[fg][inb][visible].astype(int)
    colB = B[ij[visible, 1], ij[visible, 0]].astype(int)
    diff = np.abs(colA - colB).max(1)
    assert np.median(diff) <= 4
    assert (diff < 20).mean() > 0.85


def test_smile_changes_mainly_the_mouth():
    for iid in (0, 4):
        ident = sample_identity(1, iid)
        ip = _no_occluder(sample_image_params(1, iid, 0))
        c = _label(0.15, 0.05)
        a = render(ident, dataclasses.replace(ip, smile=0.0), c, R).astype(int)
        b = render(ident, dataclasses.replace(ip, smile=1.0), c, R).astype(int)
        diff = np.abs(a - b).sum(-1)
        assert diff.sum() > 300
        lm = head_landmarks(ident)
        mouth = project_points(np.stack([lm["mouth_left"], lm["mouth_right"], lm["mouth_center"]]), c, R)
        x0, y0 = mouth.min(0) - 4
        x1, y1 = mouth.max(0) + 4
        inside = diff[math.floor(y0) : math.ceil(y1) + 1, math.floor(x0) : math.ceil(x1) + 1]
        assert inside.sum() / diff.sum() > 0.9
        # closing the eyes changes the image elsewhere
        e = render(ident, dataclasses.replace(ip, eyes_open=0.0), c, R).astype(int)
        assert np.abs(e - a).sum() > 300


def test_occluder_mask_and_aux():
    ident = sample_identity(0, 6)
    ip = dataclasses.replace(
        sample_image_params(0, 6, 0), occluder=True, occluder_kind="disc", occluder_center=(0.0, -0.05, 0.4),
        occluder_size=(0.08, 0.0),
    )
    _img, aux = render(ident, ip, _label(0.0, 0.0), R, return_aux=True)
    assert aux["occluder_mask"].sum() > 20
    assert aux["occluder_mask"][R // 2 + 3, R // 2] == 1.0
    assert np.all(aux["mask"] >= aux["occluder_mask"])
    # depth: the occluder (z = 0.4) is closer than the face, background is 0
    assert 2.0 < aux["depth"][R // 2 + 3, R // 2] < 2.45
    assert aux["depth"][0, 0] == 0.0 and aux["mask"][0, 0] == 0.0


# ------------------------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------------------------


def test_export_layout_and_labels(tmp_path):
    info = export_dataset(
        tmp_path / "ds", num_identities=2, images_per_identity=3, resolution=32, seed=5, test_images_per_identity=2,
        identity_offset=10,
    )
    root = tmp_path / "ds"
    assert [i["dir"] for i in info["identities"]] == ["id_00010", "id_00011"]
    top = json.loads((root / "dataset.json").read_text())["labels"]
    assert len(top) == 6 and top[0][0] == "id_00010/img_00000.png"
    top_test = json.loads((root / "dataset_test.json").read_text())["labels"]
    assert len(top_test) == 4 and top_test[0][0] == "id_00010/test/img_00000.png"
    ids = json.loads((root / "identities.json").read_text())
    assert ids["seed"] == 5 and len(ids["identities"]) == 2
    for name, label in top + top_test:
        assert len(label) == 25 and all(isinstance(v, float) for v in label)
        assert (root / name).is_file()
    for iid in (10, 11):
        d = root / f"id_{iid:05d}"
        labels = json.loads((d / "dataset.json").read_text())["labels"]
        assert [n for n, _ in labels] == ["img_00000.png", "img_00001.png", "img_00002.png"]
        meta = json.loads((d / "meta.json").read_text())
        assert meta["identity_id"] == iid
        ident = IdentityParams.from_dict(meta["identity"])
        assert ident == sample_identity(5, iid)
        test_labels = json.loads((d / "test" / "dataset.json").read_text())["labels"]
        assert len(test_labels) == 2
        for (name, label), rec in zip(labels, meta["images"]):
            assert rec["file"] == name and rec["camera_label"] == label
            ip = ImageParams.from_dict(rec["params"])
            # the label is the render camera: the exact EG3D label of the recorded pose
            np.testing.assert_array_equal(np.array(label, dtype=np.float32), _label(ip.yaw, ip.pitch))
            png = np.asarray(Image.open(d / name).convert("RGB"))
            assert png.shape == (32, 32, 3)
            assert np.array_equal(png, render(ident, ip, np.array(label), 32))
        for (name, label), rec in zip(test_labels, meta["test_images"]):
            assert ImageParams.from_dict(rec["params"]).split == "test"
            assert (d / "test" / name).is_file()
    assert not list(root.rglob("*.tmp"))


def test_export_deterministic_bytes_and_workers(tmp_path):
    kw = {"num_identities": 2, "images_per_identity": 2, "resolution": 32, "seed": 3}
    export_dataset(tmp_path / "a", workers=1, **kw)
    export_dataset(tmp_path / "b", workers=2, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 2 + 2 * 2 + 2  # pngs, per-identity json, top-level json
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_cli(tmp_path, capsys):
    rc = cli_main(
        ["--out", str(tmp_path / "c"), "--identities", "1", "--images-per-identity", "2", "--resolution", "32",
         "--seed", "1", "--test-images-per-identity", "1", "--identity-offset", "3", "--no-progress"]
    )
    assert rc == 0
    assert (tmp_path / "c" / "id_00003" / "img_00001.png").is_file()
    assert (tmp_path / "c" / "id_00003" / "test" / "img_00000.png").is_file()
    assert "wrote 3 images" in capsys.readouterr().out


def test_speed_smoke():
    for i in range(20):
        ident = sample_identity(2, i % 5)
        ip = sample_image_params(2, i % 5, i)
        img = render(ident, ip, ip.camera_label(), R)
        assert img.shape == (R, R, 3)

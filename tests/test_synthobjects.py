"""SynthObjects: determinism, captions that match the parameters, camera/geometry agreement, export layout, CLI."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from my3dgen_hf.synthetic.synthobjects import (
    FIT_RADIUS,
    PALETTE,
    SUPPORTS,
    ObjectParams,
    caption,
    chamfer_distance,
    export_dataset,
    object_cameras,
    object_mesh,
    object_points,
    object_primitives,
    object_sdf,
    render_views,
    sample_object,
)
from my3dgen_hf.synthetic.synthobjects_cli import main as cli_main
from my3dgen_hf.tunemv3d.cameras import pixel_rays, project_points, split_labels
from my3dgen_hf.tunemv3d.data import MultiViewDataset, load_image, read_cameras

R = 48


def test_sampling_and_rendering_are_deterministic():
    for category in ("chair", "table"):
        a, b = sample_object(7, 3, category), sample_object(7, 3, category)
        assert a == b and a.category == category
        assert ObjectParams.from_dict(json.loads(json.dumps(a.to_dict()))) == a
        cams = object_cameras(7, 3, 4)
        assert torch.equal(cams, object_cameras(7, 3, 4))
        assert np.array_equal(render_views(a, cams, R, 2), render_views(b, cams, R, 2))
    mixed = [sample_object(1, i, "mixed") for i in range(12)]
    assert {p.category for p in mixed} == {"chair", "table"}
    assert all(p == sample_object(1, i, p.category) for i, p in enumerate(mixed))
    with pytest.raises(ValueError, match="category"):
        sample_object(0, 0, "sofa")
    with pytest.raises(ValueError, match="object_id"):
        sample_object(0, -1)


def test_different_objects_differ():
    cams = object_cameras(0, 0, 2)
    params = [sample_object(0, i) for i in range(4)]
    assert len({json.dumps(p.to_dict()) for p in params}) == 4
    images = [render_views(p, cams, R) for p in params]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (images[i] != images[j]).any()
    assert sample_object(0, 0) != sample_object(1, 0)


def test_captions_name_what_the_parameters_say():
    objects = [sample_object(3, i, c) for c in ("chair", "table") for i in range(60)]
    for p in objects:
        text = caption(p)
        words = text.replace(",", "").split()
        assert p.category in text and p.colour in words, text
        assert {w for w in words if w in PALETTE} == {p.colour, p.leg_colour}, text
        assert p.support_weight in words, text
        legs = {"four_legs": "four", "three_legs": "three", "pedestal": "pedestal"}[p.support]
        assert legs in words and all(w not in words for w in {"four", "three", "pedestal"} - {legs}), text
        if p.category == "chair":
            assert ("armrests" in words or "armchair" in words) == p.armrests, text
            assert p.back in words and p.back_style in words, text
        else:
            assert p.top_shape in words, text
            assert (p.stature in words) or ({"low": "coffee", "tall": "dining"}[p.stature] in words), text
    # the palette, supports and templates are all used, and captions tell objects apart
    assert {p.colour for p in objects} == set(PALETTE)
    assert {p.support for p in objects} == set(SUPPORTS)
    assert len({caption(p) for p in objects}) > 0.8 * len(objects)
    assert caption(dataclasses.replace(sample_object(0, 0), colour="orange")).startswith("an orange")


def test_object_fits_and_chair_faces_plus_z():
    for i in range(6):
        for category in ("chair", "table"):
            p = sample_object(5, i, category)
            pts = object_points(p, 500, seed=i)
            lo, hi = pts.min(0), pts.max(0)
            assert np.linalg.norm(pts, axis=1).max() <= FIT_RADIUS + 1e-6
            assert np.abs((lo + hi) / 2).max() < 0.05  # centred
            prims = object_primitives(p)
            top = prims[0]
            assert top.part in ("seat", "top")
            legs = [q for q in prims if q.part in ("leg", "column", "base")]
            assert all(q.center[1] < top.center[1] for q in legs)
            if category == "chair":
                back = [q for q in prims if q.part in ("back", "slat", "rail")]
                assert back and all(q.center[2] < top.center[2] and q.center[1] > top.center[1] for q in back)


def test_ground_truth_points_project_into_the_rendered_mask():
    """Surface samples seen through cameras.py's projection land on object pixels; rendered depths lie on the surface."""
    for i, category in enumerate(("chair", "table", "chair")):
        p = sample_object(11, i, category)
        cams = object_cameras(11, i, 5)
        rgba, aux = render_views(p, cams, R, return_aux=True)
        mask = aux["mask"]
        assert np.array_equal(mask, rgba[..., 3] == 255) and set(np.unique(rgba[..., 3])) <= {0, 255}
        assert not mask[:, 0].any() and not mask[:, -1].any() and not mask[:, :, 0].any() and not mask[:, :, -1].any()
        assert (rgba[~mask][:, :3] == 255).all()  # white background

        pts = object_points(p, 3000, seed=i)
        uv, z = project_points(torch.as_tensor(pts, dtype=torch.float32)[None], cams[None])
        uv, z = uv[0].numpy(), z[0].numpy()  # [V, P, 2], [V, P]
        assert (uv > 0).all() and (uv < 1).all() and (z > 0).all()
        col, row = np.floor(uv[..., 0] * R).astype(int), np.floor(uv[..., 1] * R).astype(int)
        inside = np.stack([mask[v, row[v], col[v]] for v in range(len(cams))])
        assert inside.mean() > 0.85  # the rest hit thin parts (legs) narrower than a pixel: next to the mask
        dilated = mask.copy()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                dilated |= np.roll(mask, (dr, dc), axis=(1, 2))
        assert np.stack([dilated[v, row[v], col[v]] for v in range(len(cams))]).all()
        # points are not in front of the rendered surface, except at depth edges inside one pixel's footprint
        depth = aux["depth"]
        front = np.stack([depth[v, row[v], col[v]] for v in range(len(cams))])
        assert (z >= front - 0.03)[inside].mean() > 0.95

        # back-projected depth pixels lie on the object's surface
        o, d = pixel_rays(cams, R, R)
        forward = split_labels(cams)[0][:, None, :3, 2]
        t = torch.as_tensor(depth.reshape(len(cams), -1)) / (d * forward).sum(-1)
        world = (o + t[..., None] * d).reshape(-1, 3).numpy()[mask.reshape(-1)]
        assert np.abs(object_sdf(p, world)).max() < 1e-4


def test_supersampling_antialiases_edges():
    p = sample_object(2, 1)
    cams = object_cameras(2, 1, 2)
    hard, soft = render_views(p, cams, R), render_views(p, cams, R, supersample=3)
    alpha = soft[..., 3]
    assert ((alpha > 0) & (alpha < 255)).any()
    assert np.mean((alpha >= 128) == (hard[..., 3] == 255)) > 0.97
    assert (soft[alpha == 0][:, :3] == 255).all()


def test_points_mesh_and_sdf_agree():
    p = sample_object(4, 2)
    pts, nrm = object_points(p, 2000, seed=3, return_normals=True)
    assert pts.shape == (2000, 3) and np.array_equal(pts, object_points(p, 2000, seed=3))
    assert not np.array_equal(pts, object_points(p, 2000, seed=4))
    assert np.abs(object_sdf(p, pts)).max() < 1e-6  # on the outer surface, never inside the union
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1)
    # stepping along the normal leaves the object
    assert (object_sdf(p, pts + 1e-3 * nrm) > 0).mean() > 0.99

    verts, faces = object_mesh(p)
    assert faces.min() == 0 and faces.max() == len(verts) - 1
    assert object_sdf(p, verts).max() < 1e-6
    tri = verts[faces]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6  # > 0: outward winding
    expect = sum(8 * np.prod(q.half) if q.kind == "box" else 2 * math.pi * q.half[0] ** 2 * q.half[1] for q in object_primitives(p))
    assert volume == pytest.approx(expect, rel=0.02)


def test_sphere_primitive_mesh_and_samples():
    """Spheres (used by tunemv3d/toy_data.py) mesh and sample like the other primitives."""
    from my3dgen_hf.synthetic.synthobjects import Primitive, _surface_samples, _unit_sphere_mesh

    v, f = _unit_sphere_mesh(48)
    tri = v[f]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert volume == pytest.approx(4 / 3 * math.pi, rel=0.01) and np.allclose(np.linalg.norm(v, axis=1), 1)
    pts, nrm = _surface_samples(Primitive("sphere", (0, 0, 0), (0.3,) * 3), 100, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(pts, axis=1), 0.3) and np.allclose(pts, 0.3 * nrm)


def test_chamfer_distance():
    p, q = sample_object(0, 0), sample_object(0, 1)
    a = object_points(p, 1500, seed=0)
    assert chamfer_distance(a, a) == 0.0
    shift = np.array([0.01, 0.0, 0.0])
    cd = chamfer_distance(a, a + shift)
    assert 0 < cd <= 0.01 + 1e-12
    assert chamfer_distance(a, a + shift, squared=True) <= 1e-4 + 1e-12
    same = chamfer_distance(a, object_points(p, 1500, seed=1))
    assert same < chamfer_distance(a, object_points(q, 1500, seed=1))
    assert chamfer_distance(a[:10], a) == pytest.approx(chamfer_distance(a, a[:10]))
    with pytest.raises(ValueError):
        chamfer_distance(np.zeros((0, 3)), a)


def test_export_round_trips_through_the_training_reader(tmp_path):
    root = tmp_path / "objs"
    info = export_dataset(root, num_objects=2, num_views=5, resolution=16, seed=9, category="mixed", supersample=1)
    assert [o["dir"] for o in info["objects"]] == ["00000", "00001"]
    obj = root / "00000"
    assert sorted(f.name for f in obj.iterdir()) == ["000.png", "001.png", "002.png", "003.png", "004.png", "cameras.json", "caption.txt"]
    meta = json.loads((root / "meta.json").read_text())
    assert meta == info and meta["seed"] == 9 and meta["num_views"] == 5

    ds = MultiViewDataset(root, num_views=3, num_novel_views=2, resolution=16, random_views=False)
    assert len(ds) == 2
    for k, entry in enumerate(meta["objects"]):
        params = ObjectParams.from_dict(entry["params"])
        assert params == sample_object(9, k, "mixed") and entry["caption"] == caption(params)
        item = ds[k]
        assert item["caption"] == caption(params) and item["object_id"] == entry["dir"]
        cams = object_cameras(9, k, 5)
        assert torch.allclose(item["cameras"], cams, atol=1e-6)
        assert torch.allclose(read_cameras(root / entry["dir"] / "cameras.json")[1], cams, atol=1e-6)
        rgba = render_views(params, cams, 16).astype(np.float32) / 255
        expect = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        assert torch.allclose(item["images"], torch.from_numpy(expect).permute(0, 3, 1, 2) * 2 - 1, atol=1e-6)
        assert torch.equal(load_image(root / entry["dir"] / "000.png", 16), item["images"][0])

    # a disjoint object set into the same folder adds to meta.json; other settings are refused
    more = export_dataset(root, num_objects=1, num_views=5, resolution=16, seed=9, category="mixed", supersample=1, object_offset=5)
    assert [o["object_id"] for o in more["objects"]] == [0, 1, 5] and len(MultiViewDataset(root, 3, 2, 16)) == 3
    with pytest.raises(ValueError, match="other settings"):
        export_dataset(root, num_objects=1, num_views=5, resolution=32, seed=9, category="mixed", supersample=1)
    with pytest.raises(ValueError):
        export_dataset(tmp_path / "bad", num_objects=1, num_views=0, resolution=16)


def test_cameras_first_views_form_a_ring():
    cams = object_cameras(0, 3, 8, elevation_range=(20, 20))
    pos = split_labels(cams)[0][:, :3, 3]
    assert torch.allclose(pos.norm(dim=-1), torch.full((8,), 2.0), atol=1e-5)
    az = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2])) % 360
    first4 = torch.sort(az[:4]).values
    assert torch.allclose(torch.diff(first4), torch.full((3,), 90.0), atol=1e-3)
    assert torch.allclose(torch.diff(torch.sort(az).values), torch.full((7,), 45.0), atol=1e-3)


def test_cli_writes_the_dataset_and_rejects_bad_args(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["--out", str(out), "--objects", "2", "--views", "3", "--resolution", "16", "--seed", "4",
                     "--category", "table", "--no-progress"]) == 0
    assert "wrote 6 views of 2 objects" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert [o["category"] for o in meta["objects"]] == ["table", "table"]
    for o in meta["objects"]:
        assert (out / o["dir"] / "caption.txt").read_text().strip() == o["caption"]
        assert len(read_cameras(out / o["dir"] / "cameras.json")[0]) == 3
    for bad in (["--objects", "0"], ["--category", "sofa"], ["--resolution", "4"], ["--elevation", "50,10"],
                ["--elevation", "x"], ["--views", "-1"], ["--supersample", "0"], ["--fov", "0"]):
        args = ["--out", str(tmp_path / "bad"), "--objects", "1", "--views", "2", "--no-progress"] + bad
        with pytest.raises(SystemExit) as e:
            cli_main(args)
        assert e.value.code == 2
    assert not (tmp_path / "bad").exists()

"""Photo preprocessing on real photos that installed packages ship (dlib + face_recognition_models)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("dlib", reason="pip install dlib-bin face_recognition_models")
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("pip install face_recognition_models", allow_module_level=True)

from PIL import Image  # noqa: E402

from my3dgen_hf.eg3d.camera import sample_camera_label  # noqa: E402
from my3dgen_hf.personalization import estimate_pose, load_eg3d_dataset, load_training_data, preprocess_photos  # noqa: E402
from my3dgen_hf.personalization.preprocess import TEMPLATE_3D, TEMPLATE_INDICES  # noqa: E402

R = 128


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import matplotlib.cbook
    import skimage.data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(d / "astronaut.png")
    shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), d / "grace_hopper.jpg")
    Image.fromarray(skimage.data.chelsea()).save(d / "chelsea.jpg")
    (d / "notes.txt").write_text("not a photo")
    Image.fromarray(skimage.data.astronaut()[:24, :24]).save(d / "tiny.png")
    (d / "truncated.jpg").write_bytes((d / "grace_hopper.jpg").read_bytes()[:4000])
    two = Image.new("RGB", (1024, 600), "white")
    two.paste(Image.fromarray(skimage.data.astronaut()), (0, 40))
    two.paste(Image.open(d / "grace_hopper.jpg"), (512, 0))
    two.save(d / "two_people.jpg")
    return d


def test_real_photos_accepted_and_rejected_with_reasons(photos, tmp_path):
    files = [photos / n for n in ("astronaut.png", "grace_hopper.jpg", "chelsea.jpg", "notes.txt", "tiny.png", "truncated.jpg", "two_people.jpg")]
    res = preprocess_photos(files, tmp_path / "crops", R)
    assert [p.split("/")[-1] for p in res.names] == ["astronaut.png", "grace_hopper.jpg"]
    reasons = {f.split("/")[-1]: r for f, r in res.rejected}
    assert reasons["chelsea.jpg"] == "no face found"
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons["tiny.png"] == "image too small (24x24 px); need at least 64 px on the shorter side"
    assert reasons["truncated.jpg"].startswith("corrupt or truncated image")
    assert reasons["two_people.jpg"].startswith("2 faces found")
    assert res.images.shape == (2, 3, R, R) and res.images.min() >= -1 and res.images.max() <= 1
    assert len(res.crops) == 2 and res.crops[0].size == (R, R)
    # Near-frontal poses, and labels that are exactly the EG3D cameras of those poses.
    for yaw, pitch in res.poses:
        assert abs(yaw) < 0.3 and abs(pitch) < 0.3
    yaw, pitch = torch.tensor(res.poses).T
    torch.testing.assert_close(res.labels, sample_camera_label(yaw, pitch, focal=4.2647))
    # FFHQ framing: eyes level at ~47 % of the height, about a third of the width apart.
    lm = np.array(res.details[0]["landmarks"])
    left, right = lm[36:42].mean(0) / R, lm[42:48].mean(0) / R
    assert abs(left[1] - right[1]) < 0.02 and 0.40 < left[1] < 0.52 and 0.2 < right[0] - left[0] < 0.35
    # The crops and labels are written as an EG3D dataset that loads back unchanged.
    images, labels, names = load_eg3d_dataset(tmp_path / "crops")
    assert names == ["astronaut.png", "grace_hopper.png"]
    torch.testing.assert_close(images, res.images)
    torch.testing.assert_close(labels, res.labels)
    assert (tmp_path / "crops" / "preprocess_report.json").is_file()


def test_plain_photo_folder_goes_through_preprocessing(photos, tmp_path):
    logged = []
    images, _, names = load_training_data(photos, R, num_images=1, preprocessed_dir=tmp_path / "pre", progress=False, log=logged.append)
    assert images.shape == (1, 3, R, R) and names[0].endswith("astronaut.png")
    assert any("chelsea.jpg: no face found" in line for line in logged)
    assert (tmp_path / "pre" / "dataset.json").is_file()


@pytest.mark.parametrize("method", ["lstsq", "pnp"])
def test_pose_recovers_known_cameras(method):
    if method == "pnp" and importlib.util.find_spec("cv2") is None:
        pytest.skip("opencv-python-headless not installed (the numpy path is used)")
    from my3dgen_hf.synthetic import project_points

    for yaw, pitch in [(0.0, 0.0), (0.3, 0.0), (-0.4, 0.1), (0.2, -0.25)]:
        c = sample_camera_label(yaw, pitch, focal=4.2647)[0].numpy()
        lm = np.zeros((68, 2))
        lm[TEMPLATE_INDICES] = project_points(TEMPLATE_3D * 0.02 + np.array([0, 0, 0.2]), c, R) + 0.5
        y, p, used = estimate_pose(lm, R, method=method)
        assert abs(y - yaw) < 1e-3 and abs(p - pitch) < 1e-3, (yaw, pitch, y, p)
        assert used == ("solvepnp" if method == "pnp" else "lstsq-template")


def test_mirrored_photo_mirrors_the_yaw(photos):
    img = Image.open(photos / "astronaut.png")
    flipped = photos / "astronaut_flipped.png"
    img.transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    try:
        res = preprocess_photos([photos / "astronaut.png", flipped], None, R)
    finally:
        flipped.unlink()
    (y0, p0), (y1, p1) = res.poses
    assert abs(y0 + y1) < 0.03 and abs(p0 - p1) < 0.03

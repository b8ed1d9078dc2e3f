"""EG3D camera conventions: look-at poses, intrinsics, labels, orbits."""

import math

import pytest
import torch
from safetensors.torch import load_file

from my3dgen_hf.eg3d.camera import (
    camera_label,
    camera_yaw_pitch,
    fov_to_intrinsics,
    frontal_conditioning_label,
    look_at_pose,
    orbit_camera_labels,
    sample_camera_label,
    split_label,
)


def test_frontal_camera_is_on_plus_z_looking_at_pivot_with_opencv_axes():
    pose = look_at_pose(0.0, 0.0, radius=2.7, lookat=(0, 0, 0.2))[0]
    torch.testing.assert_close(pose[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6, rtol=0)
    # OpenCV: x right (+X), y down (-Y), z forward (toward the face at -Z)
    torch.testing.assert_close(pose[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6, rtol=0)


def test_positive_yaw_moves_camera_to_plus_x_and_positive_pitch_down():
    assert look_at_pose(0.3, 0.0)[0, 0, 3] > 0
    assert look_at_pose(0.0, 0.2)[0, 1, 3] < 0


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (0.35, -0.25), (-0.6, 0.3)])
def test_pose_looks_at_pivot_and_is_orthonormal(yaw, pitch):
    pose = look_at_pose(yaw, pitch, radius=2.7, lookat=(0, 0, 0.2))[0]
    R, t = pose[:3, :3], pose[:3, 3]
    torch.testing.assert_close(R.T @ R, torch.eye(3), atol=1e-5, rtol=0)
    assert torch.det(R).item() == pytest.approx(1.0, abs=1e-5)
    to_pivot = torch.tensor([0, 0, 0.2]) - t
    torch.testing.assert_close(R[:, 2], to_pivot / to_pivot.norm(), atol=1e-5, rtol=0)
    assert t.norm().item() == pytest.approx(2.7, abs=1e-5)


def test_fov_intrinsics_match_the_original_constants():
    K = fov_to_intrinsics(18.837)
    assert K[0, 0].item() == pytest.approx(1 / (math.tan(18.837 * 3.14159 / 360) * 1.414), rel=1e-6)
    assert K[0, 0].item() == pytest.approx(4.2634, abs=1e-4)
    assert K[0, 2].item() == 0.5 and K[1, 2].item() == 0.5


def test_label_round_trip_and_yaw_pitch_inverse():
    yaw, pitch = torch.tensor([0.2, -0.3]), torch.tensor([0.1, -0.05])
    c = sample_camera_label(yaw, pitch, focal=4.2647)
    assert c.shape == (2, 25)
    cam2world, K = split_label(c)
    torch.testing.assert_close(camera_label(cam2world, K), c)
    y, p = camera_yaw_pitch(c)
    torch.testing.assert_close(y, yaw, atol=1e-5, rtol=0)
    torch.testing.assert_close(p, pitch, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\[N, 25\]"):
        split_label(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="not both"):
        sample_camera_label(0.0, 0.0, fov_degrees=18.0, focal=4.0)


def test_reference_fixture_cameras_are_reproduced(eg3d_fixture_dir):
    c = load_file(eg3d_fixture_dir / "cases.safetensors")["c"]
    yaw, pitch = camera_yaw_pitch(c)
    torch.testing.assert_close(sample_camera_label(yaw, pitch), c, atol=1e-5, rtol=0)


def test_orbit_and_frontal_conditioning():
    orbit = orbit_camera_labels(12, yaw_range=0.35, pitch_range=0.25)
    assert orbit.shape == (12, 25)
    yaw, pitch = camera_yaw_pitch(orbit)
    assert yaw.abs().max().item() == pytest.approx(0.35, abs=1e-4)
    assert (pitch + 0.05).abs().max().item() == pytest.approx(0.25, abs=1e-4)
    front = frontal_conditioning_label({"avg_camera_radius": 1.7, "avg_camera_pivot": [0, 0, 0]})
    torch.testing.assert_close(front[0, :16].reshape(4, 4)[:3, 3], torch.tensor([0.0, 0.0, 1.7]), atol=1e-6, rtol=0)

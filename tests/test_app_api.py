"""Every named endpoint of the app through ``gradio_client`` against a server on 127.0.0.1 (tiny base model):
photos, training (stop/resume), renders, interpolation, Hub push/pull, readable errors, session isolation between
two clients, and clean-up when a client goes away."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")
pytest.importorskip("gradio_client", reason="gradio_client comes with gradio")

from e2e.app_support import app_config, launched_app, save_tiny_base, save_tiny_text_to_3d  # noqa: E402
from hub_fixtures import hub_endpoint, hub_server  # noqa: E402,F401  (pytest fixtures)
from hub_server import WRITE_TOKEN  # noqa: E402

ENDPOINTS = {
    "/demo_identity", "/check_photos", "/train", "/stop", "/resume", "/training_status", "/render", "/orbit", "/mesh",
    "/interpolate", "/sample_looks", "/edit", "/text_to_3d", "/push_to_hub", "/load_from_hub", "/list_adapters",
}
RENDER_ARGS = dict(mix_=None, w_=1.0, source_="seed", seed_=0, anchor_=None, yaw_=0, pitch_=0, trunc_=0.7)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = save_tiny_base(tmp_path_factory.mktemp("tiny_base"))
    t3d = save_tiny_text_to_3d(tmp_path_factory.mktemp("tiny_t3d"))
    cfg = app_config(base, tmp_path_factory.mktemp("sessions"), text_to_3d_model=str(t3d), text_to_3d_steps=2, text_to_3d_mesh_resolution=24)
    with launched_app(cfg) as (demo, url):
        yield demo, url


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def render_args(identity="base", **kw):
    args = dict(RENDER_ARGS, identity_=identity, mix_="none")
    args.update(kw)
    return [args[k] for k in ("identity_", "mix_", "w_", "source_", "seed_", "anchor_", "yaw_", "pitch_", "trunc_")]


def _image(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_every_endpoint_is_named(app):
    _, url = app
    c = client(url)
    assert set(c.view_api(return_format="dict", print_info=False)["named_endpoints"]) == ENDPOINTS
    c.close()


def test_personalize_render_share_flow(app, hub_endpoint, hub_server, tmp_path):  # noqa: F811
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError as ClientAppError
    from PIL import Image
    from skimage import data as skdata

    _, url = app
    c = client(url)
    # photos: a real face photo is accepted with its pose, a text file is rejected with the reason
    face = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(face)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    gallery, rejected, summary = c.predict([handle_file(str(face)), handle_file(str(notes))], api_name="/check_photos")
    assert len(gallery) == 1 and "yaw" in gallery[0]["caption"] and "1 photo(s) ready" in summary
    assert [r[0] for r in rejected["data"]] == ["notes.txt"] and "not a supported image type" in rejected["data"][0][1]

    gallery, rejected, summary = c.predict(3, 4, api_name="/demo_identity")
    assert len(gallery) == 4 and rejected["data"] in ([], [["", ""]]) and "4 photo(s) ready" in summary

    status, losses = c.predict("alice", 1, 3, 2, 0, api_name="/train")
    assert "done" in status and [row[0] for row in losses["data"]] == [1, 2, 3]
    status, _ = c.predict(api_name="/training_status")
    assert "3/3" in status
    adapters = c.predict(api_name="/list_adapters")
    assert [a["name"] for a in adapters] == ["alice"] and adapters[0]["anchors"] == 4

    base_img, _ = c.predict(*render_args("base"), api_name="/render")
    img, depth = c.predict(*render_args("alice", source_="anchor", anchor_="anchor 2: img_00002.png", yaw_=25), api_name="/render")
    assert _image(img).shape == (128, 128, 3) and _image(depth).shape == (128, 128, 3)
    mixed, _ = c.predict(*render_args("alice", mix_="base", w_=0.0), api_name="/render")
    np.testing.assert_array_equal(_image(mixed), _image(base_img))  # weight 0 on alice = the prior
    video = c.predict(*render_args("alice"), 8, api_name="/orbit")
    assert Path(video["video"] if isinstance(video, dict) else video).stat().st_size > 1000
    model, download = c.predict(*render_args("alice"), 32, api_name="/mesh")
    assert Path(model).suffix == ".glb" and Path(download).read_bytes()[:4] == b"glTF"
    frames, video = c.predict("alice", "anchor 0: img_00000.png", "anchor 3: img_00003.png", 3, 0, api_name="/interpolate")
    assert len(frames) == 3
    looks = c.predict("alice", 3, 1, api_name="/sample_looks")
    assert len(looks) == 3 and len({_image(x["image"]).tobytes() for x in looks}) == 3  # three different looks
    frames, video = c.predict("alice", "anchor 1: img_00001.png", "smile", 2.0, 3, "continue", 0, api_name="/edit")
    assert len(frames) == 3 and Path(video).suffix == ".mp4"
    middle = _image(frames[1]["image"])  # magnitude 0: the anchor itself
    anchor1, _ = c.predict(*render_args("alice", source_="anchor", anchor_="anchor 1: img_00001.png"), api_name="/render")
    assert np.abs(middle.astype(int) - _image(anchor1).astype(int)).max() <= 1

    # text to 3D (the tiny TuneMV3D): 8 views, an orbit video and a coloured GLB
    views, video, model, download = c.predict("a red chair", 1, 2, 3.0, 20, api_name="/text_to_3d")
    assert len(views) == 8 and _image(views[0]["image"]).shape == (128, 128, 3)
    assert Path(video["video"] if isinstance(video, dict) else video).suffix == ".mp4"
    assert Path(model).suffix == ".glb" and Path(download).read_bytes()[:4] == b"glTF"

    # Hub: push, then a second client (another session) pulls it by repo id and revision
    out = c.predict("alice", "tester/api-alice", WRITE_TOKEN, True, api_name="/push_to_hub")
    assert "Pushed" in out and "tester/api-alice" in out
    other = client(url)
    out = other.predict("tester/api-alice", "main", WRITE_TOKEN, "pulled", api_name="/load_from_hub")
    assert "Loaded" in out and "pulled" in out
    pulled, _ = other.predict(*render_args("pulled", source_="anchor", anchor_="anchor 2: x", yaw_=25), api_name="/render")
    np.testing.assert_array_equal(_image(pulled), _image(img))

    # errors come back as readable messages (no stack trace)
    cases = [
        (lambda: c.predict("alice", "bad repo!", WRITE_TOKEN, True, api_name="/push_to_hub"), "not a valid Hub repo id"),
        (lambda: c.predict("alice", "tester/x", "", True, api_name="/push_to_hub"), "Paste a Hugging Face access token"),
        (lambda: other.predict("tester/nothing-here", "", "", "", api_name="/load_from_hub"), "not found"),
        (lambda: c.predict(*render_args("nobody"), api_name="/render"), "No adapter named 'nobody'"),
        (lambda: c.predict(api_name="/stop"), "Nothing to stop"),
        (lambda: c.predict(api_name="/resume"), "Nothing to resume"),
        (lambda: c.predict("base", "anchor 0", "anchor 1", 3, 0, api_name="/interpolate"), "Choose an adapter"),
        (lambda: c.predict("alice", "anchor 0", "frown", 2.0, 3, "stop", 0, api_name="/edit"), "Unknown edit direction"),
        (lambda: c.predict("base", 3, 0, api_name="/sample_looks"), "Choose an adapter"),
        (lambda: c.predict("", 0, 2, 3.0, 20, api_name="/text_to_3d"), "Type a prompt"),
        (lambda: other.predict("x", 1, 3, 2, 0, api_name="/train"), "No photos to train on"),
    ]
    for call, message in cases:
        with pytest.raises(ClientAppError) as info:
            call()
        assert message in str(info.value) and "Traceback" not in str(info.value)
    assert not hub_server.errors
    c.close()
    other.close()


def _wait_status(c, predicate, timeout=300):
    deadline = time.time() + timeout
    while True:
        status = c.predict(api_name="/training_status")[0]
        if predicate(status):
            return status
        assert time.time() < deadline, status
        time.sleep(0.3)


def test_stop_and_resume_through_the_api(app):
    import re

    _, url = app
    c = client(url)
    c.predict(5, 3, api_name="/demo_identity")
    job = c.submit("slow", 1, 60, 1, 0, api_name="/train")

    def step(status):
        m = re.search(r"training the adapter: (\d+)/60", status)
        return int(m.group(1)) if m else 0

    _wait_status(c, lambda s: step(s) >= 1)
    status, losses = c.predict(api_name="/stop")
    assert "Stopped" in status and 1 <= len(losses["data"]) < 60
    stopped_at = step(status)
    job.result(timeout=120)  # the train call returns when the run stops
    assert [a["name"] for a in c.predict(api_name="/list_adapters")] == ["slow"]  # the adapter so far is usable
    c.predict(*render_args("slow"), api_name="/render")
    resumed = c.submit(api_name="/resume")
    _wait_status(c, lambda s: "Stopped" not in s and step(s) > stopped_at)
    status, losses = c.predict(api_name="/stop")
    assert "Stopped" in status and [row[0] for row in losses["data"]] == list(range(1, len(losses["data"]) + 1))
    resumed.result(timeout=120)
    c.close()


def test_two_clients_train_at_once_without_cross_talk(app):
    demo, url = app
    a, b = client(url), client(url)
    a.predict(10, 3, api_name="/demo_identity")
    b.predict(11, 3, api_name="/demo_identity")
    ja = a.submit("anna", 1, 3, 1, 0, api_name="/train")
    jb = b.submit("ben", 1, 3, 1, 0, api_name="/train")
    assert "done" in ja.result(timeout=600)[0] and "done" in jb.result(timeout=600)[0]
    assert [x["name"] for x in a.predict(api_name="/list_adapters")] == ["anna"]
    assert [x["name"] for x in b.predict(api_name="/list_adapters")] == ["ben"]
    from gradio_client.exceptions import AppError as ClientAppError

    with pytest.raises(ClientAppError, match="No adapter named 'anna'"):
        b.predict(*render_args("anna"), api_name="/render")
    # closing a client ends its session: its folder is deleted (demo.unload)
    service = demo.my3dgen_service
    sid = a.session_hash
    folder = service.sessions.peek(sid).dir
    assert folder.is_dir()
    a.close()
    deadline = time.time() + 30
    # the session is unregistered first, then closed (its job joined, its folder removed)
    while (service.sessions.peek(sid) is not None or folder.exists()) and time.time() < deadline:
        time.sleep(0.2)
    assert service.sessions.peek(sid) is None and not folder.exists()
    assert [x["name"] for x in b.predict(api_name="/list_adapters")] == ["ben"]
    b.close()

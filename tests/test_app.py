"""The Gradio app's service layer: sessions and their isolation, training jobs (stop/resume), renders, Hub sharing,
upload checks, clean-up, no network at launch, and the Space files (requirements.txt vs pyproject.toml)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")

from e2e.app_support import OutboundGuard, app_config, launched_app, save_tiny_base, save_tiny_text_to_3d  # noqa: E402
from hub_fixtures import hub_endpoint, hub_server  # noqa: E402,F401  (pytest fixtures)
from hub_server import READ_TOKEN, WRITE_TOKEN  # noqa: E402

from my3dgen_hf.app import AppConfig, AppError  # noqa: E402
from my3dgen_hf.app.jobs import DONE, STOPPED  # noqa: E402
from my3dgen_hf.app.service import AppService, RenderRequest  # noqa: E402
from my3dgen_hf.app.sessions import clean_adapter_name  # noqa: E402
from my3dgen_hf.app.uploads import check_uploads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAIT = 600


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture()
def service(base_dir, tmp_path):
    svc = AppService(app_config(base_dir, tmp_path / "sessions"))
    yield svc
    svc.shutdown()


def _train(svc, sid, name, identity=0, photos=4, steps=4, proj=2, seed=0):
    svc.demo_album(sid, identity, photos)
    job = svc.start_training(sid, name, rank=1, steps=steps, projection_steps=proj, seed=seed)
    snap = job.wait_until(lambda s: s.finished, WAIT)
    assert snap.state == DONE, snap
    return job


def _render(svc, sid, **kw):
    img, depth = svc.render(sid, RenderRequest(**kw))
    return np.asarray(img), np.asarray(depth)


# ------------------------------------------------------------------------------------------ Space files
def _req_name(line: str) -> str:
    return re.split(r"[<>=!~\[;\s]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_cover_pyproject_runtime_and_app_deps():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_req_name(d) for d in project["dependencies"] + project["optional-dependencies"]["app"]}
    lines = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.strip() and not ln.strip().startswith(("#", "-"))]
    have = {_req_name(ln) for ln in lines}
    assert not any(ln.strip().startswith("-e") for ln in (ROOT / "requirements.txt").read_text().splitlines())
    # gradio comes from the Space's sdk_version (a second pin in requirements.txt could conflict with it)
    space = (ROOT / "hub_cards" / "space_README.md").read_text()
    sdk_version = re.search(r"^sdk_version:\s*([\d.]+)\s*$", space, re.M).group(1)
    missing = wanted - have - {"gradio"}
    assert not missing, f"requirements.txt lacks {sorted(missing)} from pyproject.toml"
    gradio_spec = next(d for d in project["optional-dependencies"]["app"] if _req_name(d) == "gradio")
    from packaging.specifiers import SpecifierSet

    assert sdk_version in SpecifierSet(gradio_spec.split("gradio", 1)[1]), (sdk_version, gradio_spec)


def test_space_readme_front_matter():
    import yaml

    text = (ROOT / "hub_cards" / "space_README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert (ROOT / meta["app_file"]).is_file()
    assert "my3dgen-hf/demo-synthheads" in meta["models"]
    assert meta["title"] and meta["emoji"]


def test_cli_flags_and_env(monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        import app as app_module
    finally:
        sys.path.remove(str(ROOT))
    args = app_module.parse_args([])
    assert args.share is False and args.host == "127.0.0.1" and args.base_model is None
    args = app_module.parse_args(["--base-model", "some/prior", "--port", "7999", "--share"])
    assert (args.base_model, args.port, args.share) == ("some/prior", 7999, True)
    monkeypatch.setenv("MY3DGEN_BASE_MODEL", "user/eg3d-prior")
    monkeypatch.setenv("MY3DGEN_MAX_SESSIONS", "3")
    cfg = AppConfig.from_env()
    assert cfg.base_model == "user/eg3d-prior" and cfg.max_sessions == 3
    assert AppConfig.from_env(base_model="flag/wins").base_model == "flag/wins"
    monkeypatch.setenv("MY3DGEN_MAX_SESSIONS", "many")
    with pytest.raises(ValueError, match="MY3DGEN_MAX_SESSIONS"):
        AppConfig.from_env()


def test_bad_base_model_is_one_readable_line(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        import app as app_module
    finally:
        sys.path.remove(str(ROOT))
    monkeypatch.setenv("MY3DGEN_TMP_DIR", str(tmp_path / "sessions"))
    assert app_module.main(["--base-model", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: Could not load the base model" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ inputs
def test_upload_checks(tmp_path):
    from PIL import Image

    good = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (200, 150, 120)).save(good)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"0" * (2 * 2**20))
    out = check_uploads([good, tmp_path / "notes.txt", tmp_path / "broken.jpg", big], tmp_path / "dest", max_files=10, max_file_mb=1)
    assert [p.name for p in out.accepted] == ["face.png"]
    reasons = dict(out.rejected)
    assert "not a supported image type" in reasons["notes.txt"]
    assert "not a readable image" in reasons["broken.jpg"]
    assert "too large" in reasons["big.png"]
    with pytest.raises(AppError, match="at most 2"):
        check_uploads([good] * 3, tmp_path / "dest2", max_files=2)
    with pytest.raises(AppError, match="No photos"):
        check_uploads([], tmp_path / "dest3")


def test_adapter_names():
    assert clean_adapter_name(" my-face 2 ") == "my_face_2"
    for bad in ("", "2fast", "base", "x" * 41, "../../etc"):
        with pytest.raises(AppError):
            clean_adapter_name(bad)


# ------------------------------------------------------------------------------------------ sessions
def test_two_sessions_train_at_once_and_never_see_each_other(service):
    base_before, _ = _render(service, "s-a", seed=3, yaw_deg=15)
    jobs = {}
    for sid, name, ident in (("s-a", "alice", 0), ("s-b", "bob", 1)):
        service.demo_album(sid, ident, 4)
        jobs[sid] = service.start_training(sid, name, rank=1, steps=4, projection_steps=2)
    for job in jobs.values():
        assert job.wait_until(lambda s: s.finished, WAIT).state == DONE
    assert service.adapter_names("s-a") == ["alice"] and service.adapter_names("s-b") == ["bob"]
    with pytest.raises(AppError, match="No adapter named 'alice'"):
        service.render("s-b", RenderRequest(identity="alice"))
    # each session's own adapter changes its render; base renders stay exactly the prior's, in both sessions
    alice, _ = _render(service, "s-a", identity="alice", seed=3, yaw_deg=15)
    bob, _ = _render(service, "s-b", identity="bob", seed=3, yaw_deg=15)
    assert not np.array_equal(alice, base_before) and not np.array_equal(bob, base_before)
    for sid in ("s-a", "s-b", "s-new"):
        again, _ = _render(service, sid, seed=3, yaw_deg=15)
        np.testing.assert_array_equal(again, base_before)
    assert not getattr(service.base.generator, "peft_config", None), "the shared base pipeline must never get adapters"
    # anchors are the session's own training photos
    assert len(service.anchor_choices("s-a", "alice")) == 4 and service.anchor_choices("s-b", "alice") == []


def test_stop_then_resume_continues_the_same_run(service):
    straight = _train(service, "ref", "ref", identity=2, photos=2, steps=5, proj=1, seed=5)
    ref_losses = straight.snapshot().losses

    service.demo_album("sr", 2, 2)
    job = service.start_training("sr", "paused", rank=1, steps=5, projection_steps=1, seed=5)
    job.wait_until(lambda s: s.step >= 2, WAIT)
    service.stop_training("sr")
    snap = job.wait_until(lambda s: s.waiting, WAIT)
    assert snap.state == STOPPED and snap.adapter_ready and 2 <= snap.step < 5
    assert service.adapter_names("sr") == ["paused"]  # usable while stopped
    _render(service, "sr", identity="paused", source="anchor", anchor=0)
    with pytest.raises(AppError, match="Nothing to stop"):
        service.stop_training("sr")
    service.resume_training("sr")
    snap = job.wait_until(lambda s: s.finished, WAIT)
    assert snap.state == DONE and snap.step == 5
    np.testing.assert_allclose([v for _, v in snap.losses], [v for _, v in ref_losses], rtol=1e-5)
    with pytest.raises(AppError, match="Nothing to resume"):
        service.resume_training("sr")
    summary = json.loads((service.session("sr").adapters["paused"].folder / "training_summary.json").read_text())
    assert summary["steps"] == 5 and summary["finished"] is True


def test_training_needs_photos_and_unique_names(service):
    with pytest.raises(AppError, match="No photos to train on"):
        service.start_training("t", "x")
    _train(service, "t", "dup", photos=2, steps=2, proj=1)
    service.demo_album("t", 1, 2)
    with pytest.raises(AppError, match="already exists"):
        service.start_training("t", "dup", steps=2, projection_steps=1)
    with pytest.raises(AppError, match="Rank must be"):
        service.start_training("t", "other", rank=99)


def test_session_files_are_removed_on_close_idle_and_overflow(base_dir, tmp_path):
    svc = AppService(app_config(base_dir, tmp_path / "sessions", max_sessions=2, session_ttl_s=3600))
    try:
        a = svc.session("a")
        svc.demo_album("a", 0, 2)
        assert any(a.dir.rglob("*.png"))
        svc.close_session("a")
        assert not a.dir.exists()
        b, c = svc.session("b"), svc.session("c")
        d = svc.session("d")  # over the limit: the least recently used idle session goes
        assert not b.dir.exists() and c.dir.exists() and d.dir.exists()
        svc.sessions.ttl_s = 0.0
        time.sleep(0.01)
        svc.session("e")
        assert not c.dir.exists() and not d.dir.exists()
    finally:
        svc.shutdown()
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


# ------------------------------------------------------------------------------------------ renders
def test_render_depth_orbit_mesh_interpolation(service):
    import imageio.v2 as imageio
    import trimesh

    _train(service, "r", "alice", photos=3, steps=2, proj=2)
    img, depth = _render(service, "r", identity="alice", source="anchor", anchor="anchor 1: img_00001.png", yaw_deg=20, pitch_deg=-5)
    assert img.shape == (128, 128, 3) and depth.shape == (128, 128, 3) and depth.std() > 0
    mixed, _ = _render(service, "r", identity="alice", mix_with="base", mix_weight=0.5, seed=1)
    assert mixed.shape == (128, 128, 3)
    video = service.orbit("r", RenderRequest(identity="alice", seed=1), num_frames=6)
    reader = imageio.get_reader(video, format="FFMPEG")
    assert reader.count_frames() == 6 and reader.get_meta_data()["size"] == (128, 128)
    reader.close()
    glb = service.mesh("r", RenderRequest(identity="alice", seed=1), resolution=32)
    mesh = trimesh.load(glb, force="mesh")
    assert glb.suffix == ".glb" and len(mesh.faces) > 100
    assert mesh.visual.kind == "vertex" and np.asarray(mesh.visual.vertex_colors).std() > 0
    frames, video = service.interpolate("r", "alice", 0, 2, num_frames=3)
    assert len(frames) == 3 and video.is_file()
    start, _ = _render(service, "r", identity="alice", source="anchor", anchor=0)
    np.testing.assert_array_equal(np.asarray(frames[0]), start)
    with pytest.raises(AppError, match="Anchor 9 does not exist"):
        service.render("r", RenderRequest(identity="alice", source="anchor", anchor=9))
    with pytest.raises(AppError, match="no anchors"):
        service.render("r", RenderRequest(identity="base", source="anchor", anchor=0))
    with pytest.raises(AppError, match="Yaw"):
        service.render("r", RenderRequest(yaw_deg=200))


# ------------------------------------------------------------------------------------------ text to 3D
def test_text_to_3d_views_video_and_coloured_mesh(base_dir, tmp_path):
    import imageio.v2 as imageio
    import trimesh

    model = save_tiny_text_to_3d(tmp_path / "tiny_t3d")
    svc = AppService(app_config(base_dir, tmp_path / "sessions", text_to_3d_model=str(model), text_to_3d_steps=2, orbit_frames=4,
                                text_to_3d_mesh_resolution=24))
    try:
        views, video, glb = svc.text_to_3d("t", "a red chair", seed=3)
        assert len(views) == 8 and views[0].size == (128, 128)  # 16 px views shown at 128
        reader = imageio.get_reader(video, format="FFMPEG")
        assert reader.count_frames() == 4 and reader.get_meta_data()["size"] == (128, 128)
        reader.close()
        mesh = trimesh.load(glb, force="mesh")
        assert glb.suffix == ".glb" and len(mesh.faces) > 100 and mesh.visual.kind == "vertex"
        again, _, _ = svc.text_to_3d("t", "a red chair", seed=3)
        other, _, _ = svc.text_to_3d("t", "a red chair", seed=4)
        assert np.array_equal(np.asarray(again[0]), np.asarray(views[0]))  # the seed fixes the sample
        assert not np.array_equal(np.asarray(other[0]), np.asarray(views[0]))
        assert glb.parent.parent == svc.session("t").dir  # files go to the caller's session folder
        with pytest.raises(AppError, match="Type a prompt"):
            svc.text_to_3d("t", "   ")
        with pytest.raises(AppError, match="denoising steps"):
            svc.text_to_3d("t", "a chair", steps=10_000)
    finally:
        svc.shutdown()
    broken = AppService(app_config(base_dir, tmp_path / "s2", text_to_3d_model=str(tmp_path / "missing")))
    try:
        with pytest.raises(AppError, match="MY3DGEN_TEXT_TO_3D_MODEL"):
            broken.text_to_3d("t", "a chair")
    finally:
        broken.shutdown()


# ------------------------------------------------------------------------------------------ Hub
def test_push_and_load_through_loopback_hub(service, hub_endpoint, hub_server):  # noqa: F811
    _train(service, "h1", "alice", photos=3, steps=2, proj=1)
    url = service.push_to_hub("h1", "alice", "tester/alice-adapter", WRITE_TOKEN, private=True)
    assert "tester/alice-adapter" in url
    for f in ("pytorch_lora_weights.safetensors", "anchors.safetensors", "training_summary.json", "samples.png"):
        assert hub_server.get_file("tester/alice-adapter", f)
    assert b"base_model:" in hub_server.get_file("tester/alice-adapter", "README.md")
    # another session loads it (private: needs a token) and renders exactly what the first one rendered
    with pytest.raises(AppError, match="not found, or it is private"):
        service.load_from_hub("h2", "tester/alice-adapter")
    name = service.load_from_hub("h2", "tester/alice-adapter", revision="main", token=READ_TOKEN)
    assert name == "alice_adapter" and service.list_adapters("h2")[0]["anchors"] == 3
    a, _ = _render(service, "h1", identity="alice", source="anchor", anchor=1)
    b, _ = _render(service, "h2", identity="alice_adapter", source="anchor", anchor=1)
    np.testing.assert_array_equal(a, b)
    # readable errors
    with pytest.raises(AppError, match="Paste a Hugging Face access token"):
        service.push_to_hub("h1", "alice", "tester/x", "", private=True)
    with pytest.raises(AppError, match="token"):
        service.push_to_hub("h1", "alice", "tester/x", "hf_wrong", private=True)
    with pytest.raises(AppError, match="write access"):
        service.push_to_hub("h1", "alice", "tester/x", READ_TOKEN, private=True)
    with pytest.raises(AppError, match="not a valid Hub repo id"):
        service.push_to_hub("h1", "alice", "bad repo id!", WRITE_TOKEN)
    with pytest.raises(AppError, match="revision"):
        service.load_from_hub("h3", "tester/alice-adapter", revision="nope", token=READ_TOKEN)
    with pytest.raises(AppError, match="not found"):
        service.load_from_hub("h3", "tester/does-not-exist")
    assert not hub_server.errors


# ------------------------------------------------------------------------------------------ no network
def test_launch_and_render_make_no_outbound_connection(base_dir, tmp_path):
    import httpx

    with OutboundGuard() as guard:
        with launched_app(app_config(base_dir, tmp_path / "sessions")) as (demo, url):
            assert httpx.get(url, timeout=30).status_code == 200
            assert httpx.get(url + "config", timeout=30).status_code == 200
            from gradio_client import Client

            client = Client(url, verbose=False)
            img, depth = client.predict("base", "none", 1.0, "seed", 1, None, 0, 0, 0.7, api_name="/render")
            assert Path(img).is_file() and Path(depth).is_file()
            client.close()
    assert guard.attempts == []

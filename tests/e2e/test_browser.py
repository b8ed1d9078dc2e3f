"""End to end in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium, never a downloaded browser)
against the app on 127.0.0.1 with a tiny base model: personalize a demo identity (with a stop and a resume), render a
novel view with its depth, extract the mesh into the 3D viewer, interpolate, and push/pull through the loopback Hub.

Screenshots of every tab go to ``tmp_path/screens`` and, when ``MY3DGEN_E2E_SCREENSHOTS`` names a folder, are copied
there. Needs ``apt-get install -y chromium`` and ``pip install playwright`` (skipped otherwise, with that reason)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need `pip install playwright` (no browser download)")

from e2e.app_support import app_config, launched_app, save_tiny_base, save_tiny_text_to_3d  # noqa: E402
from hub_fixtures import hub_endpoint, hub_server  # noqa: E402,F401  (pytest fixtures)
from hub_server import WRITE_TOKEN  # noqa: E402

CHROMIUM = os.environ.get("MY3DGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    # WebGL for the 3D viewer without a GPU: SwiftShader through ANGLE
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
TIMEOUT = 240_000  # ms, for model work on a busy 2-core CPU

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} missing: apt-get install -y chromium")


@pytest.fixture()
def browser_page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page, errors
        finally:
            browser.close()


class Shots:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []

    def __call__(self, page, name: str):
        path = self.folder / f"{len(self.files) + 1:02d}_{name}.png"
        page.wait_for_timeout(400)  # let transitions settle
        page.screenshot(path=str(path), full_page=True)
        self.files.append(path)

    def publish(self):
        target = os.environ.get("MY3DGEN_E2E_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            for f in self.files:
                shutil.copyfile(f, Path(target) / f.name)


@contextlib.contextmanager
def _screenshot_on_failure(page, shots: "Shots"):
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            shots(page, "FAILURE")
            shots.publish()
        raise


def set_number(page, elem_id: str, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def fill(page, elem_id: str, value: str):
    page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(value)


def choose(page, elem_id: str, option: str):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_text(page, selector: str, text: str):
    """Wait until the visible text of ``selector`` contains ``text`` (hidden copies of a text do not count)."""
    page.wait_for_function("([sel, text]) => { const e = document.querySelector(sel); return !!e && e.innerText.includes(text); }",
                           arg=[selector, text])


def status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def test_personalize_render_mesh_and_hub_in_the_browser(browser_page, hub_endpoint, hub_server, tmp_path):  # noqa: F811
    page, page_errors = browser_page
    shots = Shots(tmp_path / "screens")
    # MY3DGEN_E2E_BASE_MODEL: run the same flow on another base (e.g. the shipped demo prior, for nicer screenshots)
    base = os.environ.get("MY3DGEN_E2E_BASE_MODEL") or save_tiny_base(tmp_path / "tiny_base")
    proj_steps = int(os.environ.get("MY3DGEN_E2E_PROJECTION_STEPS", "2"))
    steps = int(os.environ.get("MY3DGEN_E2E_TRAIN_STEPS", "10"))
    photos = int(os.environ.get("MY3DGEN_E2E_PHOTOS", "6"))
    # MY3DGEN_E2E_TEXT_TO_3D_MODEL: e.g. my3dgen-hf/demo-synthobjects (50 steps, about a minute on CPU)
    t3d = os.environ.get("MY3DGEN_E2E_TEXT_TO_3D_MODEL") or str(save_tiny_text_to_3d(tmp_path / "tiny_t3d"))
    cfg = app_config(base, tmp_path / "sessions", default_train_steps=steps, default_projection_steps=proj_steps, mesh_resolution=64,
                     orbit_frames=12, text_to_3d_model=t3d, text_to_3d_steps=int(os.environ.get("MY3DGEN_E2E_TEXT_TO_3D_STEPS", "3")),
                     text_to_3d_mesh_resolution=32)
    with launched_app(cfg) as (demo, url), _screenshot_on_failure(page, shots):
        page.goto(url)
        page.get_by_role("button", name="Train").wait_for()
        shots(page, "personalize_start")

        # ---- uploads: a real face photo is aligned with its pose; a non-image is rejected with the reason
        from PIL import Image
        from skimage import data as skdata

        face, notes = tmp_path / "astronaut.jpg", tmp_path / "notes.txt"
        Image.fromarray(skdata.astronaut()).save(face, quality=92)
        notes.write_text("not a photo")
        page.locator("#upload-files input[type=file]").set_input_files([str(face), str(notes)])
        wait_text(page, "#upload-files", "notes")  # rendered as "notes" + ".txt"
        page.get_by_role("button", name="Check photos").click()
        wait_text(page, "#photos-summary", "1 photo(s) ready")
        wait_text(page, "#rejected", "not a supported image type")
        assert page.locator("#crops img").count() == 1
        shots(page, "personalize_uploads")

        # ---- a demo identity album: crops with their poses
        page.get_by_role("tab", name="Demo identity").click()
        set_number(page, "demo-index", 7)
        set_number(page, "demo-count", photos)
        page.get_by_role("button", name="Use this demo identity").click()
        wait_text(page, "#photos-summary", f"{photos} photo(s) ready")
        assert page.locator("#crops img").count() == photos
        assert "yaw" in page.locator("#crops").inner_text()

        # ---- train with a live progress bar and loss plot; stop, look, resume
        fill(page, "adapter-name", "alice")
        page.get_by_role("button", name="Train").click()
        page.wait_for_function(
            "() => { const m = /training the adapter: (\\d+)\\//.exec(document.querySelector('#train-status').innerText);"
            " return !!m && +m[1] >= 2; }"
        )
        shots(page, "personalize_training")
        page.get_by_role("button", name="Stop").click()
        wait_text(page, "#train-status", "Stopped.")
        stopped_at = int(re.search(rf"(\d+)/{steps}", status_text(page)).group(1))
        assert 2 <= stopped_at < steps
        page.get_by_role("button", name="Resume").click()
        wait_text(page, "#train-status", "done: adapter 'alice' is ready")
        assert f"{steps}/{steps}" in status_text(page)
        page.locator("#loss-plot canvas, #loss-plot svg").first.wait_for()
        shots(page, "personalize_done")

        # ---- render a novel view of the adapter from one of its anchors
        page.get_by_role("tab", name="Render").click()
        page.locator("#render-identity input").wait_for()
        assert page.locator("#render-identity input").input_value() == "alice"
        page.locator("#render-source").get_by_label("anchor").check()
        set_number(page, "render-yaw", 30)
        set_number(page, "render-pitch", -10)
        page.get_by_role("button", name="Render", exact=True).click()
        page.locator("#render-image img").wait_for()
        page.locator("#render-depth img").wait_for()
        # ---- orbit video and the mesh in the 3D viewer, with its download button
        page.get_by_role("button", name="Render orbit video").click()
        page.locator("#orbit-video video").wait_for()
        page.get_by_role("button", name="Extract mesh").click()
        page.locator("#mesh-view canvas").wait_for()
        page.wait_for_timeout(2500)  # the viewer loads the GLB and draws
        with page.expect_download() as download:
            page.locator("#mesh-download").click()
        glb = tmp_path / download.value.suggested_filename
        download.value.save_as(glb)
        assert glb.suffix == ".glb" and glb.read_bytes()[:4] == b"glTF"
        shots(page, "render_view_orbit_mesh")

        # ---- interpolation between two anchors
        page.get_by_role("tab", name="Interpolate").click()
        page.locator("#interp-identity input").wait_for()
        assert page.locator("#interp-identity input").input_value() == "alice"
        page.get_by_role("button", name="Interpolate", exact=True).click()
        page.locator("#interp-gallery img").first.wait_for()
        shots(page, "interpolate")

        # ---- text to 3D: a caption -> 8 views, an orbit video and the mesh in the 3D viewer
        page.get_by_role("tab", name="Text to 3D").click()
        fill(page, "t3d-prompt", "a red chair with four thin legs")
        page.get_by_role("button", name="Generate").click()
        page.locator("#t3d-views img").first.wait_for(timeout=180_000)
        assert page.locator("#t3d-views img").count() == 8
        page.locator("#t3d-mesh canvas").wait_for()
        shots(page, "text_to_3d")

        # ---- Hub: push the adapter, then load it back under another name
        page.get_by_role("tab", name="Hub").click()
        fill(page, "push-repo", "tester/browser-alice")
        page.locator("#push-token input").fill(WRITE_TOKEN)
        assert page.locator("#push-token input").get_attribute("type") == "password"
        page.get_by_role("button", name="Push to the Hub").click()
        wait_text(page, "#push-result", "Pushed")
        fill(page, "load-repo", "tester/browser-alice")
        fill(page, "load-revision", "main")
        page.locator("#load-token input").fill(WRITE_TOKEN)
        fill(page, "load-name", "pulled")
        page.get_by_role("button", name="Load adapter").click()
        wait_text(page, "#load-result", "Loaded")
        wait_text(page, "#adapters-table", "hub:tester/browser-alice@main")
        # a readable error, not a stack trace
        fill(page, "load-repo", "tester/no-such-adapter")
        fill(page, "load-name", "")
        page.get_by_role("button", name="Load adapter").click()
        wait_text(page, "body", "not found, or it is private")
        assert "Traceback" not in page.content()
        shots(page, "hub")

        # the pulled adapter renders in the Render tab
        page.get_by_role("tab", name="Render").click()
        choose(page, "render-identity", "pulled")
        page.locator("#render-source").get_by_label("seed").check()
        page.get_by_role("button", name="Render", exact=True).click()
        page.wait_for_timeout(500)
        page.locator("#render-image img").wait_for()
    assert not hub_server.errors
    assert not [e for e in page_errors if "WebGL" not in e], page_errors
    shots.publish()

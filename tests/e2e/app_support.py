"""Helpers shared by the app tests (service, gradio_client API, browser): a tiny base model on disk and a launched
app on 127.0.0.1 with a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Unload (session clean-up) fires when the heartbeat stream breaks; a short interval makes it prompt in tests.
os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "0.5")

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def save_tiny_base(folder: Path) -> Path:
    """The tiny EG3D pipeline of tests/tiny.py, saved as a base-model folder (loaded with from_pretrained)
    with one random edit direction."""
    from tiny import tiny_pipeline

    import torch

    from my3dgen_hf.personalization import EditDirection, save_directions

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        pipe = tiny_pipeline()
        pipe.save_pretrained(folder)
        d = torch.randn(pipe.generator.w_dim, generator=torch.Generator().manual_seed(0))
        save_directions(folder, {"smile": EditDirection(direction=d / d.norm(), name="smile")})  # for the Edit tab
    return folder


def save_tiny_text_to_3d(folder: Path) -> Path:
    """The tiny TuneMV3D pipeline of tests/tunemv3d_tiny.py, saved as a folder (the app's text-to-3D model)."""
    from tunemv3d_tiny import tiny_pipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        tiny_pipeline().save_pretrained(folder)
    return folder


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_config(base_dir: Path, tmp_dir: Path, **overrides):
    from my3dgen_hf.app import AppConfig

    values = dict(base_model=str(base_dir), tmp_dir=str(tmp_dir), train_concurrency=2, render_concurrency=2, max_sessions=8,
                  default_train_steps=4, default_projection_steps=2, orbit_frames=8, mesh_resolution=48)
    values.update(overrides)
    return AppConfig(**values)


@contextlib.contextmanager
def launched_app(config):
    """Build and launch the app in this process (server threads); yields (demo, url)."""
    from my3dgen_hf.app.ui import create_app, launch_kwargs

    demo = create_app(config)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(demo.my3dgen_service))
    try:
        yield demo, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        demo.my3dgen_service.shutdown()


class OutboundGuard:
    """Records every connect() to a non-loopback address made while active (no network at launch)."""

    def __init__(self):
        self.attempts: list = []
        self._orig = None

    def __enter__(self):
        self._orig = socket.socket.connect
        guard = self

        def connect(sock, address):
            host = address[0] if isinstance(address, tuple) else address
            if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
                guard.attempts.append(address)
                raise OSError(f"test: outbound connection to {address} blocked")
            return guard._orig(sock, address)

        socket.socket.connect = connect
        return self

    def __exit__(self, *exc):
        socket.socket.connect = self._orig
        return False

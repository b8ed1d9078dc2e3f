"""The Gradio app (``python app.py``): personalize, render, interpolate and share identity adapters.

``configure_environment()`` runs before Gradio is imported anywhere in this package: analytics and telemetry off,
so launching makes no outbound request (the Hub is contacted only when a user asks for it)."""

from __future__ import annotations

import os

_ENV_DEFAULTS = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def configure_environment():
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


configure_environment()

from .config import AppConfig  # noqa: E402
from .errors import AppError  # noqa: E402


def create_app(config=None, base_loader=None, preload: bool = True):
    """Build the Gradio Blocks (imports Gradio)."""
    from .ui import create_app as _create

    return _create(config, base_loader=base_loader, preload=preload)


__all__ = ["AppConfig", "AppError", "configure_environment", "create_app"]

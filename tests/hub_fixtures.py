"""Pytest fixtures pointing huggingface_hub (2.4.0) at the local test Hub in ``tests/hub_server.py``.

Import them into a conftest (``from tests.hub_fixtures import hub_server, hub_endpoint`` or
``from hub_fixtures import ...`` depending on the rootdir/import mode).

* ``hub_server`` (session): one running :class:`HubServer` on 127.0.0.1, stopped at session end.  Repos persist
  across tests: use unique repo names (or call ``hub_server.reset()``).
* ``hub_endpoint`` (function): returns ``hub_server.endpoint`` after monkeypatching everything huggingface_hub
  reads, so plain calls (``HfApi()``, ``hf_hub_download(...)``, ``huggingface_hub.model_info(...)``, diffusers'
  internal ``model_info`` calls, ...) go to the local server, with a fresh temporary ``HF_HOME`` / cache and no
  token (pass ``token=WRITE_TOKEN`` / ``READ_TOKEN`` explicitly, or ``monkeypatch.setenv("HF_TOKEN", ...)``).

Why patching the environment is not enough
------------------------------------------
``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE``,
``HF_TOKEN_PATH``, ``HF_HUB_DISABLE_TELEMETRY`` ... once, at import time (and tests/conftest.py sets
``HF_HUB_OFFLINE=1`` before that import).  The values that must be patched at runtime in 2.4.0 are:

* ``constants.ENDPOINT`` **and** ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url`` formats the template and
  only swaps the prefix for ``endpoint=`` when the URL starts with ``constants.ENDPOINT``: patching one without the
  other silently sends downloads to huggingface.co);
* ``huggingface_hub.hf_api.api.endpoint``: the module-level ``HfApi()`` singleton behind
  ``huggingface_hub.model_info / create_repo / upload_folder / list_repo_files / whoami ...`` (and diffusers'
  ``model_info`` import) captured the endpoint when it was created;
* ``constants.HF_HUB_OFFLINE`` (``is_offline_mode()`` reads it; the httpx2 request hook raises
  ``OfflineModeIsEnabled`` otherwise), plus copies made at import by diffusers (patched here if imported);
* caches / token: ``constants.HF_HOME, HF_HUB_CACHE, HF_ASSETS_CACHE, HF_XET_CACHE, HF_TOKEN_PATH,
  HF_STORED_TOKENS_PATH`` (+ the copies in ``utils._cache_manager`` / ``utils._cache_assets``), and the ``HF_TOKEN``
  env var removed (``get_token()`` reads it at call time);
* ``constants.HF_URL_HOSTS`` and ``utils._http._HUB_ORIGINS`` (hosts trusted for web-URL parsing / redirects);
* the shared httpx2 client is closed (``close_session()``) so a fresh one picks up ``NO_PROXY``.

Passing ``endpoint=`` explicitly (``HfApi(endpoint=url, token=...)``, ``hf_hub_download(..., endpoint=url)``,
``snapshot_download(..., endpoint=url)``) is more robust for code you control -- it bypasses the frozen endpoint
and the singleton -- but it does *not* lift offline mode nor change the cache dir, and library code that calls
huggingface_hub without ``endpoint=`` (diffusers, transformers) still needs the patched constants.  So: use this
fixture, and pass ``endpoint=`` where you can.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

try:
    from .hub_server import HubServer
except ImportError:  # tests/ imported as a rootdir-relative module without a package
    from hub_server import HubServer  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()


def _patch_if_imported(monkeypatch: pytest.MonkeyPatch, module: str, attr: str, value: object) -> None:
    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, attr):
        monkeypatch.setattr(mod, attr, value)


def point_hf_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Redirect huggingface_hub (2.4.0) to `endpoint`, online, with caches/token under `hf_home`."""
    import huggingface_hub
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    endpoint = endpoint.rstrip("/")
    hub_cache = hf_home / "hub"
    assets_cache = hf_home / "assets"
    xet_cache = hf_home / "xet"
    token_path = hf_home / "token"
    hub_cache.mkdir(parents=True, exist_ok=True)

    # Environment (for subprocesses and for anything that reads it lazily)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets_cache),
        "HF_XET_CACHE": str(xet_cache),
        "HF_TOKEN_PATH": str(token_path),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN",
                "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(key, raising=False)
    for key in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(key, "")
        monkeypatch.setenv(key, ",".join(filter(None, [current, "127.0.0.1", "localhost"])))

    # Constants frozen at import time
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    host = urlsplit(endpoint).hostname
    monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {host}))
    monkeypatch.setattr(_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(endpoint)}))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(assets_cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_ASSETS_CACHE", str(assets_cache))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(xet_cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    _patch_if_imported(monkeypatch, "huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", str(hub_cache))
    _patch_if_imported(monkeypatch, "huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(assets_cache))

    # The module-level HfApi() singleton behind huggingface_hub.model_info/create_repo/upload_folder/...
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)

    # Copies made at import time by downstream libraries (only if already imported; later imports copy the
    # patched values).
    _patch_if_imported(monkeypatch, "diffusers.utils.hub_utils", "HF_HUB_OFFLINE", False)
    _patch_if_imported(monkeypatch, "diffusers.utils.hub_utils", "HF_HUB_DISABLE_TELEMETRY", True)
    _patch_if_imported(monkeypatch, "diffusers.loaders.lora_base", "HF_HUB_OFFLINE", False)
    _patch_if_imported(monkeypatch, "diffusers.models.attention_dispatch", "HF_HUB_OFFLINE", False)
    _patch_if_imported(monkeypatch, "diffusers.utils.constants", "HUGGINGFACE_CO_RESOLVE_ENDPOINT", endpoint)

    # Fresh shared client (picks up NO_PROXY; drops keep-alive connections of a previous test) and no stale
    # HfFileSystem instances (fsspec caches them with the endpoint they were created with).
    huggingface_hub.close_session()
    with contextlib.suppress(ImportError, AttributeError):
        from huggingface_hub import HfFileSystem

        HfFileSystem.clear_instance_cache()


@pytest.fixture
def hub_endpoint(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    if not hub_server.running:
        pytest.fail("hub_server is not running")
    point_hf_hub_at(monkeypatch, hub_server.endpoint, tmp_path / "hf_home")
    yield hub_server.endpoint
    import huggingface_hub

    huggingface_hub.close_session()

"""Per-session state: each browser tab (or API client) has its own adapters, anchors, training job and files.

Isolation design
----------------
* One **shared base pipeline** is loaded once and is never mutated. Sessions that have no adapter yet render with
  it under a lock (``SessionManager.base_lock``), so a casual visitor costs no memory.
* The first time a session gets an adapter (trained or loaded from the Hub) it gets **its own copy** of the base
  pipeline (``copy.deepcopy``; the demo prior is a few MB). Adapters live only in that copy, so one session's
  ``load_lora_weights``/``set_adapters``/``disable_lora`` can never change what another session renders. A
  shared base with per-session adapter names would not be enough: the adapters' *extras* (biases, noise strengths,
  ``b4.const``) are written into the base tensors by ``set_adapters``, and training changes them in place.
* **Training** runs on a third, throw-away copy owned by the job, so a session can keep rendering (its own copy)
  while it trains; the finished adapter is saved to the session's folder and loaded into the session's copy.
* Each session's pipeline copy is used under the session's own lock (render, orbit, mesh, push, load), so two
  requests of one session cannot interleave ``set_adapters`` with a render either.
* Files (uploads, crops, adapters, renders) live in a per-session folder that is deleted when the session ends
  (``demo.unload``: tab closed / API client closed), when it has been idle for ``session_ttl_s``, when more than
  ``max_sessions`` exist (least recently used idle session first), and at exit.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import AppError

log = logging.getLogger(__name__)

RESERVED_NAMES = {"base", "none", "prior"}
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")


def clean_adapter_name(name: str) -> str:
    """'my-face 2' -> 'my_face_2'; raises AppError for names that cannot be used."""
    raw = (name or "").strip()
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", raw)
    if not ADAPTER_NAME_RE.match(cleaned):
        raise AppError(
            f"Adapter name {raw!r} cannot be used: start with a letter, then letters, digits or '_' (at most 40 characters)."
        )
    if cleaned.lower() in RESERVED_NAMES:
        raise AppError(f"'{cleaned}' is reserved; choose another adapter name.")
    return cleaned


@dataclass
class AdapterInfo:
    name: str
    folder: Path                           # holds pytorch_lora_weights.safetensors (+ summary, samples)
    source: str                            # "trained" | "hub:<repo>@<rev>"
    anchors: Optional[torch.Tensor] = None  # [N, num_ws, w_dim] projected anchors of the training photos
    anchor_names: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


@dataclass
class PreparedData:
    """Photos ready for training: from uploads (preprocessed) or a demo identity album."""

    images: torch.Tensor                   # [N, 3, R, R] in [-1, 1]
    labels: torch.Tensor                   # [N, 25]
    names: list[str]
    crops: list                            # PIL images shown to the user
    poses: list[tuple[float, float]]       # (yaw, pitch) radians
    rejected: list[tuple[str, str]]
    source: str
    folder: Path


class Session:
    def __init__(self, sid: str, root: Path, manager: "SessionManager"):
        self.id = sid
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manager = manager
        self.lock = threading.RLock()        # guards self._pipe and the adapters
        self._pipe = None
        self.adapters: dict[str, AdapterInfo] = {}
        self.prepared: Optional[PreparedData] = None
        self.job = None                      # the current / last TrainingJob
        self.last_used = time.monotonic()
        self.closed = False
        self._counter = 0

    # ---- files
    def new_path(self, stem: str, suffix: str) -> Path:
        """A fresh file name in the session folder (outputs never overwrite a file a browser may still show)."""
        self._counter += 1
        sub = self.dir / "outputs"
        sub.mkdir(parents=True, exist_ok=True)
        return sub / f"{stem}_{self._counter:04d}_{uuid.uuid4().hex[:6]}{suffix}"

    def touch(self):
        self.last_used = time.monotonic()

    # ---- pipelines
    @property
    def has_own_pipe(self) -> bool:
        return self._pipe is not None

    def own_pipe(self):
        """This session's private copy of the base pipeline (made on first use). Call under ``self.lock``."""
        if self._pipe is None:
            self._pipe = self.manager.copy_base()
        return self._pipe

    def render_context(self):
        """(pipe, lock) to render with: the session's copy when it has adapters, else the shared base."""
        if self._pipe is not None:
            return self._pipe, self.lock
        return self.manager.base_pipe(), self.manager.base_lock

    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def close(self):
        self.closed = True
        if self.job is not None:
            self.job.stop()
            self.job.join(timeout=30)
        with self.lock:
            self._pipe = None
            self.adapters.clear()
            self.prepared = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SessionManager:
    """session id (gradio's ``request.session_hash``) -> :class:`Session`, with limits and clean-up."""

    def __init__(self, base_loader: Callable[[], object], max_sessions: int = 16, ttl_s: float = 3 * 3600, root: Optional[Path] = None):
        self._base_loader = base_loader
        self._base = None
        self._base_load_lock = threading.Lock()
        self.base_lock = threading.RLock()
        self.max_sessions = int(max_sessions)
        self.ttl_s = float(ttl_s)
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="my3dgen_app_"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    # ---- base model
    def base_pipe(self):
        if self._base is None:
            with self._base_load_lock:
                if self._base is None:
                    self._base = self._base_loader()
        return self._base

    def copy_base(self):
        base = self.base_pipe()
        with self.base_lock:
            pipe = copy.deepcopy(base)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---- sessions
    def get(self, sid: Optional[str]) -> Session:
        if not sid:
            raise AppError("No session id: open the app in a browser or use gradio_client (each gets its own session).")
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(sid))[:64]
        evict = []
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                evict = self._evictions_locked(reserve=1)
                if len(self._sessions) - len(evict) >= self.max_sessions:
                    raise AppError(
                        f"The server is busy: {self.max_sessions} sessions are active and all are training. Try again in a few minutes."
                    )
                for e in evict:
                    self._sessions.pop(e.id, None)
                s = Session(sid, self.root / f"session_{safe}", self)
                self._sessions[sid] = s
            s.touch()
        for e in evict:
            log.info("dropping session %s (idle or over the session limit)", e.id)
            e.close()
        return s

    def peek(self, sid: str) -> Optional[Session]:
        with self._lock:
            return self._sessions.get(sid)

    def _evictions_locked(self, reserve: int = 0) -> list[Session]:
        now = time.monotonic()
        idle = [s for s in self._sessions.values() if not s.busy()]
        out = [s for s in idle if now - s.last_used > self.ttl_s]
        over = len(self._sessions) - len(out) + reserve - self.max_sessions
        if over > 0:
            rest = sorted((s for s in idle if s not in out), key=lambda s: s.last_used)
            out += rest[:over]
        return out

    def close(self, sid: Optional[str]):
        if not sid:
            return
        with self._lock:
            s = self._sessions.pop(sid, None)
        if s is not None:
            s.close()

    def session_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def shutdown(self):
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

"""Training jobs that run in a background thread, report every step, and can be stopped and resumed.

A job projects the photos to W (the anchors), then trains a convolutional LoRA adapter with
``my3dgen_hf.personalization.personalize`` on its own copy of the base pipeline.

*Stop* pauses the job at the next step boundary: the job saves the adapter as it is at that step and hands it to
the session (it can be rendered, compared and pushed right away), then waits. *Resume* continues from exactly that
step (same optimizer state, same data order). *Cancel* (a new training in the same session, the session closing,
the app shutting down) ends the job for good. At most ``max_concurrent`` jobs compute at once across all sessions;
others wait in state ``queued``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import user_message

log = logging.getLogger(__name__)

QUEUED, PROJECTING, TRAINING, STOPPED, DONE, FAILED, CANCELLED = (
    "queued", "projecting", "training", "stopped", "done", "failed", "cancelled",
)
FINISHED = (DONE, FAILED, CANCELLED)

_slots_lock = threading.Lock()
_slots: Optional[threading.BoundedSemaphore] = None
_slots_n = 0


def set_max_concurrent_jobs(n: int):
    """How many jobs compute at once (process-wide)."""
    global _slots, _slots_n
    with _slots_lock:
        if _slots is None or n != _slots_n:
            _slots, _slots_n = threading.BoundedSemaphore(max(1, int(n))), max(1, int(n))


def _job_slots() -> threading.BoundedSemaphore:
    if _slots is None:
        set_max_concurrent_jobs(1)
    return _slots


class JobCancelled(Exception):
    pass


@dataclass
class TrainParams:
    adapter_name: str
    rank: int = 1
    steps: int = 200
    projection_steps: int = 100
    seed: int = 0
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    names: Optional[list] = None
    base_model: Optional[str] = None


@dataclass
class JobSnapshot:
    state: str
    phase_step: int
    phase_total: int
    step: int
    total_steps: int
    losses: list
    message: str
    error: Optional[str]
    elapsed_s: float
    adapter_ready: bool

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def waiting(self) -> bool:
        """Nothing more will happen until the user acts (stopped) or ever (finished)."""
        return self.state in FINISHED or self.state == STOPPED


@dataclass
class TrainingJob:
    """One personalization run. ``on_adapter(job, final: bool)`` is called from the job thread with the adapter
    saved in ``job.adapter_dir`` (at a stop, and at the end); ``anchors`` are set before training starts."""

    params: TrainParams
    images: torch.Tensor
    labels: torch.Tensor
    make_pipe: Callable[[], object]
    work_dir: Path
    on_adapter: Callable[["TrainingJob", bool], None]
    project_fn: Optional[Callable] = None
    personalize_fn: Optional[Callable] = None
    projection_cache: Optional[Path] = None  # per-session: re-training on the same photos skips the projection

    state: str = QUEUED
    phase_step: int = 0
    phase_total: int = 0
    step: int = 0
    losses: list = field(default_factory=list)  # [(step, loss)]
    message: str = "waiting for a free training slot"
    error: Optional[str] = None
    anchors: Optional[torch.Tensor] = None
    result: object = None
    adapter_ready: bool = False

    def __post_init__(self):
        self.work_dir = Path(self.work_dir)
        self.adapter_dir = self.work_dir / "adapter"
        self._lock = threading.Lock()
        self._pause = threading.Event()
        self._resume = threading.Event()
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = None
        self._pipe = None
        self._paused_state: Optional[str] = None
        self._slot_held = False
        self._step_offset = None

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> "TrainingJob":
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"train-{self.params.adapter_name}", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.state != STOPPED

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pause(self) -> bool:
        """Stop at the next step; returns False when the job is not running."""
        if self.state in FINISHED or self.state == STOPPED or self._pause.is_set() or not self.alive:
            return False
        self._resume.clear()
        self._pause.set()
        return True

    def resume(self) -> bool:
        if self.state != STOPPED and not self._pause.is_set():
            return False
        self._pause.clear()
        if self.state == STOPPED:  # visible at once, so a follower does not take the old state for the new one
            self._set(state=QUEUED, message="resuming: waiting for a free training slot")
        self._resume.set()
        return True

    def stop(self):
        """Cancel for good (also wakes a stopped job so that its thread ends)."""
        self._cancel.set()
        self._resume.set()

    def join(self, timeout: Optional[float] = None):
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(
                state=self.state, phase_step=self.phase_step, phase_total=self.phase_total, step=self.step,
                total_steps=self.params.steps, losses=list(self.losses), message=self.message, error=self.error,
                elapsed_s=(time.monotonic() - self._t0) if self._t0 else 0.0, adapter_ready=self.adapter_ready,
            )

    def wait_until(self, predicate: Callable[[JobSnapshot], bool], timeout: float = 600, poll: float = 0.05) -> JobSnapshot:
        end = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap) or time.monotonic() > end:
                return snap
            time.sleep(poll)

    # ------------------------------------------------------------------ the job thread
    def _set(self, **kw):
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, v)

    def _acquire_slot(self):
        slots = _job_slots()
        while not slots.acquire(timeout=0.2):
            if self._cancel.is_set():
                raise JobCancelled()
        self._slot_held = True

    def _release_slot(self):
        if self._slot_held:
            self._slot_held = False
            _job_slots().release()

    def _checkpoint(self, final: bool):
        """Hand the adapter to the session. At the end: personalize's own output folder (adapter, anchors, summary,
        samples). At a stop: the adapter as it is now, saved without touching the training state."""
        run_dir = getattr(self.result, "output_dir", None) if final else None
        if run_dir is not None and (Path(run_dir) / "pytorch_lora_weights.safetensors").is_file():
            folder = Path(run_dir)
        else:
            from ..lora import extra_parameters, get_adapter_state_dict

            pipe, name = self._pipe, self.params.adapter_name
            G = pipe.generator
            lora = get_adapter_state_dict(G, name, include_extras=False)
            base = pipe._extras_state()["base"]
            extras = {k: (p.detach() - base[k]).clone() for k, p in extra_parameters(G, name).items() if k in base}
            folder = self.work_dir / "adapter"
            folder.mkdir(parents=True, exist_ok=True)
            pipe.save_lora_weights(folder, generator_lora_layers=lora, adapter_name=name, generator_extras=extras)
        self.adapter_dir = folder
        self.on_adapter(self, final)
        self._set(adapter_ready=True)

    def _maybe_pause(self, in_training: bool):
        if self._cancel.is_set():
            raise JobCancelled()
        if not self._pause.is_set():
            return
        prev = self.state
        self._release_slot()
        if in_training and self.step > 0:
            try:
                self._checkpoint(final=False)
            except Exception as e:  # a failed snapshot must not kill the run
                log.exception("could not save the adapter at the stop")
                self._set(message=f"stopped, but the adapter could not be saved: {user_message(e)}")
        self._set(state=STOPPED, message=f"stopped at step {self.step}/{self.params.steps}" if in_training else
                  f"stopped during projection ({self.phase_step}/{self.phase_total})")
        self._resume.wait()
        if self._cancel.is_set():
            raise JobCancelled()
        self._set(state=QUEUED, message="resuming: waiting for a free training slot")
        self._acquire_slot()
        self._set(state=prev, message="resumed")

    def _on_projection_step(self, info=None, *args):
        """``info``: dict(stage='projection', step (1-based), steps, batch (1-based), num_batches, loss)."""
        if isinstance(info, dict) and info.get("step") is not None:
            steps = int(info.get("steps") or self.params.projection_steps)
            nb = int(info.get("num_batches") or 1)
            b = int(info.get("batch") or 1)
            self._set(phase_step=(b - 1) * steps + int(info["step"]), phase_total=nb * steps,
                      message=f"projecting the photos to W (batch {b}/{nb})")
        self._maybe_pause(in_training=False)
        return True

    def _on_train_step(self, info: dict):
        step = int(info.get("step", self.step)) if isinstance(info, dict) else self.step + 1
        loss = info.get("loss") if isinstance(info, dict) else None
        # steps may be reported 0-based or 1-based; show them 1-based
        if self._step_offset is None:
            self._step_offset = 1 if step == 0 else 0
        shown = step + self._step_offset
        with self._lock:
            self.step = min(shown, self.params.steps)
            if loss is not None and math.isfinite(float(loss)):
                self.losses.append((self.step, float(loss)))
            self.message = f"training: step {self.step}/{self.params.steps}"
        try:
            self._maybe_pause(in_training=True)
        except JobCancelled:
            return False
        return True

    def _run(self):
        try:
            self._acquire_slot()
            if self.project_fn is None or self.personalize_fn is None:
                from ..personalization import personalize, project_to_w

                self.project_fn = self.project_fn or project_to_w
                self.personalize_fn = self.personalize_fn or personalize
            self._set(state=PROJECTING, phase_step=0, phase_total=self.params.projection_steps, message="preparing")
            self._pipe = self.make_pipe()
            self._set(message=f"projecting {len(self.images)} photos to W (the anchors)")
            anchors = self.project_fn(
                self._pipe, self.images, self.labels, steps=self.params.projection_steps, cache_dir=self.projection_cache or (self.work_dir / "projection_cache"),
                progress=False, callback=self._on_projection_step,
            )
            self.anchors = anchors.detach().cpu()
            self._maybe_pause(in_training=False)
            self._set(state=TRAINING, message="training the adapter")
            kwargs = dict(adapter_name=self.params.adapter_name, rank=self.params.rank, steps=self.params.steps, callback=self._on_train_step,
                          output_dir=self.work_dir / "run", seed=self.params.seed, progress=False, log=log.info)
            if self.params.names is not None:
                kwargs["names"] = list(self.params.names)
            if self.params.base_model is not None:
                kwargs["base_model"] = self.params.base_model
            if self.params.lr is not None:
                kwargs["lr"] = self.params.lr
            if self.params.batch_size is not None:
                kwargs["batch_size"] = self.params.batch_size
            self.result = self.personalize_fn(self._pipe, self.images, self.labels, anchors, **kwargs)
            if self._cancel.is_set():
                raise JobCancelled()
            self._checkpoint(final=True)
            self._set(state=DONE, step=self.params.steps if not self.losses else self.step,
                      message=f"done: adapter '{self.params.adapter_name}' is ready ({self.step} steps)")
        except JobCancelled:
            self._set(state=CANCELLED, message="cancelled")
        except Exception as e:
            log.exception("training job failed")
            self._set(state=FAILED, error=user_message(e), message=f"failed: {user_message(e)}")
        finally:
            self._release_slot()
            self._pipe = None

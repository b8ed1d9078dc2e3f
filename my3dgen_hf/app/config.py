"""App settings: command-line flags and environment variables (for Spaces), with safe limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Optional

from ..assets import DEFAULT_EG3D_MODEL, DEFAULT_TUNEMV3D_MODEL

ENV_PREFIX = "MY3DGEN_"


def _env(name: str, cast, default):
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return cast(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {ENV_PREFIX + name}={raw!r} is not a valid {cast.__name__}") from e


@dataclass
class AppConfig:
    """Everything the app can be told. ``AppConfig.from_env(**overrides)`` reads ``MY3DGEN_<FIELD>`` variables
    (``MY3DGEN_BASE_MODEL``, ``MY3DGEN_MAX_SESSIONS``, ...) and then applies the overrides (the CLI flags)."""

    # The frozen prior: the shipped demo prior, a local converted checkpoint folder or a Hub id.
    base_model: str = DEFAULT_EG3D_MODEL
    # Sessions: each browser tab (or API client) gets its own adapters and files.
    max_sessions: int = 16           # live sessions at once; the least recently used idle one is dropped beyond it
    session_ttl_s: float = 3 * 3600  # idle sessions (no request, no running job) are dropped after this
    # Uploads.
    max_upload_files: int = 40
    max_file_mb: float = 15.0
    max_image_pixels: int = 40_000_000
    min_training_photos: int = 1
    # Queue: how many of each long job run at once (across all users).
    train_concurrency: int = 1
    render_concurrency: int = 2
    max_queue_size: int = 32
    # Training limits shown in the UI.
    max_train_steps: int = 3000
    default_train_steps: int = 300
    max_projection_steps: int = 1000
    default_projection_steps: int = 60
    max_rank: int = 8
    # Rendering limits.
    orbit_frames: int = 48
    max_orbit_frames: int = 120
    mesh_resolution: int = 96
    max_mesh_resolution: int = 256
    # Text to 3D (the "Text to 3D" tab): a TuneMV3D pipeline, loaded on first use.
    text_to_3d_model: str = DEFAULT_TUNEMV3D_MODEL
    text_to_3d_steps: int = 50       # TuneMV3DPipeline's default
    max_text_to_3d_steps: int = 100
    text_to_3d_guidance: float = 7.5      # TuneMV3DPipeline's default
    text_to_3d_mesh_resolution: int = 64
    # Where per-session folders go (default: a fresh folder in the system temp dir, removed at exit).
    tmp_dir: Optional[str] = None
    torch_threads: int = 0  # 0: leave torch's default

    @classmethod
    def from_env(cls, **overrides) -> "AppConfig":
        values = {}
        for f in fields(cls):
            cast = {"int": int, "float": float, "str": str, "Optional[str]": str}.get(str(f.type), str)
            default = f.default
            values[f.name] = _env(f.name.upper(), cast, default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self):
        for name in ("max_sessions", "max_upload_files", "train_concurrency", "render_concurrency", "max_train_steps", "max_rank",
                     "max_text_to_3d_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.default_train_steps = min(self.default_train_steps, self.max_train_steps)
        self.default_projection_steps = min(self.default_projection_steps, self.max_projection_steps)
        self.text_to_3d_steps = min(self.text_to_3d_steps, self.max_text_to_3d_steps)

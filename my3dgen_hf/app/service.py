"""What the app does, without any UI: every operation takes a session id and returns plain Python objects.

The Gradio layer (``ui.py``) only maps widgets to these methods, so the behaviour (and session isolation) is tested
directly here and through the HTTP API."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .config import AppConfig
from .errors import AppError
from .jobs import STOPPED, TrainingJob, TrainParams, set_max_concurrent_jobs
from .sessions import AdapterInfo, PreparedData, Session, SessionManager, clean_adapter_name
from .uploads import check_uploads

log = logging.getLogger(__name__)

BASE = "base"
NONE = "none"
# SynthHeads identities the demo prior never saw (it is trained on ids 0..N-1 of world seed 0, N in the thousands).
DEMO_IDENTITY_OFFSET = 1_000_000
DEMO_WORLD_SEED = 0
ANCHORS_FILE = "anchors.safetensors"
SUMMARY_FILE = "training_summary.json"
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def load_base_pipeline(name_or_path: str):
    """The frozen prior, ready for inference (eval mode, no progress bars, no gradients)."""
    from ..pipelines.eg3d import EG3DPipeline

    try:
        pipe = EG3DPipeline.from_pretrained(name_or_path)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise AppError(
            f"Could not load the base model {name_or_path!r} ({e.__class__.__name__}: {e}). Pass a folder written by "
            "`my3dgen-convert` / `EG3DPipeline.save_pretrained`, or a Hub id of one."
        ) from e
    pipe.generator.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    pipe._app_base_name = str(name_or_path)
    return pipe


@dataclass
class RenderRequest:
    identity: str = BASE
    mix_with: str = NONE
    mix_weight: float = 1.0      # weight of ``identity``; ``mix_with`` gets 1 - mix_weight
    source: str = "seed"         # "seed" | "anchor"
    seed: int = 0
    anchor: Union[int, str, None] = 0
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    truncation: float = 0.7


def parse_anchor(anchor) -> int:
    """0, '3', 'anchor 3: img_00003.png' -> index."""
    if anchor is None or anchor == "":
        raise AppError("Choose an anchor (one of the training photos' latents).")
    if isinstance(anchor, (int, np.integer)):
        return int(anchor)
    text = str(anchor).strip()
    if text.lower().startswith("anchor"):
        text = text[6:].strip()
    text = text.split(":")[0].strip()
    try:
        return int(float(text))
    except ValueError:
        raise AppError(f"Unknown anchor {anchor!r}: pick one from the list.") from None


def anchor_label(i: int, name: str) -> str:
    return f"anchor {i}: {name}"


def _to_tensor_image(img: Image.Image, resolution: int) -> torch.Tensor:
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.LANCZOS)
    a = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
    return a / 127.5 - 1.0


class AppService:
    def __init__(self, config: Optional[AppConfig] = None, base_loader=None):
        self.config = config or AppConfig()
        self.sessions = SessionManager(
            base_loader or (lambda: load_base_pipeline(self.config.base_model)),
            max_sessions=self.config.max_sessions, ttl_s=self.config.session_ttl_s,
            root=Path(self.config.tmp_dir) if self.config.tmp_dir else None,
        )
        set_max_concurrent_jobs(self.config.train_concurrency)

    # ------------------------------------------------------------------------------------------- basics
    @property
    def base(self):
        return self.sessions.base_pipe()

    @property
    def resolution(self) -> int:
        return int(self.base.generator.img_resolution)

    def base_description(self) -> str:
        G = self.base.generator
        n = sum(p.numel() for p in G.parameters())
        return f"`{self.config.base_model}`: {G.img_resolution}x{G.img_resolution} EG3D, {n / 1e6:.1f} M parameters"

    def session(self, sid: str) -> Session:
        return self.sessions.get(sid)

    def close_session(self, sid: str):
        self.sessions.close(sid)

    def shutdown(self):
        self.sessions.shutdown()

    def list_adapters(self, sid: str) -> list[dict]:
        s = self.session(sid)
        out = []
        for a in s.adapters.values():
            out.append({
                "name": a.name, "source": a.source, "anchors": 0 if a.anchors is None else int(len(a.anchors)),
                "rank": a.summary.get("rank"), "steps": a.summary.get("steps"),
            })
        return out

    def adapter_names(self, sid: str) -> list[str]:
        return list(self.session(sid).adapters)

    def anchor_choices(self, sid: str, identity: str) -> list[str]:
        s = self.session(sid)
        a = s.adapters.get(identity)
        if a is None or a.anchors is None:
            return []
        return [anchor_label(i, n) for i, n in enumerate(a.anchor_names)]

    # ------------------------------------------------------------------------------------------- photos
    def demo_album(self, sid: str, identity_index: int = 0, num_photos: int = 16) -> PreparedData:
        """An album of SynthHeads photos of one identity the demo prior was not trained on, with exact poses."""
        from ..synthetic import export_dataset

        identity_index, num_photos = int(identity_index), int(num_photos)
        if not 0 <= identity_index < 1000:
            raise AppError("Demo identity number must be between 0 and 999.")
        if not 1 <= num_photos <= 40:
            raise AppError("A demo album has 1 to 40 photos.")
        s = self.session(sid)
        iid = DEMO_IDENTITY_OFFSET + identity_index
        res = self.resolution
        folder = s.dir / "data" / f"demo_{identity_index}_{uuid.uuid4().hex[:6]}"
        export_dataset(folder, 1, num_photos, resolution=min(res, 256), seed=DEMO_WORLD_SEED, identity_offset=iid, occluder_prob=0.0)
        idir = next(p for p in folder.iterdir() if p.is_dir())
        labels_json = json.loads((idir / "dataset.json").read_text())["labels"]
        meta = json.loads((idir / "meta.json").read_text())
        poses = {m["file"]: (float(m["params"]["yaw"]), float(m["params"]["pitch"])) for m in meta["images"]}
        crops, images, labels, names = [], [], [], []
        for fname, label in labels_json:
            img = Image.open(idir / fname).convert("RGB")
            img.load()
            crops.append(img)
            images.append(_to_tensor_image(img, res))
            labels.append(torch.tensor(label, dtype=torch.float32))
            names.append(fname)
        prepared = PreparedData(
            images=torch.stack(images), labels=torch.stack(labels), names=names, crops=crops, poses=[poses[n] for n in names],
            rejected=[], source=f"demo identity {identity_index} (SynthHeads #{iid}, not seen by the demo prior)", folder=idir,
        )
        s.prepared = prepared
        return prepared

    def preprocess_uploads(self, sid: str, files: Sequence) -> PreparedData:
        """Check the uploads, then detect, align and crop the faces and estimate their poses."""
        s = self.session(sid)
        cfg = self.config
        batch = s.dir / "uploads" / uuid.uuid4().hex[:8]
        check = check_uploads(files, batch / "raw", cfg.max_upload_files, cfg.max_file_mb, cfg.max_image_pixels)
        rejected = list(check.rejected)
        empty = PreparedData(torch.zeros(0, 3, self.resolution, self.resolution), torch.zeros(0, 25), [], [], [], rejected, "uploads", batch)
        if not check.accepted:
            s.prepared = None
            return empty
        from ..personalization import preprocess_photos

        res = preprocess_photos(check.accepted, out_dir=batch / "crops", resolution=self.resolution)
        rejected += [(Path(str(f)).name, str(r)) for f, r in res.rejected]
        if len(res.images) == 0:
            s.prepared = None
            empty.rejected = rejected
            return empty
        crops = list(res.crops) if res.crops else [Image.fromarray(((im.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).byte().numpy()) for im in res.images]
        prepared = PreparedData(
            images=res.images.float(), labels=res.labels.float(), names=list(res.names), crops=crops,
            poses=[(float(y), float(p)) for y, p in res.poses], rejected=rejected, source="uploaded photos", folder=batch,
        )
        s.prepared = prepared
        return prepared

    # ------------------------------------------------------------------------------------------- training
    def start_training(self, sid: str, adapter_name: str, rank: int = 1, steps: Optional[int] = None,
                       projection_steps: Optional[int] = None, seed: int = 0) -> TrainingJob:
        cfg = self.config
        s = self.session(sid)
        name = clean_adapter_name(adapter_name)
        steps = int(cfg.default_train_steps if steps is None else steps)
        projection_steps = int(cfg.default_projection_steps if projection_steps is None else projection_steps)
        rank = int(rank)
        if not 1 <= rank <= cfg.max_rank:
            raise AppError(f"Rank must be between 1 and {cfg.max_rank}.")
        if not 1 <= steps <= cfg.max_train_steps:
            raise AppError(f"Training steps must be between 1 and {cfg.max_train_steps}.")
        if not 1 <= projection_steps <= cfg.max_projection_steps:
            raise AppError(f"Projection steps must be between 1 and {cfg.max_projection_steps}.")
        prepared = s.prepared
        if prepared is None or len(prepared.images) == 0:
            raise AppError("No photos to train on yet: upload photos and press 'Check photos', or make a demo identity album.")
        if len(prepared.images) < cfg.min_training_photos:
            raise AppError(f"At least {cfg.min_training_photos} usable photos are needed; {len(prepared.images)} passed the checks.")
        if s.job is not None and s.job.alive:
            if s.job.state == STOPPED:
                s.job.stop()  # a stopped run is replaced by the new one (its adapter so far stays loaded)
                s.job.join(timeout=30)
            else:
                raise AppError("A training run is already going on in this session: stop it first, or wait for it to finish.")
        if name in s.adapters:
            raise AppError(f"An adapter named '{name}' already exists in this session; choose another name.")
        job = TrainingJob(
            params=TrainParams(adapter_name=name, rank=rank, steps=steps, projection_steps=projection_steps, seed=int(seed),
                               names=list(prepared.names), base_model=self.config.base_model),
            images=prepared.images, labels=prepared.labels, make_pipe=self.sessions.copy_base,
            work_dir=s.dir / "jobs" / f"{name}_{uuid.uuid4().hex[:6]}", projection_cache=s.dir / "projection_cache",
            on_adapter=lambda job, final, _s=s, _names=list(prepared.names), _src=prepared.source: self._install_trained(_s, job, final, _names, _src),
        )
        s.job = job
        job.start()
        return job

    def _install_trained(self, s: Session, job: TrainingJob, final: bool, names: list[str], source: str):
        """Copy the job's adapter folder into the session's adapters and load it into the session's pipeline."""
        from ..personalization import load_anchors, save_anchors

        if s.closed:
            return
        name = job.params.adapter_name
        folder = s.dir / "adapters" / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in Path(job.adapter_dir).iterdir():
            if f.is_file() and f.suffix in (".safetensors", ".json", ".png"):
                shutil.copyfile(f, folder / f.name)
        snap = job.snapshot()
        summary_file = folder / SUMMARY_FILE
        summary = json.loads(summary_file.read_text()) if final and summary_file.is_file() else {}
        summary.update({"adapter_name": name, "rank": job.params.rank, "steps": snap.step, "requested_steps": job.params.steps,
                        "projection_steps": job.params.projection_steps, "num_images": int(len(job.images)), "data": source,
                        "base_model": self.config.base_model, "finished": bool(final)})
        if not final:
            summary["wall_time_s"] = round(snap.elapsed_s, 1)
            if snap.losses:
                summary["final_loss"] = float(snap.losses[-1][1])
        summary_file.write_text(json.dumps(summary, indent=2, default=str))
        if not (folder / ANCHORS_FILE).is_file() and job.anchors is not None:
            save_anchors(folder / ANCHORS_FILE, job.anchors, job.labels, names)
        anchors, anchor_names = job.anchors, list(names)
        if (folder / ANCHORS_FILE).is_file():
            anchors, _, anchor_names = load_anchors(folder / ANCHORS_FILE)
            if len(anchor_names) != len(anchors):
                anchor_names = list(names) if len(names) == len(anchors) else [f"photo {i}" for i in range(len(anchors))]
        with s.lock:
            pipe = s.own_pipe()
            if name in (pipe.get_list_adapters().get("generator", []) or []):
                pipe.load_lora_weights(folder, adapter_name=name, hotswap=True)  # the same run, later step: same shapes
            else:
                pipe.load_lora_weights(folder, adapter_name=name)
            s.adapters[name] = AdapterInfo(name=name, folder=folder, source="trained", anchors=anchors.float(),
                                           anchor_names=anchor_names, summary=summary)

    def stop_training(self, sid: str) -> str:
        s = self.session(sid)
        if s.job is None or not s.job.pause():
            raise AppError("Nothing to stop: no training is running in this session.")
        return "stopping at the next step..."

    def resume_training(self, sid: str) -> TrainingJob:
        s = self.session(sid)
        if s.job is None or not s.job.alive or not s.job.resume():
            raise AppError("Nothing to resume: stop a running training first (a finished one cannot be resumed; train a new adapter).")
        return s.job

    def current_job(self, sid: str) -> Optional[TrainingJob]:
        return self.session(sid).job

    # ------------------------------------------------------------------------------------------- rendering
    def _mix(self, s: Session, req: RenderRequest) -> list[tuple[str, float]]:
        identity = (req.identity or BASE).strip()
        mix_with = (req.mix_with or NONE).strip()
        for n in (identity, mix_with):
            if n not in (BASE, NONE) and n not in s.adapters:
                raise AppError(f"No adapter named '{n}' in this session; train one or load it from the Hub first.")
        if identity == NONE:
            identity = BASE
        w = float(req.mix_weight)
        if not 0.0 <= w <= 1.0:
            raise AppError("The mix weight must be between 0 and 1.")
        parts = [(identity, 1.0 if mix_with == NONE else w)]
        if mix_with != NONE:
            parts.append((mix_with, 1.0 - w))
        merged: dict[str, float] = {}
        for n, wt in parts:
            merged[n] = merged.get(n, 0.0) + wt
        return [(n, wt) for n, wt in merged.items() if n != BASE]

    @staticmethod
    def _activate(pipe, parts: list[tuple[str, float]]):
        loaded = pipe.get_list_adapters().get("generator", [])
        if not parts:
            if loaded:
                pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in parts], [float(w) for _, w in parts])

    @contextlib.contextmanager
    def _rendering(self, s: Session, parts: list[tuple[str, float]]):
        """The pipeline ``s`` renders with, ``parts`` active, held under its lock for the block."""
        pipe, lock = s.render_context()
        with lock:
            self._activate(pipe, parts)
            yield pipe

    @staticmethod
    def _anchor_index(info: AdapterInfo, anchor) -> int:
        i = parse_anchor(anchor)
        if not 0 <= i < len(info.anchors):
            raise AppError(f"Anchor {i} does not exist; '{info.name}' has anchors 0..{len(info.anchors) - 1}.")
        return i

    def _ws(self, s: Session, pipe, req: RenderRequest, parts) -> torch.Tensor:
        if req.source == "anchor":
            owners = [req.identity] + [n for n, _ in parts]
            info = next((s.adapters[n] for n in owners if n in s.adapters and s.adapters[n].anchors is not None), None)
            if info is None:
                raise AppError("This identity has no anchors (only adapters trained here have them); render from a seed instead.")
            i = self._anchor_index(info, req.anchor)
            return info.anchors[i : i + 1].to(pipe.device)
        if req.source != "seed":
            raise AppError(f"Unknown source {req.source!r}: use 'seed' or 'anchor'.")
        seed = int(req.seed)
        if not 0 <= seed < 2**31:
            raise AppError("The seed must be between 0 and 2147483647.")
        psi = float(req.truncation)
        if not 0.0 <= psi <= 1.5:
            raise AppError("Truncation must be between 0 and 1.5.")
        return pipe.get_ws(seed=seed, truncation_psi=psi)

    def _angles(self, req: RenderRequest) -> tuple[float, float]:
        yaw, pitch = float(req.yaw_deg), float(req.pitch_deg)
        if not (-90 <= yaw <= 90 and -60 <= pitch <= 60):
            raise AppError("Yaw must be within +-90 degrees and pitch within +-60 degrees.")
        return math.radians(yaw), math.radians(pitch)

    def render(self, sid: str, req: RenderRequest) -> tuple[Image.Image, Image.Image]:
        """(image, colour-mapped depth) of one view."""
        from .media import colorize_depth

        s = self.session(sid)
        parts = self._mix(s, req)
        yaw, pitch = self._angles(req)
        with self._rendering(s, parts) as pipe:
            out = pipe(ws=self._ws(s, pipe, req, parts), yaw=yaw, pitch=pitch, return_depth=True)
        image = out.images[0]
        return image, colorize_depth(out.depths[0], size=image.width)

    def orbit(self, sid: str, req: RenderRequest, num_frames: Optional[int] = None) -> Path:
        from .media import write_mp4

        s = self.session(sid)
        n = int(num_frames or self.config.orbit_frames)
        if not 2 <= n <= self.config.max_orbit_frames:
            raise AppError(f"An orbit has 2 to {self.config.max_orbit_frames} frames.")
        parts = self._mix(s, req)
        with self._rendering(s, parts) as pipe:
            frames = pipe.render_orbit(self._ws(s, pipe, req, parts), num_frames=n)
        return write_mp4(frames, s.new_path("orbit", ".mp4"))

    def mesh(self, sid: str, req: RenderRequest, resolution: Optional[int] = None) -> Path:
        from .media import colored_mesh

        s = self.session(sid)
        r = int(resolution or self.config.mesh_resolution)
        if not 16 <= r <= self.config.max_mesh_resolution:
            raise AppError(f"Mesh resolution must be between 16 and {self.config.max_mesh_resolution}.")
        parts = self._mix(s, req)
        with self._rendering(s, parts) as pipe:
            try:
                return colored_mesh(pipe, self._ws(s, pipe, req, parts), s.new_path("mesh", ".glb"), resolution=r)
            except ValueError as e:
                raise AppError(f"No surface found for this identity and view ({e}).") from e

    # ------------------------------------------------------------------------------------------- personal space
    def _personal(self, s: Session, identity: str) -> AdapterInfo:
        info = s.adapters.get(identity)
        if info is None:
            raise AppError("Choose an adapter trained in this session (its anchors span the personal space).")
        if info.anchors is None:
            raise AppError(f"'{identity}' has no anchors (it was loaded without them); use an adapter trained here or pushed with its anchors.")
        return info

    def interpolate(self, sid: str, identity: str, anchor_a, anchor_b, num_frames: int = 8, yaw_deg: float = 0.0,
                    pitch_deg: float = 0.0) -> tuple[list[Image.Image], Path]:
        """Plain linear interpolation in W between two anchors of one adapter: a strip of frames and an MP4."""
        from ..personalization.hull import interpolate_anchors

        s = self.session(sid)
        info = self._personal(s, identity)
        ia, ib = self._anchor_index(info, anchor_a), self._anchor_index(info, anchor_b)
        n = int(num_frames)
        if not 2 <= n <= 60:
            raise AppError("Interpolation takes 2 to 60 frames.")
        ws = interpolate_anchors(info.anchors[ia].float(), info.anchors[ib].float(), n)
        return self._strip(s, identity, ws, self._angles(RenderRequest(yaw_deg=yaw_deg, pitch_deg=pitch_deg)), "interpolation", fps=12)

    def _strip(self, s: Session, identity: str, ws: torch.Tensor, angles: tuple[float, float], stem: str, fps: int):
        """Frames of ``ws`` [K, num_ws, w_dim] with adapter ``identity`` at one camera, and a looping (ping-pong) MP4."""
        from .media import write_mp4

        yaw, pitch = angles
        with self._rendering(s, [(identity, 1.0)]) as pipe:
            frames = [pipe(ws=w[None], yaw=yaw, pitch=pitch, output_type="np").images[0] for w in ws]
        video = write_mp4(np.stack(frames + frames[::-1]), s.new_path(stem, ".mp4"), fps=fps)
        return [Image.fromarray(f) for f in frames], video

    def sample_looks(self, sid: str, identity: str, num_samples: int = 8, seed: int = 0) -> list[Image.Image]:
        """New looks of the person: random convex combinations of 3 anchors at random poses (MyStyle synthesis)."""
        from ..personalization.hull import sample_in_hull
        from ..utils.export import to_uint8

        s = self.session(sid)
        info = self._personal(s, identity)
        n = int(num_samples)
        if not 1 <= n <= 32:
            raise AppError("Sample 1 to 32 looks at a time.")
        with self._rendering(s, [(identity, 1.0)]) as pipe:
            out = sample_in_hull(pipe, info.anchors, num_samples=n, seed=int(seed))
        return [Image.fromarray(a) for a in to_uint8(out.images)]

    @functools.cached_property
    def _directions(self) -> dict:
        from ..assets import resolve_pretrained
        from ..personalization.editing import load_directions

        folder = Path(str(resolve_pretrained(self.config.base_model)))
        return load_directions(folder) if folder.is_dir() else {}

    def edit_directions(self) -> dict:
        """The base model's semantic directions (``<model>/directions/``, e.g. written by training/fit_directions.py)."""
        return self._directions

    def edit(self, sid: str, identity: str, anchor, direction: str, magnitude: float = 2.0, num_frames: int = 5,
             policy: str = "stop", yaw_deg: float = 0.0) -> tuple[list[Image.Image], Path]:
        """Edit one anchor along ``direction`` inside the personal space (alpha-space edit, MyStyle edge ``policy``):
        frames for magnitudes -magnitude..+magnitude (in units of the direction) and an MP4."""
        from ..personalization.editing import EDGE_POLICIES, direction_in_anchor_span, edit_in_hull

        s = self.session(sid)
        info = self._personal(s, identity)
        directions = self.edit_directions()
        if direction not in directions:
            have = ", ".join(sorted(directions)) or "none: fit some with training/fit_directions.py"
            raise AppError(f"Unknown edit direction {direction!r}; this base model has: {have}.")
        if policy not in EDGE_POLICIES:
            raise AppError(f"Edge policy must be one of {', '.join(EDGE_POLICIES)}.")
        n, m = int(num_frames), float(magnitude)
        if not 2 <= n <= 24 or not 0 < m <= 20:
            raise AppError("Use 2 to 24 frames and a magnitude between 0 and 20.")
        i = self._anchor_index(info, anchor)
        A = info.anchors.float()
        alphas = torch.zeros(A.shape[1], len(A))
        alphas[:, i] = 1.0  # the anchor itself, as a point of the hull
        gamma, _ = direction_in_anchor_span(directions[direction], A)
        edits = edit_in_hull(alphas, gamma, A, np.linspace(-m, m, n), policy=policy)
        return self._strip(s, identity, edits.ws, self._angles(RenderRequest(yaw_deg=yaw_deg)), "edit", fps=8)

    # ------------------------------------------------------------------------------------------- text to 3D
    @functools.cached_property
    def _text_to_3d(self) -> tuple:
        """(pipeline, lock): the TuneMV3D model, loaded on first use and shared by all sessions. It holds no per-user
        state, but its scheduler's timesteps do change per call, hence the lock."""
        from ..pipelines.tunemv3d import TuneMV3DPipeline

        name = self.config.text_to_3d_model
        try:
            pipe = TuneMV3DPipeline.from_pretrained(name)
        except Exception as e:
            raise AppError(
                f"Could not load the text-to-3D model {name!r} ({e.__class__.__name__}: {e}). Set MY3DGEN_TEXT_TO_3D_MODEL "
                "to a folder written by training/train_tunemv3d.py, or leave it at the shipped my3dgen-hf/demo-synthobjects."
            ) from e
        for model in (pipe.unet, pipe.interactive, pipe.modulation, pipe.text_encoder, pipe.vae):
            if model is not None:
                model.eval().requires_grad_(False)
        pipe.set_progress_bar_config(disable=True)
        return pipe, threading.Lock()

    def text_to_3d(self, sid: str, prompt: str, seed: int = 0, steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                   num_views: int = 8, elevation_deg: float = 20.0, display_size: int = 128) -> tuple[list[Image.Image], Path, Path]:
        """TuneMV3D: ``num_views`` views of one object denoised jointly on a ring at ``elevation_deg``, an orbit video
        of its NeuS field and its mesh (GLB, vertex colours from the views). Returns (views, mp4 path, glb path)."""
        from ..utils.export import export_mesh, to_uint8
        from .media import write_mp4

        s = self.session(sid)
        prompt = (prompt or "").strip()
        if not prompt:
            raise AppError("Type a prompt, e.g. \"a red chair with four thin legs and armrests\".")
        if len(prompt) > 300:
            raise AppError("Keep the prompt under 300 characters.")
        cfg = self.config
        steps = int(steps or cfg.text_to_3d_steps)
        guidance = float(cfg.text_to_3d_guidance if guidance_scale is None else guidance_scale)
        if not 1 <= steps <= cfg.max_text_to_3d_steps:
            raise AppError(f"Use 1 to {cfg.max_text_to_3d_steps} denoising steps.")
        if not 1.0 <= guidance <= 20.0 or not 2 <= int(num_views) <= 16 or not -60.0 <= float(elevation_deg) <= 60.0:
            raise AppError("Use a guidance scale between 1 and 20, 2 to 16 views and an elevation between -60 and 60 degrees.")
        pipe, lock = self._text_to_3d
        with lock:
            generator = torch.Generator(pipe.device).manual_seed(int(seed))
            out = pipe(prompt, num_views=int(num_views), num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                       elevation=float(elevation_deg), output_type="pt")
            frames = pipe.render_orbit(out.field, num_frames=int(cfg.orbit_frames), elevation=float(elevation_deg))
            try:
                mesh = pipe.extract_mesh(out.field, resolution=int(cfg.text_to_3d_mesh_resolution), views=out.images)
            except ValueError as e:  # no zero crossing: the field is empty or fills the cube
                raise AppError(f"This sample has no surface to mesh ({e}); try another seed.") from e
        views = [Image.fromarray(a) for a in to_uint8(out.images * 2 - 1)]
        size = max(int(display_size), views[0].width)
        views = [v.resize((size, size), Image.LANCZOS) for v in views]
        frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.LANCZOS)) for f in frames])
        video = write_mp4(frames, s.new_path("text-to-3d", ".mp4"), fps=12)
        return views, video, export_mesh(mesh, s.new_path("text-to-3d", ".glb"))

    # ------------------------------------------------------------------------------------------- Hub
    @staticmethod
    def _check_repo_id(repo_id: str) -> str:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise AppError("Enter a Hub repo id like 'your-name/my-face-adapter'.")
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise AppError(f"'{repo_id}' is not a valid Hub repo id: {e}") from None
        if "/" not in repo_id:
            raise AppError(f"Give the full repo id with your user or organization name: 'your-name/{repo_id}'.")
        return repo_id

    def push_to_hub(self, sid: str, adapter: str, repo_id: str, token: str, private: bool = True) -> str:
        """Upload the adapter with its model card and sample renders; returns the commit URL."""
        from ..hub import SAMPLES_FILE, push_adapter_to_hub, render_sample_grid
        from ..lora.loader import AdapterError

        s = self.session(sid)
        repo_id = self._check_repo_id(repo_id)
        info = s.adapters.get(adapter)
        if info is None:
            raise AppError("Choose an adapter of this session to push (train one, or load one from the Hub).")
        token = (token or "").strip()
        if not token:
            # Never fall back to the server's own credentials (on a Space they belong to the Space's owner).
            raise AppError("Paste a Hugging Face access token with write permission (huggingface.co/settings/tokens).")
        with s.lock:
            pipe = s.own_pipe()
            self._activate(pipe, [(adapter, 1.0)])
            ws = info.anchors[:3] if info.anchors is not None else None
            render_sample_grid(pipe, info.folder / SAMPLES_FILE, ws=ws)
        try:
            return push_adapter_to_hub(info.folder, repo_id, private=bool(private), token=token, base_model=self.config.base_model,
                                       adapter_name=adapter)
        except AdapterError as e:
            raise AppError(_for_web(str(e)).replace("pass token= or run `hf auth login`", "paste a valid token")) from e
        except Exception as e:
            raise AppError(f"The upload to {repo_id} failed: {_hub_message(e)}") from e

    def load_from_hub(self, sid: str, repo_id: str, revision: str = "", token: str = "", adapter_name: str = "") -> str:
        """Download an adapter (and its anchors, if the repo has them) into this session; returns its name."""
        from ..lora.loader import AdapterError, _resolve_file

        s = self.session(sid)
        repo_id = (repo_id or "").strip()
        path = Path(repo_id)
        if not repo_id:
            raise AppError("Enter the Hub repo id of an adapter, like 'your-name/my-face-adapter'.")
        if path.exists():
            raise AppError("Only Hub repo ids can be loaded here, not server paths.")
        repo_id = self._check_repo_id(repo_id)
        name = clean_adapter_name(adapter_name or repo_id.split("/")[-1])
        if name in s.adapters:
            raise AppError(f"An adapter named '{name}' is already loaded in this session; choose another local name.")
        revision = (revision or "").strip() or None
        tok = (token or "").strip() or False  # False: never send the server's own token
        try:
            file, kind = _resolve_file(repo_id, None, revision=revision, token=tok)
        except AdapterError as e:
            raise AppError(_for_web(str(e))) from e
        except Exception as e:
            raise AppError(f"Could not download the adapter from {repo_id}: {_hub_message(e)}") from e
        folder = s.dir / "adapters" / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, folder / (WEIGHTS_FILE if kind == "diffusers" else file.name))
        anchors, names, summary = None, [], {}
        for extra in (ANCHORS_FILE, SUMMARY_FILE):
            got = _optional_download(repo_id, extra, revision, tok)
            if got is not None:
                shutil.copyfile(got, folder / extra)
        if (folder / ANCHORS_FILE).is_file():
            anchors, names = _read_anchors(folder / ANCHORS_FILE)
        if (folder / SUMMARY_FILE).is_file():
            try:
                summary = json.loads((folder / SUMMARY_FILE).read_text())
            except ValueError:
                summary = {}
        try:
            with s.lock:
                pipe = s.own_pipe()
                pipe.load_lora_weights(folder, adapter_name=name)
        except AdapterError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise AppError(str(e)) from e
        if anchors is not None and tuple(anchors.shape[1:]) != (pipe.generator.num_ws, pipe.generator.w_dim):
            anchors, names = None, []
        s.adapters[name] = AdapterInfo(name=name, folder=folder, source=f"hub:{repo_id}@{revision or 'main'}", anchors=anchors,
                                       anchor_names=names, summary=summary)
        return name

    def delete_adapter(self, sid: str, name: str):
        s = self.session(sid)
        if name not in s.adapters:
            raise AppError(f"No adapter named '{name}' in this session.")
        if s.job is not None and s.job.alive and s.job.params.adapter_name == name:
            raise AppError(f"'{name}' is being trained; cancel the training first.")
        with s.lock:
            s.own_pipe().delete_adapters(name)
            info = s.adapters.pop(name)
        shutil.rmtree(info.folder, ignore_errors=True)


def _optional_download(repo_id: str, filename: str, revision, token) -> Optional[Path]:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))
    except Exception:  # the file is optional
        return None


def _read_anchors(path: Path):
    from ..personalization import load_anchors

    try:
        anchors, _, names = load_anchors(path)
    except Exception:
        return None, []
    if len(names) != len(anchors):
        names = [f"photo {i}" for i in range(len(anchors))]
    return anchors.float(), names


def _for_web(message: str) -> str:
    """Library messages speak to Python users ("pass token="); say it in the app's words."""
    message = message.replace("pass token= (or run `hf auth login`)", "paste a token with read access in the Token field")
    message = message.replace("and pass token=", "and paste a token in the Token field")
    return message.replace("pass a token with read access", "paste a token with read access in the Token field")


def _hub_message(e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    if status == 401:
        return "the token was refused (HTTP 401): check that it is valid."
    if status == 403:
        return "the token has no write access to that namespace (HTTP 403)."
    if "offline" in text.lower() or "connect" in text.lower():
        return f"the Hub could not be reached ({text})."
    return text

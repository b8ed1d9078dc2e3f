"""The Gradio Blocks: one tab per task, each built by a function listed in ``TABS`` (add a tab by adding one).

Every handler takes ``gr.Request`` and works on the caller's own session (``request.session_hash``), so two
browser tabs or two API clients never see each other's adapters or files. Errors reach the user as readable
messages (``gr.Error`` with the cause), never as stack traces; the traceback goes to the server log."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import configure_environment

configure_environment()

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import AppError, user_message  # noqa: E402
from .jobs import FAILED, PROJECTING, STOPPED, TRAINING, JobSnapshot  # noqa: E402
from .service import BASE, NONE, AppService, RenderRequest  # noqa: E402

log = logging.getLogger(__name__)

CSS = """
#app-title h1 { margin-bottom: 0; }
.train-bar { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; margin: 6px 0 4px 0; }
.train-bar > div { height: 100%; background: var(--color-accent); transition: width 0.3s; }
.train-status { font-size: 0.95em; }
#render-image img, #render-depth img { width: 100%; height: 100%; object-fit: contain; }
/* gradio 6 shrinks the grid to the number of items: keep 6 columns so one photo stays a thumbnail */
#crops .grid-container, #interp-gallery .grid-container { --grid-cols: 6 !important; }
"""


# ----------------------------------------------------------------------------------------------- helpers
def _sid(request: Optional[gr.Request]) -> str:
    sid = getattr(request, "session_hash", None) if request is not None else None
    if not sid:
        raise AppError("No session: this endpoint must be called through the app (browser or gradio_client).")
    return sid


def _as_gr_error(e: BaseException) -> gr.Error:
    if not isinstance(e, AppError):
        log.exception("unexpected error in a handler")
    return gr.Error(html.escape(user_message(e), quote=False), print_exception=False)


def guarded(fn: Callable) -> Callable:
    """Turn any exception into a readable ``gr.Error`` (keeps the signature, so gr.Request is still injected)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise _as_gr_error(e) from None

        return gen

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise _as_gr_error(e) from None

    return wrapper


def _empty_losses() -> pd.DataFrame:
    return pd.DataFrame({"step": pd.Series([], dtype="int64"), "loss": pd.Series([], dtype="float64")})


def _loss_frame(snap: Optional[JobSnapshot]) -> pd.DataFrame:
    if snap is None or not snap.losses:
        return _empty_losses()
    steps, losses = zip(*snap.losses)
    return pd.DataFrame({"step": list(steps), "loss": list(losses)})


def _status_html(snap: Optional[JobSnapshot]) -> str:
    if snap is None:
        return "<div class='train-status'>No training yet in this session.</div>"
    if snap.state == PROJECTING:
        frac = snap.phase_step / max(1, snap.phase_total)
        head = f"Step 1/2 - projecting the photos to W: {snap.phase_step}/{snap.phase_total}"
    elif snap.state in (TRAINING, STOPPED) or snap.step:
        frac = snap.step / max(1, snap.total_steps)
        head = f"Step 2/2 - training the adapter: {snap.step}/{snap.total_steps}"
    else:
        frac = 0.0
        head = "Waiting"
    last = f" - loss {snap.losses[-1][1]:.4f}" if snap.losses else ""
    if snap.state == "done":
        frac = 1.0
    msg = html.escape(snap.message)
    extra = ""
    if snap.state == STOPPED:
        extra = " <b>Stopped.</b> " + ("The adapter as of this step is loaded: render it, or press Resume." if snap.adapter_ready else "Press Resume to go on.")
    elif snap.state == FAILED:
        extra = f" <b>Failed:</b> {html.escape(snap.error or '')}"
    return (
        f"<div class='train-status'><div><b>{html.escape(head)}</b>{html.escape(last)} ({snap.elapsed_s:.0f} s)</div>"
        f"<div class='train-bar'><div style='width:{100 * min(max(frac, 0.0), 1.0):.1f}%'></div></div>"
        f"<div>{msg}{extra}</div></div>"
    )


def _gallery(prepared) -> list:
    import math

    if prepared is None:
        return []
    return [
        (img, f"yaw {math.degrees(y):+.0f}°, pitch {math.degrees(p):+.0f}° · {name}")
        for img, name, (y, p) in zip(prepared.crops, prepared.names, prepared.poses)
    ]


def _prepared_summary(prepared, n_uploaded: Optional[int] = None) -> str:
    if prepared is None or len(prepared.images) == 0:
        n_rej = len(prepared.rejected) if prepared is not None else 0
        return f"**No usable photos.** {n_rej} file(s) rejected (reasons below). Try clearer, front-facing photos of one person."
    n = len(prepared.images)
    rej = f", {len(prepared.rejected)} rejected (see below)" if prepared.rejected else ""
    return f"**{n} photo(s) ready** from {prepared.source}{rej}. Choose a name, rank and steps below, then press **Train**."


@dataclass
class Shared:
    """Components that tabs share (filled as the tabs are built)."""

    adapter_dropdowns: list = field(default_factory=list)   # choices: adapters of the session
    identity_dropdowns: list = field(default_factory=list)  # choices: base + adapters
    mix_dropdowns: list = field(default_factory=list)       # choices: none + adapters
    adapters_table: Optional[gr.Dataframe] = None
    refresh_targets: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- tabs
def personalize_tab(service: AppService, shared: Shared):
    cfg = service.config
    with gr.Tab("Personalize", id="personalize"):
        gr.Markdown(
            "Give a few photos of **one person** (or use a demo identity), check the crops and poses, then train a tiny "
            "identity adapter on the frozen 3D prior. The adapter stays in this browser session."
        )
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Your photos", id="upload"):
                        files = gr.File(
                            label=f"Photos (JPEG/PNG/WebP, up to {cfg.max_upload_files} files, {cfg.max_file_mb:g} MB each)",
                            file_count="multiple", elem_id="upload-files",
                        )
                        check_btn = gr.Button("Check photos", elem_id="check-photos")
                    with gr.Tab("Demo identity", id="demo"):
                        gr.Markdown("A SynthHeads person the demo prior has never seen, photographed from several angles.")
                        demo_index = gr.Slider(0, 99, value=0, step=1, label="Demo identity #", elem_id="demo-index")
                        demo_count = gr.Slider(2, 24, value=12, step=1, label="Photos in the album", elem_id="demo-count")
                        demo_btn = gr.Button("Use this demo identity", variant="primary", elem_id="demo-album")
            with gr.Column(scale=3):
                summary = gr.Markdown("No photos yet.", elem_id="photos-summary")
                gallery = gr.Gallery(label="Aligned crops with their estimated pose", columns=6, height=300, object_fit="contain",
                                     elem_id="crops")
                rejected = gr.Dataframe(headers=["file", "reason"], datatype=["str", "str"], value=[], label="Rejected files",
                                        interactive=False, wrap=True, elem_id="rejected")
        with gr.Row():
            name = gr.Textbox(value="my_identity", label="Adapter name", max_lines=1, elem_id="adapter-name")
            rank = gr.Slider(1, cfg.max_rank, value=1, step=1, label="LoRA rank")
            steps = gr.Slider(1, cfg.max_train_steps, value=cfg.default_train_steps, step=1, label="Training steps", elem_id="train-steps",
                              info="more steps: closer likeness, longer wait")
            proj_steps = gr.Slider(1, cfg.max_projection_steps, value=cfg.default_projection_steps, step=1,
                                   label="Projection steps (per photo)", elem_id="proj-steps")
            seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        with gr.Row():
            train_btn = gr.Button("Train", variant="primary", elem_id="train", scale=3)
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
            resume_btn = gr.Button("Resume", elem_id="resume", scale=1)
        with gr.Row():
            with gr.Column(scale=2):
                status = gr.HTML(_status_html(None), elem_id="train-status")
            with gr.Column(scale=3):
                plot = gr.LinePlot(_empty_losses(), x="step", y="loss", title="Training loss", height=260, label="Loss",
                                   elem_id="loss-plot")
        poll = gr.Button("refresh status", visible=False)

    def _photos_out(prepared):
        return _gallery(prepared), [[n, r] for n, r in (prepared.rejected if prepared else [])], _prepared_summary(prepared)

    @guarded
    def make_demo_album(identity_index, count, request: gr.Request):
        prepared = service.demo_album(_sid(request), int(identity_index), int(count))
        return _photos_out(prepared)

    @guarded
    def check_photos(uploaded, request: gr.Request):
        prepared = service.preprocess_uploads(_sid(request), uploaded or [])
        if prepared.rejected and len(prepared.images):
            gr.Warning(f"{len(prepared.rejected)} file(s) were rejected; the reasons are listed under the crops.")
        return _photos_out(prepared)

    def _follow(job):
        last = None
        snap = job.snapshot()
        while True:
            snap = job.snapshot()
            key = (snap.state, snap.step, snap.phase_step, len(snap.losses), snap.message, snap.adapter_ready)
            if key != last:
                last = key
                yield _status_html(snap), _loss_frame(snap)
            if snap.waiting:
                break
            time.sleep(0.4)
        if snap.state == FAILED:
            raise AppError(f"Training failed: {snap.error}")

    @guarded
    def train(adapter_name, rank_, steps_, proj_steps_, seed_, request: gr.Request):
        job = service.start_training(_sid(request), adapter_name, int(rank_), int(steps_), int(proj_steps_), int(seed_ or 0))
        yield from _follow(job)

    @guarded
    def stop(request: gr.Request):
        service.stop_training(_sid(request))
        job = service.current_job(_sid(request))
        snap = job.wait_until(lambda s: s.waiting, timeout=120)
        return _status_html(snap), _loss_frame(snap)

    @guarded
    def resume(request: gr.Request):
        job = service.resume_training(_sid(request))
        yield from _follow(job)

    @guarded
    def training_status(request: gr.Request):
        job = service.current_job(_sid(request))
        snap = job.snapshot() if job is not None else None
        return _status_html(snap), _loss_frame(snap)

    photo_outputs = [gallery, rejected, summary]
    demo_btn.click(make_demo_album, [demo_index, demo_count], photo_outputs, api_name="demo_identity", concurrency_limit=2)
    check_btn.click(check_photos, [files], photo_outputs, api_name="check_photos", concurrency_limit=1)
    train_evt = train_btn.click(train, [name, rank, steps, proj_steps, seed], [status, plot], api_name="train",
                                concurrency_limit=cfg.train_concurrency, concurrency_id="training", show_progress="hidden")
    stop_evt = stop_btn.click(stop, None, [status, plot], api_name="stop", concurrency_limit=None, show_progress="hidden")
    resume_evt = resume_btn.click(resume, None, [status, plot], api_name="resume", concurrency_limit=cfg.train_concurrency,
                                  concurrency_id="training", show_progress="hidden")
    poll.click(training_status, None, [status, plot], api_name="training_status", concurrency_limit=None)
    return {"after_adapters_change": [train_evt, resume_evt, stop_evt]}


def render_tab(service: AppService, shared: Shared):
    cfg = service.config
    with gr.Tab("Render", id="render"):
        with gr.Row():
            with gr.Column(scale=2):
                identity = gr.Dropdown([BASE], value=BASE, label="Identity", allow_custom_value=True, elem_id="render-identity",
                                       info="'base' is the prior; adapters of this session are listed after training or loading.")
                with gr.Row():
                    mix_with = gr.Dropdown([NONE], value=NONE, label="Mix with", allow_custom_value=True, elem_id="render-mix")
                    mix_weight = gr.Slider(0, 1, value=1.0, step=0.05, label="Weight of the identity (the mix gets the rest)")
                source = gr.Radio(["seed", "anchor"], value="seed", label="Latent", elem_id="render-source",
                                  info="a random seed, or an anchor: a training photo's projected latent")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, elem_id="render-seed")
                    anchor = gr.Dropdown([], value=None, label="Anchor", allow_custom_value=True, elem_id="render-anchor")
                yaw = gr.Slider(-60, 60, value=0, step=1, label="Yaw (degrees)", elem_id="render-yaw")
                pitch = gr.Slider(-40, 40, value=0, step=1, label="Pitch (degrees)", elem_id="render-pitch")
                trunc = gr.Slider(0, 1, value=0.7, step=0.05, label="Truncation psi (seeds only)")
                render_btn = gr.Button("Render", variant="primary", elem_id="render-btn")
                with gr.Accordion("Orbit video and 3D mesh", open=True):
                    frames = gr.Slider(8, cfg.max_orbit_frames, value=cfg.orbit_frames, step=1, label="Orbit frames")
                    orbit_btn = gr.Button("Render orbit video", elem_id="orbit-btn")
                    mesh_res = gr.Slider(32, cfg.max_mesh_resolution, value=cfg.mesh_resolution, step=16, label="Mesh grid resolution")
                    mesh_btn = gr.Button("Extract mesh", elem_id="mesh-btn")
            with gr.Column(scale=3):
                with gr.Row():
                    image = gr.Image(label="Image", type="pil", format="png", height=300, elem_id="render-image", interactive=False)
                    depth = gr.Image(label="Depth (near = bright)", type="pil", format="png", height=300, elem_id="render-depth",
                                     interactive=False)
                video = gr.Video(label="Orbit", height=300, elem_id="orbit-video", interactive=False, autoplay=True, loop=True)
                model = gr.Model3D(label="Mesh (drag to rotate)", height=360, clear_color=(0.93, 0.94, 0.96, 1.0), elem_id="mesh-view",
                                   interactive=False)
                download = gr.DownloadButton("Download mesh (GLB)", value=None, elem_id="mesh-download")

    shared.identity_dropdowns.append(identity)
    shared.mix_dropdowns.append(mix_with)
    inputs = [identity, mix_with, mix_weight, source, seed, anchor, yaw, pitch, trunc]

    def _req(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_) -> RenderRequest:
        return RenderRequest(identity=identity_ or BASE, mix_with=mix_ or NONE, mix_weight=float(w_), source=source_ or "seed",
                             seed=int(seed_ or 0), anchor=anchor_, yaw_deg=float(yaw_), pitch_deg=float(pitch_), truncation=float(trunc_))

    @guarded
    def render(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_, request: gr.Request):
        return service.render(_sid(request), _req(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_))

    @guarded
    def orbit(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_, n_frames, request: gr.Request):
        return str(service.orbit(_sid(request), _req(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_), int(n_frames)))

    @guarded
    def mesh(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_, res, request: gr.Request):
        path = str(service.mesh(_sid(request), _req(identity_, mix_, w_, source_, seed_, anchor_, yaw_, pitch_, trunc_), int(res)))
        return path, path

    @guarded
    def anchors_for(identity_, request: gr.Request):
        choices = service.anchor_choices(_sid(request), identity_)
        return gr.update(choices=choices, value=choices[0] if choices else None)

    limit = cfg.render_concurrency
    render_btn.click(render, inputs, [image, depth], api_name="render", concurrency_limit=limit, concurrency_id="render")
    orbit_btn.click(orbit, inputs + [frames], [video], api_name="orbit", concurrency_limit=limit, concurrency_id="render")
    mesh_btn.click(mesh, inputs + [mesh_res], [model, download], api_name="mesh", concurrency_limit=limit, concurrency_id="render")
    identity.change(anchors_for, [identity], [anchor], api_visibility="private", show_progress="hidden")
    return {"anchor_dropdowns": [(identity, anchor)]}


def interpolate_tab(service: AppService, shared: Shared):
    with gr.Tab("Interpolate", id="interpolate"):
        gr.Markdown("Walk in W between two anchors (training photos' latents) of one adapter: plain linear interpolation.")
        with gr.Row():
            with gr.Column(scale=2):
                identity = gr.Dropdown([], value=None, label="Adapter", allow_custom_value=True, elem_id="interp-identity")
                with gr.Row():
                    a = gr.Dropdown([], value=None, label="From anchor", allow_custom_value=True, elem_id="interp-a")
                    b = gr.Dropdown([], value=None, label="To anchor", allow_custom_value=True, elem_id="interp-b")
                n = gr.Slider(2, 24, value=6, step=1, label="Frames")
                yaw = gr.Slider(-60, 60, value=0, step=1, label="Yaw (degrees)")
                btn = gr.Button("Interpolate", variant="primary", elem_id="interp-btn")
            with gr.Column(scale=3):
                strip = gr.Gallery(label="Interpolation", columns=6, height=220, elem_id="interp-gallery")
                video = gr.Video(label="Interpolation video", height=260, interactive=False, autoplay=True, loop=True)
    shared.adapter_dropdowns.append(identity)

    @guarded
    def interpolate(identity_, a_, b_, n_, yaw_, request: gr.Request):
        frames, path = service.interpolate(_sid(request), identity_, a_, b_, int(n_), float(yaw_))
        return frames, str(path)

    @guarded
    def anchors_for(identity_, request: gr.Request):
        choices = service.anchor_choices(_sid(request), identity_) if identity_ else []
        return (gr.update(choices=choices, value=choices[0] if choices else None),
                gr.update(choices=choices, value=choices[-1] if choices else None))

    btn.click(interpolate, [identity, a, b, n, yaw], [strip, video], api_name="interpolate",
              concurrency_limit=service.config.render_concurrency, concurrency_id="render")
    identity.change(anchors_for, [identity], [a, b], api_visibility="private", show_progress="hidden")
    return {}


def personal_space_tab(service: AppService, shared: Shared):
    directions = sorted(service.edit_directions())
    with gr.Tab("Edit & sample", id="personal-space"):
        gr.Markdown("The personal space of an adapter: the convex hull of its anchors (MyStyle). Sample new looks inside it, "
                    "or edit an anchor along a semantic direction of the base model without leaving the person.")
        with gr.Row():
            with gr.Column(scale=2):
                identity = gr.Dropdown([], value=None, label="Adapter", allow_custom_value=True, elem_id="space-identity")
                with gr.Row():
                    n_looks = gr.Slider(1, 16, value=8, step=1, label="Looks")
                    seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                looks_btn = gr.Button("Sample new looks", variant="primary", elem_id="looks-btn")
                anchor = gr.Dropdown([], value=None, label="Anchor to edit", allow_custom_value=True, elem_id="edit-anchor")
                direction = gr.Dropdown(directions, value=directions[0] if directions else None, label="Direction", allow_custom_value=True,
                                        elem_id="edit-direction", info="directions stored with the base model (training/fit_directions.py)")
                magnitude = gr.Slider(0.5, 10, value=3.0, step=0.5, label="Magnitude (both ways)")
                frames = gr.Slider(2, 12, value=5, step=1, label="Frames")
                policy = gr.Radio(["stop", "continue", "project"], value="stop", label="At the edge of the personal space")
                yaw = gr.Slider(-60, 60, value=0, step=1, label="Yaw (degrees)")
                edit_btn = gr.Button("Edit", elem_id="edit-btn")
            with gr.Column(scale=3):
                looks = gr.Gallery(label="New looks", columns=4, height=300, format="png", elem_id="looks-gallery")
                strip = gr.Gallery(label="Edit", columns=6, height=200, format="png", elem_id="edit-gallery")
                video = gr.Video(label="Edit video", height=240, interactive=False, autoplay=True, loop=True)
    shared.adapter_dropdowns.append(identity)

    @guarded
    def sample(identity_, n_, seed_, request: gr.Request):
        return service.sample_looks(_sid(request), identity_, int(n_), int(seed_ or 0))

    @guarded
    def edit(identity_, anchor_, direction_, magnitude_, frames_, policy_, yaw_, request: gr.Request):
        images, path = service.edit(_sid(request), identity_, anchor_, direction_, float(magnitude_), int(frames_), policy_, float(yaw_))
        return images, str(path)

    @guarded
    def anchors_for(identity_, request: gr.Request):
        choices = service.anchor_choices(_sid(request), identity_) if identity_ else []
        return gr.update(choices=choices, value=choices[0] if choices else None)

    limit = service.config.render_concurrency
    looks_btn.click(sample, [identity, n_looks, seed], [looks], api_name="sample_looks", concurrency_limit=limit, concurrency_id="render")
    edit_btn.click(edit, [identity, anchor, direction, magnitude, frames, policy, yaw], [strip, video], api_name="edit",
                   concurrency_limit=limit, concurrency_id="render")
    identity.change(anchors_for, [identity], [anchor], api_visibility="private", show_progress="hidden")
    return {}


def text_to_3d_tab(service: AppService, shared: Shared):
    from ..synthetic.synthobjects import caption, sample_object
    from ..tunemv3d.evaluation import HELD_OUT_OFFSET

    cfg = service.config
    # captions of objects no shipped model was trained on (SynthObjects world 1, held-out ids)
    examples = [[caption(sample_object(1, HELD_OUT_OFFSET + i, "mixed"))] for i in range(4)]
    with gr.Tab("Text to 3D", id="text-to-3d"):
        gr.Markdown(f"TuneMV3D (`{html.escape(cfg.text_to_3d_model)}`): a frozen text-to-image model denoises 8 views of one "
                    "object jointly through a NeuS field, which then gives an orbit video and a mesh. The shipped demo knows "
                    "SynthObjects' chairs and tables.")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", max_lines=2, value=examples[0][0], elem_id="t3d-prompt")
                gr.Examples(examples, [prompt], label="Held-out captions")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                    steps = gr.Slider(1, cfg.max_text_to_3d_steps, value=cfg.text_to_3d_steps, step=1, label="Denoising steps")
                guidance = gr.Slider(1, 12, value=cfg.text_to_3d_guidance, step=0.5, label="Guidance scale")
                elevation = gr.Slider(0, 45, value=20, step=1, label="Camera elevation (degrees)")
                go = gr.Button("Generate", variant="primary", elem_id="t3d-btn")
            with gr.Column(scale=3):
                views = gr.Gallery(label="8 views", columns=4, height=300, format="png", elem_id="t3d-views")
                video = gr.Video(label="Orbit of the NeuS field", height=240, interactive=False, autoplay=True, loop=True)
                model = gr.Model3D(label="Mesh", height=300, clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="t3d-mesh")
                download = gr.File(label="Download mesh (GLB)")

    @guarded
    def generate(prompt_, seed_, steps_, guidance_, elevation_, request: gr.Request):
        images, path, glb = service.text_to_3d(_sid(request), prompt_, int(seed_ or 0), int(steps_), float(guidance_),
                                               elevation_deg=float(elevation_))
        return images, str(path), str(glb), str(glb)

    go.click(generate, [prompt, seed, steps, guidance, elevation], [views, video, model, download], api_name="text_to_3d",
             concurrency_limit=service.config.render_concurrency, concurrency_id="render")
    return {}


def hub_tab(service: AppService, shared: Shared):
    with gr.Tab("Hub", id="hub"):
        gr.Markdown("Share an adapter (a few hundred KB) with its model card, or load one by repo id. The Hub is only "
                    "contacted when you press a button here.")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Push an adapter")
                adapter = gr.Dropdown([], value=None, label="Adapter", allow_custom_value=True, elem_id="push-adapter")
                repo = gr.Textbox(label="Repo id", placeholder="your-name/my-face-adapter", max_lines=1, elem_id="push-repo")
                token = gr.Textbox(label="Hugging Face token (write access)", type="password", max_lines=1, elem_id="push-token")
                private = gr.Checkbox(value=True, label="Private repo", elem_id="push-private")
                push_btn = gr.Button("Push to the Hub", variant="primary", elem_id="push-btn")
                push_out = gr.Markdown(elem_id="push-result")
            with gr.Column():
                gr.Markdown("### Load an adapter")
                load_repo = gr.Textbox(label="Repo id", placeholder="someone/their-adapter", max_lines=1, elem_id="load-repo")
                revision = gr.Textbox(label="Revision (branch, tag or commit; empty = main)", max_lines=1, elem_id="load-revision")
                load_token = gr.Textbox(label="Token (only for private repos)", type="password", max_lines=1, elem_id="load-token")
                local = gr.Textbox(label="Name in this session (empty = repo name)", max_lines=1, elem_id="load-name")
                load_btn = gr.Button("Load adapter", variant="primary", elem_id="load-btn")
                load_out = gr.Markdown(elem_id="load-result")
        table = gr.Dataframe(headers=["name", "source", "anchors", "rank", "steps"], value=[], label="Adapters in this session",
                             interactive=False, elem_id="adapters-table")
    shared.adapter_dropdowns.append(adapter)
    shared.adapters_table = table

    @guarded
    def push(adapter_, repo_, token_, private_, request: gr.Request):
        url = service.push_to_hub(_sid(request), adapter_, repo_, token_, bool(private_))
        return f"Pushed **{html.escape(adapter_)}** to `{html.escape(repo_.strip())}`: {html.escape(url)}"

    @guarded
    def load(repo_, rev_, token_, name_, request: gr.Request):
        name = service.load_from_hub(_sid(request), repo_, rev_, token_, name_)
        return f"Loaded `{html.escape(repo_.strip())}` as **{html.escape(name)}**: pick it in the Render tab."

    push_btn.click(push, [adapter, repo, token, private], [push_out], api_name="push_to_hub", concurrency_limit=2)
    load_evt = load_btn.click(load, [load_repo, revision, load_token, local], [load_out], api_name="load_from_hub", concurrency_limit=2)
    return {"after_adapters_change": [load_evt]}


#: The tabs, in order. A later task adds one by writing ``def my_tab(service, shared) -> dict`` and listing it here.
TABS = [personalize_tab, render_tab, interpolate_tab, personal_space_tab, text_to_3d_tab, hub_tab]


# ----------------------------------------------------------------------------------------------- the app
def build_demo(service: AppService) -> gr.Blocks:
    shared = Shared()
    with gr.Blocks(title="My3DGen: personalized 3D heads", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# My3DGen: your 3D head from a few photos\n"
            f"Frozen 3D-aware prior {service.base_description()} plus a tiny per-identity convolutional LoRA adapter.",
            elem_id="app-title",
        )
        hooks: dict[str, list] = {}
        with gr.Tabs():
            for tab in TABS:
                for key, value in (tab(service, shared) or {}).items():
                    hooks.setdefault(key, []).extend(value if isinstance(value, list) else [value])

        @guarded
        def refresh(request: gr.Request):
            sid = _sid(request)
            names = service.adapter_names(sid)
            rows = [[a["name"], a["source"], a["anchors"], a["rank"], a["steps"]] for a in service.list_adapters(sid)]
            updates = []
            updates += [gr.update(choices=[BASE] + names, value=names[-1] if names else BASE) for _ in shared.identity_dropdowns]
            updates += [gr.update(choices=[NONE] + names) for _ in shared.mix_dropdowns]
            updates += [gr.update(choices=names, value=names[-1] if names else None) for _ in shared.adapter_dropdowns]
            updates.append(rows)
            return updates

        @guarded
        def list_adapters(request: gr.Request):
            return service.list_adapters(_sid(request))

        targets = shared.identity_dropdowns + shared.mix_dropdowns + shared.adapter_dropdowns + [shared.adapters_table]
        for evt in hooks.get("after_adapters_change", []):
            evt.then(refresh, None, targets, api_visibility="private", show_progress="hidden")
        adapters_json = gr.JSON(visible=False)
        hidden = gr.Button(visible=False)
        hidden.click(list_adapters, None, adapters_json, api_name="list_adapters")

        def _unload(request: gr.Request):
            sid = getattr(request, "session_hash", None)
            if sid:
                service.close_session(sid)

        demo.unload(_unload)
    demo.my3dgen_service = service
    return demo


def launch_kwargs(service: AppService) -> dict:
    """Arguments for ``demo.launch`` that the app needs (theme/css go to launch() in gradio 6)."""
    return {
        "theme": gr.themes.Default(primary_hue="indigo"),
        "css": CSS,
        "allowed_paths": [str(service.sessions.root)],
        "max_file_size": f"{int(service.config.max_file_mb)}mb",
        "show_error": True,
    }


def create_app(config=None, base_loader=None, preload: bool = True) -> gr.Blocks:
    """Build the service and the Blocks, with the queue configured. ``preload`` loads the base model now, so that the
    first render does not wait for it."""
    service = AppService(config, base_loader=base_loader)
    if preload:
        try:
            service.base  # noqa: B018  (loads it)
        except BaseException:
            service.shutdown()  # no temporary folder left behind
            raise
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=service.config.render_concurrency, max_size=service.config.max_queue_size)
    return demo

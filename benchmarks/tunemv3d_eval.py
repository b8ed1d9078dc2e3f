"""TuneMV3D vs the frozen base model sampling views independently, on held-out SynthObjects captions.

    python benchmarks/tunemv3d_eval.py --out outputs/tunemv3d_eval                 # the shipped demo models
    python benchmarks/tunemv3d_eval.py --base_model <SD folder> --tunemv3d_model <TuneMV3D folder> \\
        --clip_model <CLIP folder> --ablation_models <no-raw-x_t folder> <features folder>
    python benchmarks/tunemv3d_eval.py ... --quick                                # a smoke run in seconds

For each of ``--num_captions`` held-out captions (SynthObjects world ``--data_seed``, objects from id
``--object_offset``, never in a training set), each method samples ``--num_views`` views at the held-out object's
cameras with ``--steps`` steps, the same seed per caption for every method:

* ``base (independent)``: the frozen base text-to-image model samples each view on its own
  (``evaluation.sample_independent_views``; ``--view_prompts`` adds "front/side/back view" to each view's prompt);
* ``TuneMV3D``: the views denoised jointly through the NeuS field;
* one row per ``--ablation_models`` folder: TuneMV3D trained without the raw x_t in encoder O
  (``train_tunemv3d.py --no_raw_xt``) or rendering high-dimensional features instead of x0
  (``--render_target features``), the supplement's ablations (Sec. D), at the same sampling steps.

Measures (``my3dgen_hf/tunemv3d/evaluation.py`` documents them precisely):

* CLIP R-precision (R = 1) with view-majority voting, ``--num_candidates`` candidate captions per object: its own
  and distractors drawn from the other held-out captions and from further held-out objects' captions;
* multi-view consistency: a small NeuS field fitted to n - 1 views renders the held-out one; PSNR / SSIM against
  the sampled view, averaged over ``--holdout_views`` views spread in azimuth (same protocol for every method);
  for TuneMV3D also its own field's decoded renders vs its views ("own field");
* geometry: Chamfer distance (world units; objects have half-diagonal 0.6) of a marching-cubes mesh to the ground
  truth object's surface: the fitted field's mesh for every method, and TuneMV3D's own field (``pipe.extract_mesh``);
* seconds per ``--num_views``-view sample (median over captions; threads as set by ``--num_threads``).

Writes ``results.json``, ``results.md`` (the table and the claims with whether each holds) and ``samples.png``
(ground truth, then each method, for the first captions) to ``--out``, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from my3dgen_hf.assets import resolve_pretrained
from my3dgen_hf.metrics.clip_rprecision import CLIPRPrecision
from my3dgen_hf.pipelines.tunemv3d import TuneMV3DPipeline
from my3dgen_hf.synthetic.synthobjects import chamfer_distance, object_points, render_views
from my3dgen_hf.tunemv3d.evaluation import (
    HELD_OUT_OFFSET,
    FieldFitConfig,
    distractor_captions,
    evaluate_views,
    geometry_metrics,
    held_out_objects,
    own_field_consistency,
    sample_independent_views,
    sample_tunemv3d_views,
)
from my3dgen_hf.utils.io import atomic_path, atomic_write_text
from my3dgen_hf.utils.provenance import provenance_lines, run_provenance

DEMO_MODEL = "my3dgen-hf/demo-synthobjects"  # a TuneMV3D pipeline: its frozen unet/vae/text encoder are the base
DEMO_CLIP = "my3dgen-hf/synthobjects-clip"
DEFAULT_STEPS = 50  # TuneMV3DPipeline.__call__'s default
TRAINING_SUMMARY = "tunemv3d_training.json"  # written by training/train_tunemv3d.py

FULL = dict(num_captions=30, num_candidates=100, steps=DEFAULT_STEPS, fit_steps=300, fit_resolution=32, holdout_views=2,
            mesh_resolution=64, num_points=5000)
QUICK = dict(num_captions=2, num_candidates=8, steps=2, fit_steps=20, fit_resolution=16, holdout_views=1, mesh_resolution=24,
             num_points=300)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--base_model", default=DEMO_MODEL, help="the frozen 2D text-to-image model: a Stable Diffusion folder, or a TuneMV3D "
      f"folder (its frozen base) (default: {DEMO_MODEL})")
    a("--tunemv3d_model", default=DEMO_MODEL, help=f"a TuneMV3D pipeline folder (default: {DEMO_MODEL})")
    a("--clip_model", default=DEMO_CLIP, help=f"a transformers CLIPModel folder with its tokenizer (default: {DEMO_CLIP})")
    a("--ablation_models", nargs="*", default=[], metavar="[LABEL=]PATH",
      help="TuneMV3D folders trained with an ablation (--no_raw_xt / --render_target features); labelled from their config")
    a("--num_captions", type=int, default=None, help=f"held-out captions ({FULL['num_captions']}; --quick {QUICK['num_captions']})")
    a("--num_candidates", type=int, default=None, help=f"R-precision candidates per object ({FULL['num_candidates']})")
    a("--num_views", type=int, default=8)
    a("--steps", type=int, default=None, help=f"sampling steps for every method ({FULL['steps']})")
    a("--guidance_scale", type=float, default=7.5)
    a("--view_prompts", action="store_true", help="baseline: add 'front/side/back view' to each view's prompt (MVDream-style)")
    a("--seed", type=int, default=0, help="caption i is sampled (and its fields fitted) with seed + i by every method")
    a("--data_seed", type=int, default=None, help="SynthObjects world (default: the TuneMV3D model's training world when "
      f"{TRAINING_SUMMARY} records it, else 1 as in training/train_synthobjects_*.py)")
    a("--category", default=None, choices=["chair", "table", "mixed"], help="default: the TuneMV3D model's training category, else mixed")
    a("--object_offset", type=int, default=HELD_OUT_OFFSET, help="first held-out object id")
    a("--fit_steps", type=int, default=None, help=f"steps of each consistency fit ({FULL['fit_steps']})")
    a("--fit_resolution", type=int, default=None, help=f"views are resized to this for the fit ({FULL['fit_resolution']})")
    a("--holdout_views", type=int, default=None, help=f"leave-one-out folds per object ({FULL['holdout_views']})")
    a("--mesh_resolution", type=int, default=None, help=f"marching-cubes grid ({FULL['mesh_resolution']})")
    a("--num_points", type=int, default=None, help=f"surface points per Chamfer distance ({FULL['num_points']})")
    a("--num_samples_png", type=int, default=4, help="captions shown in samples.png")
    a("--device", default=None, help="default: cuda when available, else cpu")
    a("--num_threads", type=int, default=None, help="torch CPU threads (timings depend on it)")
    a("--out", type=Path, default=Path("outputs/tunemv3d_eval"))
    a("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.num_views < 2 or args.num_captions < 1 or args.num_candidates < 2:
        p.error("--num_views and --num_candidates must be >= 2, --num_captions >= 1")
    return args


# ------------------------------------------------------------------------------------------------------ models
def locate(name: str, role: str) -> str:
    """The local folder of model ``role`` ("base", "tunemv3d", "clip"): a shipped name (``my3dgen-hf/...``) resolves to
    the copy inside the package; this benchmark runs offline, so anything else must be a local folder."""
    try:
        folder = Path(resolve_pretrained(name))
    except FileNotFoundError as e:
        raise SystemExit(f"{e}\nOr pass local folders: --base_model <Stable Diffusion-layout folder>, --tunemv3d_model <folder "
                         "written by training/train_tunemv3d.py>, --clip_model <transformers CLIPModel folder>") from None
    if not folder.is_dir():
        raise SystemExit(f"--{role}_model {name}: no such folder (this benchmark runs offline: pass a local folder)")
    return str(folder)


def _has_tunemv3d_modules(folder: str) -> bool:
    index = json.loads((Path(folder) / "model_index.json").read_text())
    return all(index.get(k, [None])[0] is not None for k in ("interactive", "modulation"))


def ablation_label(pipe: TuneMV3DPipeline) -> str:
    parts = []
    if not pipe.modulation.config.get("use_raw_xt", True):
        parts.append("no raw x_t in O")
    if pipe.interactive.config.get("render_target", "x0") == "features":
        parts.append(f"rendered {pipe.interactive.num_render_channels}-d features")
    return ", ".join(parts) or "full"


def training_summary(folder: str) -> Optional[dict]:
    path = Path(folder) / TRAINING_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def load_tunemv3d(folder: str, device) -> TuneMV3DPipeline:
    pipe = TuneMV3DPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# ------------------------------------------------------------------------------------------------- evaluation
def _mean_sem(values) -> tuple[float, float]:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return float("nan"), float("nan")
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), sem


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def evaluate_method(name, sample_fn, objects, args, fit_config, pipe=None, timed=True) -> dict:
    """Sample every object's views with ``sample_fn(object, generator) -> (images, field or None)`` and measure them."""
    per_object, views, seconds = [], [], []
    for i, obj in enumerate(objects):
        generator = torch.Generator(args.device).manual_seed(args.seed + i)
        t0 = time.perf_counter()
        images, field = sample_fn(obj, generator)
        seconds.append(time.perf_counter() - t0)
        views.append(images)
        fit = dataclasses.replace(fit_config, seed=args.seed + i)
        row = {"object_id": obj.object_id, "caption": obj.caption, "sample_seconds": seconds[-1]}
        row.update(evaluate_views(images, obj.cameras, obj.params, fit, args.holdout_views, args.mesh_resolution, args.num_points, args.seed + i,
                                  device=args.device))
        if field is not None:
            own = own_field_consistency(pipe, field, images, obj.cameras)
            if own is not None:
                row["own_psnr"], row["own_ssim"] = own["psnr"], own["ssim"]
            try:
                mesh = pipe.extract_mesh(field, resolution=args.mesh_resolution)
            except ValueError:  # no zero crossing in the cube
                mesh = None
            g = geometry_metrics(mesh, obj.params, args.num_points, args.seed + i)
            row["own_chamfer"], row["own_chamfer_normalized"] = g["chamfer"], g["chamfer_normalized"]
        per_object.append(row)
        print(f"[{name}] {i + 1}/{len(objects)} {obj.caption!r}: "
              + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    summary = {"per_object": per_object, "views": views}
    for key in ("psnr", "ssim", "chamfer", "chamfer_normalized", "own_psnr", "own_ssim", "own_chamfer", "own_chamfer_normalized"):
        if key in per_object[0]:
            summary[key], summary[key + "_sem"] = _mean_sem(r[key] for r in per_object)
    summary["mesh_failures"] = sum(not math.isfinite(r["chamfer"]) for r in per_object)
    if "own_chamfer" in per_object[0]:
        summary["own_mesh_failures"] = sum(not math.isfinite(r["own_chamfer"]) for r in per_object)
    summary["seconds_per_sample"] = float(statistics.median(seconds)) if timed else None
    summary["seconds_per_sample_all"] = seconds if timed else None
    return summary


def r_precision(clip: CLIPRPrecision, summary: dict, objects, distractors, args) -> None:
    result = clip(summary["views"], [o.caption for o in objects], candidates=distractors, num_candidates=args.num_candidates, seed=args.seed)
    k = sum(result.correct)
    summary["r_precision"] = result.r_precision
    summary["r_precision_ci95"] = wilson_interval(k, len(result.correct))
    for row, correct, votes, cands, got in zip(summary["per_object"], result.correct, result.votes, result.candidates, result.retrieved):
        row["r_correct"] = bool(correct)
        row["retrieved"] = cands[got]
        row["votes_for_caption"] = votes[cands.index(row["caption"])]


# ---------------------------------------------------------------------------------------------------- report
def _fmt(value, sem=None, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if sem is not None and math.isfinite(sem):
        text += f" ± {sem:.{digits}f}"
    return text


def _wins(a_rows, b_rows, key, lower_is_better=False) -> str:
    pairs = [(a[key], b[key]) for a, b in zip(a_rows, b_rows) if math.isfinite(a.get(key, float("nan"))) and math.isfinite(b.get(key, float("nan")))]
    wins = sum((x < y) if lower_is_better else (x > y) for x, y in pairs)
    return f"{wins}/{len(pairs)} objects"


def claims(results: dict, args) -> list[dict]:
    methods = results["methods"]
    base, tune, ref = methods["base (independent)"], methods["TuneMV3D"], methods[REFERENCE]
    out = []

    def claim(text, holds, detail):
        out.append({"claim": text, "holds": None if holds is None else bool(holds), "detail": detail})

    claim("TuneMV3D's views are more consistent than independently sampled views (leave-one-out PSNR of a fitted field)",
          tune["psnr"] > base["psnr"],
          f"PSNR {_fmt(tune['psnr'])} vs {_fmt(base['psnr'])} dB, SSIM {_fmt(tune['ssim'])} vs {_fmt(base['ssim'])}; "
          f"TuneMV3D higher on {_wins(tune['per_object'], base['per_object'], 'psnr')}; ground-truth renders {_fmt(ref['psnr'])} dB")
    own = tune.get("own_chamfer", float("nan"))
    claim("TuneMV3D's geometry is closer to the ground truth (Chamfer of its own NeuS mesh vs the field fitted to the independent views)",
          own < base["chamfer"] if math.isfinite(own) and math.isfinite(base["chamfer"]) else None,
          f"Chamfer {_fmt(own, digits=4)} vs {_fmt(base['chamfer'], digits=4)}; own-field mesh failures "
          f"{tune.get('own_mesh_failures', 'n/a')}, fitted-mesh failures {base['mesh_failures']}")
    claim("TuneMV3D's geometry is closer to the ground truth with the same protocol for both (Chamfer of the field fitted to each method's views)",
          tune["chamfer"] < base["chamfer"] if math.isfinite(tune["chamfer"]) and math.isfinite(base["chamfer"]) else None,
          f"Chamfer {_fmt(tune['chamfer'], digits=4)} vs {_fmt(base['chamfer'], digits=4)}; TuneMV3D lower on "
          f"{_wins(tune['per_object'], base['per_object'], 'chamfer', lower_is_better=True)}")
    sphere = results["references"]["sphere_chamfer"]
    claim("Check: TuneMV3D's own geometry beats its untrained field (a sphere of radius 0.5)",
          own < sphere if math.isfinite(own) else None, f"Chamfer {_fmt(own, digits=4)} vs {_fmt(sphere, digits=4)}")
    claim("TuneMV3D does not lose CLIP R-precision",
          tune["r_precision"] >= base["r_precision"],
          f"R@1 {_fmt(tune['r_precision'])} (95% CI {_fmt(tune['r_precision_ci95'][0], digits=2)}-{_fmt(tune['r_precision_ci95'][1], digits=2)}) "
          f"vs {_fmt(base['r_precision'])} ({_fmt(base['r_precision_ci95'][0], digits=2)}-{_fmt(base['r_precision_ci95'][1], digits=2)}), "
          f"{len(tune['per_object'])} captions, {args.num_candidates} candidates")
    default = args.steps == DEFAULT_STEPS
    claim(f"Sampling {args.num_views} views with TuneMV3D takes under a minute on this machine at the default {DEFAULT_STEPS} steps",
          tune["seconds_per_sample"] < 60 if default else None,
          f"median {tune['seconds_per_sample']:.2f} s per {args.num_views}-view sample at {args.steps} steps on {results['settings']['device']} "
          f"({results['settings']['num_threads']} threads); baseline {base['seconds_per_sample']:.2f} s"
          + ("" if default else f"; not checked: run with --steps {DEFAULT_STEPS}"))
    full_steps = (results["models"]["tunemv3d"].get("training") or {}).get("global_step")
    for name, m in methods.items():
        if not name.startswith("TuneMV3D ["):
            continue
        steps = (results["models"]["ablations"][name].get("training") or {}).get("global_step")
        claim(f"Full TuneMV3D is more consistent than {name} (leave-one-out PSNR)", tune["psnr"] > m["psnr"],
              f"PSNR {_fmt(tune['psnr'])} vs {_fmt(m['psnr'])} dB; full higher on {_wins(tune['per_object'], m['per_object'], 'psnr')}")
        claim(f"Full TuneMV3D's own geometry beats {name}'s (Chamfer of the own NeuS mesh)",
              own < m.get("own_chamfer", float("nan")) if math.isfinite(own) and math.isfinite(m.get("own_chamfer", float("nan"))) else None,
              f"Chamfer {_fmt(own, digits=4)} vs {_fmt(m.get('own_chamfer'), digits=4)}")
        claim(f"Full TuneMV3D's R-precision is at least {name}'s", tune["r_precision"] >= m["r_precision"],
              f"R@1 {_fmt(tune['r_precision'])} vs {_fmt(m['r_precision'])}")
        claim(f"{name} was trained for as many steps as the full model (equal steps)",
              None if steps is None or full_steps is None else steps == full_steps,
              f"{steps} vs {full_steps} training steps (from {TRAINING_SUMMARY}; None: not recorded); sampling: {args.steps} steps for all")
    return out


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# TuneMV3D vs independent views on held-out SynthObjects captions",
        "",
        *provenance_lines(s),
        "",
        f"{s['num_captions']} held-out captions (world {s['data_seed']}, {s['category']}, object ids from {s['object_offset']}), "
        f"{s['num_views']} views at the objects' cameras, {s['steps']} sampling steps, guidance {s['guidance_scale']}, "
        f"seed {s['seed']}, {s['device']} ({s['num_threads']} threads){', quick run' if s['quick'] else ''}. "
        f"Baseline prompts: the caption{' + a front/side/back view phrase' if s['view_prompts'] else ' alone'}. "
        f"R-precision: {s['num_candidates']} candidates, view-majority vote. Consistency: a NeuS field fitted to "
        f"{s['num_views'] - 1} views for {s['fit_steps']} steps at {s['fit_resolution']} px renders the held-out view "
        f"({s['holdout_views']} folds). Chamfer: world units, {s['num_points']} points, marching cubes at "
        f"{s['mesh_resolution']}^3 (objects have half-diagonal 0.6). Mean ± standard error over captions.",
        "",
        "| method | R-precision | PSNR held-out view (dB) | SSIM held-out view | PSNR own field (dB) | Chamfer, fitted field | "
        "Chamfer, own field | s / sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results["methods"].items():
        lines.append(
            f"| {name} | {_fmt(m['r_precision'])} | {_fmt(m['psnr'], m['psnr_sem'], 2)} | {_fmt(m['ssim'], m['ssim_sem'])} | "
            f"{_fmt(m.get('own_psnr'), m.get('own_psnr_sem'), 2)} | {_fmt(m['chamfer'], m['chamfer_sem'], 4)} | "
            f"{_fmt(m.get('own_chamfer'), m.get('own_chamfer_sem'), 4)} | {_fmt(m['seconds_per_sample'], digits=2)} |"
        )
    lines += [
        "",
        f"The reference row fits the same field to the held-out object's own renders: the protocol's ceiling for consistency "
        f"and geometry, and the CLIP's for R-precision. A sphere of radius 0.5, the untrained TuneMV3D field, scores "
        f"Chamfer {_fmt(results['references']['sphere_chamfer'], digits=4)}.",
        "", "## Claims", "",
    ]
    for c in results["claims"]:
        verdict = {True: "holds", False: "does not hold", None: "not checked"}[c["holds"]]
        lines.append(f"- **{verdict}**: {c['claim']}. {c['detail']}.")
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def save_samples(path: Path, objects, methods: dict, resolution: int, count: int) -> None:
    """Rows: per caption, the ground truth then each method's views (uint8 grid)."""
    rows = []
    for i, obj in enumerate(objects[:count]):
        rgba = render_views(obj.params, obj.cameras, resolution, 2).astype(np.float32) / 255.0
        rows.append(rgba[..., :3] * rgba[..., 3:] + 1.0 - rgba[..., 3:])
        for m in methods.values():
            v = torch.nn.functional.interpolate(m["views"][i], size=(resolution, resolution), mode="bilinear", align_corners=False)
            rows.append(v.permute(0, 2, 3, 1).numpy())
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray((grid.clip(0, 1) * 255).round().astype(np.uint8)).save(path)


# ------------------------------------------------------------------------------------------------------ main
REFERENCE = "reference: ground-truth renders"


def ground_truth_views(obj, resolution: int) -> torch.Tensor:
    """The held-out object's own renders at its cameras, on white: float [n, 3, R, R] in [0, 1]."""
    rgba = torch.from_numpy(render_views(obj.params, obj.cameras, resolution, 2)).float() / 255.0
    return (rgba[..., :3] * rgba[..., 3:] + 1.0 - rgba[..., 3:]).permute(0, 3, 1, 2)


def sphere_chamfer(objects, num_points: int, radius: float = 0.5, seed: int = 0) -> float:
    """Chamfer of a sphere of ``radius`` (an untrained TuneMV3D field) to the objects, averaged."""
    d = np.random.default_rng(seed).normal(size=(num_points, 3))
    sphere = radius * d / np.linalg.norm(d, axis=1, keepdims=True)
    return float(np.mean([chamfer_distance(sphere, object_points(o.params, num_points, seed=seed)) for o in objects]))


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    paths = {"base": locate(args.base_model, "base"), "tunemv3d": locate(args.tunemv3d_model, "tunemv3d"), "clip": locate(args.clip_model, "clip")}
    notes = []

    # the held-out world: the one TuneMV3D was trained on when its training summary says so
    trained_on = (training_summary(paths["tunemv3d"]) or {}).get("synthobjects") or {}
    if args.data_seed is None:
        args.data_seed = trained_on["seed"] if trained_on.get("seed") is not None else 1
    if args.category is None:
        args.category = trained_on.get("category") or "mixed"
    objects = held_out_objects(args.num_captions, args.num_views, args.data_seed, args.category, args.object_offset)
    trained_ids = trained_on.get("object_ids")
    if trained_ids and trained_on.get("seed") == args.data_seed and any(trained_ids[0] <= o.object_id <= trained_ids[1] for o in objects):
        raise SystemExit(f"held-out object ids overlap the objects TuneMV3D was trained on ({trained_ids}): raise --object_offset")
    prompts = [o.caption for o in objects]
    distractors = distractor_captions(args.num_candidates - 1, prompts, args.data_seed, args.category)

    base = TuneMV3DPipeline.from_pretrained_base(paths["base"]).to(args.device)  # only its frozen 2D components are used
    tune = load_tunemv3d(paths["tunemv3d"], args.device)
    if not _has_tunemv3d_modules(paths["tunemv3d"]):
        notes.append(f"{paths['tunemv3d']} has no trained TuneMV3D modules: TuneMV3D is untrained and samples exactly the base's views")
    same_base = same_weights(base.unet, tune.unet)
    if not same_base:
        notes.append("the base model's UNet differs from TuneMV3D's frozen UNet: the comparison is not against TuneMV3D's own base")
    if ablation_label(tune) != "full":
        notes.append(f"the main TuneMV3D model is itself an ablation ({ablation_label(tune)})")
    ablations = {}
    for spec in args.ablation_models:
        label, _, path = spec.rpartition("=")
        folder = locate(path, "tunemv3d")
        pipe = load_tunemv3d(folder, args.device)
        name = f"TuneMV3D [{label or ablation_label(pipe)}]"
        if not same_weights(pipe.unet, tune.unet):
            notes.append(f"{name} has another frozen base UNet than TuneMV3D")
        ablations[name] = (folder, pipe)
    clip = CLIPRPrecision(paths["clip"], device=args.device)

    fit_config = FieldFitConfig(resolution=args.fit_resolution, steps=args.fit_steps)
    sample_kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    resolution = base.unet.config.sample_size * base.vae_scale_factor
    methods = {}
    methods[REFERENCE] = evaluate_method(REFERENCE, lambda o, g: (ground_truth_views(o, resolution), None), objects, args, fit_config, timed=False)
    methods["base (independent)"] = evaluate_method(
        "base", lambda o, g: (sample_independent_views(base, o.caption, o.cameras, generator=g, view_prompts=args.view_prompts, **sample_kw), None),
        objects, args, fit_config)
    for name, pipe in [("TuneMV3D", tune)] + [(k, v[1]) for k, v in ablations.items()]:
        methods[name] = evaluate_method(name, lambda o, g, pipe=pipe: sample_tunemv3d_views(pipe, o.caption, o.cameras, generator=g, **sample_kw),
                                        objects, args, fit_config, pipe)
    for m in methods.values():
        r_precision(clip, m, objects, distractors, args)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["num_threads"] = torch.get_num_threads()
    settings["fit_config"] = dataclasses.asdict(fit_config)
    settings["image_resolution"] = resolution
    settings.update(run_provenance("benchmarks/tunemv3d_eval.py", argv, args.device, t_start))
    results = {
        "settings": settings,
        "models": {
            "base": {"path": paths["base"], "same_unet_as_tunemv3d": same_base},
            "tunemv3d": {"path": paths["tunemv3d"], "label": ablation_label(tune), "training": training_summary(paths["tunemv3d"])},
            "ablations": {k: {"path": v[0], "training": training_summary(v[0])} for k, v in ablations.items()},
            "clip": {"path": paths["clip"]},
        },
        "references": {"sphere_chamfer": sphere_chamfer(objects, args.num_points, seed=args.seed)},
        "methods": {k: {kk: vv for kk, vv in m.items() if kk != "views"} for k, m in methods.items()},
        "notes": notes,
    }
    results["claims"] = claims(results, args)
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(results)
    atomic_write_text(args.out / "results.md", md)
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=2, default=float) + "\n")
    with atomic_path(args.out / "samples.png") as tmp:
        save_samples(tmp, objects, {k: v for k, v in methods.items() if k != REFERENCE}, resolution, args.num_samples_png)
    print(md)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

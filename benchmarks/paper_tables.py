"""Re-run My3DGen's tables in miniature on SynthHeads, where ground truth exists, side by side.

    python benchmarks/paper_tables.py --quick --out outputs/paper_tables_quick      # minutes on a CPU
    python benchmarks/paper_tables.py --out benchmarks/results/paper_tables         # the committed full run

For held-out SynthHeads identities (never seen by the demo prior) with the demo prior as the base:

- Table 1 (inversion): pretrained / full fine-tuning / rank-1 LoRA, each tuned on ``--num_images`` images of the
  identity; unseen test images are W-inverted into each model; DISTS / LPIPS (when their backbone weights are
  available, else n/a) and the MS-SSIM distance, ID similarity at the input view, trainable parameters.
- Table 2 (synthesis): samples in the anchors' convex hull (MyStyle) at random poses: ID_sim (Eq. 2 against the
  training images) and Ojha et al.'s intra-cluster diversity.
- Table 3: inpainting (a box over the lower face) and super-resolution (from 32 x 32) by hull projection: ID_sim.
- Table 4: editing (smile and eye-closing directions fit on projected SynthHeads images with ground-truth labels,
  applied in alpha space at +-``--edit_magnitude`` w_std): ID_sim of the edits.
- Table 5: LoRA rank 1 / 4 / 16.  Table 6: 10 / 50 / 100 training images.  Fig. 9: |dW|/|W0| per block.
- Loss ablation (Table 1's last row): rank-1 LoRA trained with L2 only, against the default L2 + perceptual term
  (LPIPS when its weights are installed, else the 1 - MS-SSIM substitute): what the perceptual term contributes.
- Beyond the paper: novel-view PSNR / SSIM / ID similarity against ground-truth renders at yaw -0.35 / +0.35 for
  every row where the identity's ground truth exists (inversion, inpainting, super-resolution).

Writes ``results.md`` (tables + the list of paper claims with whether each reproduced), ``results.json``,
``importance.png`` and ``samples_*.png`` to ``--out`` and prints the tables. The identity encoder is the
SynthHeads one (the role ArcFace plays for real faces).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from my3dgen_hf import EG3DPipeline
from my3dgen_hf.metrics import id_similarity, intra_cluster_diversity, perceptual_availability, perceptual_loss, psnr
from my3dgen_hf.metrics.importance import lora_importance, plot_importance, weight_change_ratios
from my3dgen_hf.personalization import (
    direction_in_anchor_span,
    edit_in_hull,
    inpaint,
    load_eg3d_dataset,
    personalize,
    project_to_hull,
    project_to_w,
    sample_in_hull,
    super_resolve,
    w_statistics,
)
from my3dgen_hf.synthetic import export_dataset, sample_identity
from my3dgen_hf.synthetic.directions import fit_synthheads_directions
from my3dgen_hf.synthetic.evaluation import evaluate_inversions, novel_view_metrics
from my3dgen_hf.synthetic.identity_encoder import load_synthheads_identity_encoder
from my3dgen_hf.synthetic.synthheads import ImageParams
from my3dgen_hf.utils.export import to_uint8
from my3dgen_hf.utils.io import atomic_write_text
from my3dgen_hf.utils.provenance import provenance_lines, run_provenance

HELD_OUT = 1_000_900  # SynthHeads ids >= 1,000,000 are never used to train the demo prior
# The committed run (about 40 minutes on a 2-core CPU); raise --identities / --test_images / --hull_steps on a bigger machine.
FULL = dict(identities=1, num_images=50, test_images=2, steps=300, ranks=[1, 4, 16], image_counts=[10, 50, 100], eval_steps=60,
            hull_steps=50, num_synth=32, direction_images=48)
QUICK = dict(identities=1, num_images=20, test_images=1, steps=30, ranks=[1, 4], image_counts=[10, 20], eval_steps=10,
             hull_steps=12, num_synth=12, direction_images=16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default="my3dgen-hf/demo-synthheads")
    p.add_argument("--out", type=Path, default=Path("outputs/paper_tables"), help="tables, JSON and plots")
    p.add_argument("--work_dir", type=Path, default=None, help="datasets and projection caches (default: OUT/work)")
    p.add_argument("--quick", action="store_true", help="a small run that finishes in minutes on a CPU")
    for k, v in FULL.items():
        p.add_argument(f"--{k}", type=int, nargs="+" if isinstance(v, list) else None, default=None, help=f"full: {v}, quick: {QUICK[k]}")
    p.add_argument("--edit_magnitude", type=float, default=0.5, help="edit size in units of the prior's w_std")
    p.add_argument("--num_threads", type=int, default=None)
    args = p.parse_args(argv)
    args.work_dir = args.work_dir or args.out / "work"
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.num_images not in args.image_counts:
        args.image_counts = sorted(set(args.image_counts) | {args.num_images})
    if 1 not in args.ranks:
        args.ranks = [1, *args.ranks]
    return args


# ----------------------------------------------------------------------------------------------------- setup
def identity_data(out: Path, iid: int, num_images: int, test_images: int):
    """Training and test images of one held-out identity (EG3D dataset layout) and the test ground truth."""
    data = out / "data" / str(iid)
    if not (data / "dataset.json").exists():
        export_dataset(data, num_identities=1, images_per_identity=num_images, resolution=128, seed=0,
                       test_images_per_identity=test_images, identity_offset=iid)
    folder = next(p for p in sorted(data.iterdir()) if p.is_dir())
    images, labels, _ = load_eg3d_dataset(folder, num_images=num_images)
    test_images, test_labels, test_names = load_eg3d_dataset(folder / "test")
    meta = json.loads((folder / "meta.json").read_text())
    params = {m["file"]: m["params"] for m in meta["test_images"]}
    test_params = [ImageParams.from_dict(params[Path(n).name]) for n in test_names]
    return images, labels, test_images, test_labels, test_params


def lower_face_mask(resolution: int) -> torch.Tensor:
    """1 = known pixel, 0 = hole: a box over the nose and mouth of a centred head."""
    m = torch.ones(1, 1, resolution, resolution)
    r = resolution
    m[..., int(0.5 * r) : int(0.8 * r), int(0.3 * r) : int(0.7 * r)] = 0
    return m


def model_specs(args):
    specs = [("pretrained", dict(kind="pretrained")), ("full_ft", dict(kind="full", n=args.num_images)), ("lora_r1", dict(kind="lora", rank=1, n=args.num_images))]
    specs += [(f"lora_r{r}", dict(kind="lora", rank=r, n=args.num_images)) for r in args.ranks if r != 1]
    specs += [(f"lora_r1_n{n}", dict(kind="lora", rank=1, n=n)) for n in args.image_counts if n != args.num_images]
    specs.append(("lora_r1_l2only", dict(kind="lora", rank=1, n=args.num_images, perceptual_weight=0.0)))  # what P (or its substitute) adds
    return specs


# ---------------------------------------------------------------------------------------------- per model
def downstream(pipe, name, anchors, refs, test_images, test_labels, test_params, identity, encoder, directions, w_std, args, distance):
    """Tables 2-4 for one model (hull synthesis, inpainting, super-resolution, editing)."""
    row = {}
    samples = sample_in_hull(pipe, anchors, num_samples=args.num_synth, seed=1)
    row["synth.id_sim"] = id_similarity(samples.images, refs, encoder).mean
    row["synth.diversity"] = intra_cluster_diversity(samples.images, refs, distance).score
    PIL.Image.fromarray(np.concatenate(list(to_uint8(samples.images[:8])), axis=1)).save(args.out / f"samples_{name}.png")

    R = pipe.generator.img_resolution
    mask = lower_face_mask(R)
    spans = {attr: direction_in_anchor_span(d, anchors) for attr, d in directions.items()}  # gamma, cosine per attribute
    acc = {}
    for img, c, p in zip(test_images, test_labels, test_params):
        img, c = img[None], c[None]
        inp = inpaint(pipe, img, c, mask, anchors, steps=args.hull_steps, progress=False)
        acc.setdefault("inpaint.id_sim", []).append(id_similarity(inp.output.cpu(), refs, encoder).mean)
        hole = (1 - mask).bool().expand_as(img)
        mse_hole = float((inp.output.cpu() - img)[hole].square().mean())
        acc.setdefault("inpaint.psnr_hole", []).append(10 * np.log10(4.0 / max(mse_hole, 1e-12)))  # range [-1, 1]: peak^2 = 4
        for k, v in novel_view_metrics(pipe, inp.ws, identity, p, encoder).items():
            acc.setdefault(f"inpaint.{k}", []).append(v)
        low = torch.nn.functional.interpolate(img, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        sr = super_resolve(pipe, low, c, anchors, steps=args.hull_steps, progress=False)
        acc.setdefault("sr.id_sim", []).append(id_similarity(sr.output.cpu(), refs, encoder).mean)
        acc.setdefault("sr.psnr", []).append(psnr(sr.output.cpu().clamp(-1, 1), img).item())
        for k, v in novel_view_metrics(pipe, sr.ws, identity, p, encoder).items():
            acc.setdefault(f"sr.{k}", []).append(v)
        proj = project_to_hull(pipe, img, c, anchors, steps=args.hull_steps, progress=False)
        for attr, (gamma, cos) in spans.items():
            acc.setdefault(f"edit.{attr}.span_cosine", []).append(float(cos.mean()))
            m = args.edit_magnitude * w_std
            edits = edit_in_hull(proj.alphas, gamma, anchors, [-m, m], policy="continue")
            with torch.no_grad():
                out = pipe(ws=edits.ws, yaw=0.0, output_type="pt").images.cpu()
            acc.setdefault(f"edit.{attr}.id_sim", []).append(id_similarity(out, refs, encoder).mean)
    row.update({k: float(np.mean(v)) for k, v in acc.items()})
    return row


def run_identity(args, k, prior, encoder, directions, w_std, distances, distance, importance):
    iid = HELD_OUT + k
    identity = sample_identity(0, iid)
    n_max = max(args.image_counts)
    images, labels, test_images, test_labels, test_params = identity_data(args.work_dir, iid, n_max, args.test_images)
    anchors_all = project_to_w(prior, images, labels, cache_dir=args.work_dir / "anchor_cache", progress=False)
    refs = images[: args.num_images]
    rows = {}
    for name, spec in model_specs(args):
        t0 = time.time()
        pipe = copy.deepcopy(prior)
        n = spec.get("n", args.num_images)
        row = {"trainable": 0, "train_s": 0.0}
        if spec["kind"] != "pretrained":
            res = personalize(pipe, images[:n], labels[:n], anchors_all[:n], adapter_name="person", rank=spec.get("rank", 1), steps=args.steps,
                              full_finetune=spec["kind"] == "full", perceptual_weight=spec.get("perceptual_weight", 1.0), progress=False,
                              log=lambda *a: None)
            row["trainable"] = res.summary.get("trainable_parameters", 0)
            row["train_s"] = round(time.time() - t0, 1)
            if name in ("lora_r1", "full_ft"):
                ratios = (weight_change_ratios(prior.generator.state_dict(), pipe.generator.state_dict()) if spec["kind"] == "full"
                          else lora_importance(pipe.generator))
                for block, v in ratios.items():
                    importance.setdefault(name, {}).setdefault(block, []).append(v)
        mean, _ = evaluate_inversions(pipe, test_images, test_labels, test_params, identity, encoder, steps=args.eval_steps,
                                      cache_dir=args.work_dir / "eval_cache" / name, distances=distances)
        row.update({f"inv.{key}": v for key, v in mean.items()})
        if name in ("pretrained", "full_ft", "lora_r1"):
            row.update(downstream(pipe, name, anchors_all[: args.num_images], refs, test_images, test_labels, test_params, identity, encoder,
                                  directions, w_std, args, distance))
        row["wall_s"] = round(time.time() - t0, 1)
        rows[name] = row
        print(f"[identity {iid}] {name}: " + json.dumps({k2: round(v, 4) if isinstance(v, float) else v for k2, v in row.items()}), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- report
def fmt(v, nd=4):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{v:,.0f}" if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 1000) else f"{v:.{nd}f}"


def table(title, header, rows):
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report(args, mean, avail, directions, importance, meta) -> str:
    g = lambda model, key: mean.get(model, {}).get(key)  # noqa: E731
    nv = ["inv.psnr_novel", "inv.ssim_novel", "inv.id_novel"]
    names = {"pretrained": "Pretrained", "full_ft": "Full fine-tuning", "lora_r1": "LoRA rank 1 (ours)", "lora_r1_l2only": "LoRA rank 1, L2 only (ablation)"}
    perceptual_cols = [("dists", "DISTS"), ("lpips-alex", "LPIPS")]
    out = [f"# My3DGen tables on SynthHeads ({'quick' if args.quick else 'full'} mode)", "",
           *provenance_lines(meta),
           f"Held-out identities: {args.identities} (SynthHeads ids {HELD_OUT}..), {args.num_images} training images, {args.test_images} unseen test "
           f"images each, {args.steps} tuning steps, {args.eval_steps} inversion steps, {args.hull_steps} hull-projection steps. ID_sim: SynthHeads "
           "identity encoder. Perceptual metrics: " + "; ".join(f"{k}: {'available' if v is None else 'n/a (' + v.split('.')[0] + ')'}" for k, v in avail.items()), ""]
    rows = []
    for m in ("pretrained", "full_ft", "lora_r1", "lora_r1_l2only"):
        rows.append([names[m], *[fmt(g(m, f"inv.{k}_input")) for k, _ in perceptual_cols], fmt(g(m, "inv.ms_ssim_input")), fmt(g(m, "inv.id_input")),
                     fmt(g(m, "inv.psnr_input"), 2), fmt(g(m, "trainable")), fmt(g(m, "inv.psnr_novel"), 2), fmt(g(m, "inv.ssim_novel")), fmt(g(m, "inv.id_novel"))])
    out.append(table("Table 1 - inversion of unseen images", ["model", "DISTS", "LPIPS", "1-MS-SSIM", "ID_sim", "PSNR", "trainable params",
                                                               "novel PSNR", "novel SSIM", "novel ID_sim"], rows))
    rows = [[names[m], fmt(g(m, "synth.id_sim")), fmt(g(m, "synth.diversity"))] for m in ("pretrained", "full_ft", "lora_r1")]
    out.append(table(f"Table 2 - synthesis in the personal convex hull ({args.num_synth} samples; diversity with the {meta['diversity_distance']} distance)",
                     ["model", "ID_sim", "diversity"], rows))
    rows = [[names[m], fmt(g(m, "inpaint.id_sim")), fmt(g(m, "inpaint.psnr_hole"), 2), fmt(g(m, "inpaint.psnr_novel"), 2), fmt(g(m, "sr.id_sim")),
             fmt(g(m, "sr.psnr"), 2), fmt(g(m, "sr.psnr_novel"), 2)] for m in ("pretrained", "full_ft", "lora_r1")]
    out.append(table("Table 3 - inpainting (lower-face box) and super-resolution (32 -> 128) by hull projection",
                     ["model", "inpaint ID_sim", "PSNR in hole", "inpaint novel PSNR", "SR ID_sim", "SR PSNR", "SR novel PSNR"], rows))
    attrs = list(directions)
    rows = [[names[m], *[fmt(g(m, f"edit.{a}.id_sim")) for a in attrs]] for m in ("pretrained", "full_ft", "lora_r1")]
    acc = ", ".join(f"{a}: held-out accuracy {fmt(d.accuracy, 3)}" for a, d in directions.items())
    out.append(table(f"Table 4 - editing in alpha space (+-{args.edit_magnitude} w_std; boundaries {acc})", ["model", *[f"{a} ID_sim" for a in attrs]], rows))
    rank_models = [f"lora_r{r}" for r in args.ranks]
    rows = [[m.replace("lora_", "LoRA "), fmt(g(m, "trainable")), fmt(g(m, "inv.id_input")), *[fmt(g(m, k), 2 if "psnr" in k else 4) for k in nv]] for m in rank_models]
    rows.append(["Full fine-tuning", fmt(g("full_ft", "trainable")), fmt(g("full_ft", "inv.id_input")), *[fmt(g("full_ft", k), 2 if "psnr" in k else 4) for k in nv]])
    out.append(table("Table 5 - LoRA rank", ["model", "trainable params", "ID_sim", "novel PSNR", "novel SSIM", "novel ID_sim"], rows))
    count_models = [("lora_r1" if n == args.num_images else f"lora_r1_n{n}", n) for n in args.image_counts]
    rows = [[n, fmt(g(m, "inv.id_input")), *[fmt(g(m, k), 2 if "psnr" in k else 4) for k in nv]] for m, n in count_models]
    out.append(table("Table 6 - number of training images (LoRA rank 1)", ["images", "ID_sim", "novel PSNR", "novel SSIM", "novel ID_sim"], rows))
    if importance:
        blocks = list(next(iter(importance.values())))
        rows = [[b, *[fmt(float(np.mean(importance[m][b]))) for m in importance]] for b in blocks]
        out.append(table("Fig. 9 - |dW|/|W0| per block (importance.png)", ["block", *importance], rows))
    out.append("## Paper claims, here\n")
    out += [f"- {'REPRODUCED' if ok else 'NOT reproduced'}: {text}" for text, ok in claims(args, mean)]
    return "\n".join(out) + "\n"


def claims(args, mean):
    g = lambda model, key: mean.get(model, {}).get(key, float("nan"))  # noqa: E731
    lora, full, pre = "lora_r1", "full_ft", "pretrained"
    out = []
    d = g(lora, "inv.id_input") - g(full, "inv.id_input")
    out.append((f"Table 1: rank-1 LoRA improves inversion ID_sim over the pretrained prior ({g(pre, 'inv.id_input'):.3f} -> {g(lora, 'inv.id_input'):.3f})",
                g(lora, "inv.id_input") > g(pre, "inv.id_input")))
    out.append((f"Table 1: rank-1 LoRA within 0.01 ID_sim of full fine-tuning (LoRA - full = {d:+.3f}) with "
                f"{100 * g(lora, 'trainable') / max(g(full, 'trainable'), 1):.1f}% of its trainable parameters", d >= -0.01))
    out.append((f"Beyond the paper: LoRA improves novel-view PSNR over the prior ({g(pre, 'inv.psnr_novel'):.2f} -> {g(lora, 'inv.psnr_novel'):.2f} dB)",
                g(lora, "inv.psnr_novel") > g(pre, "inv.psnr_novel")))
    for key, label in (("synth.id_sim", "Table 2: synthesis ID_sim"), ("inpaint.id_sim", "Table 3: inpainting ID_sim"), ("sr.id_sim", "Table 3: super-resolution ID_sim"),
                       ("edit.smile.id_sim", "Table 4: editing (smile) ID_sim")):
        out.append((f"{label}: LoRA above the pretrained prior and within 0.01 of full fine-tuning "
                    f"(pre {g(pre, key):.3f}, full {g(full, key):.3f}, LoRA {g(lora, key):.3f})",
                    g(lora, key) > g(pre, key) and g(lora, key) >= g(full, key) - 0.01))
    out.append((f"Table 2: LoRA synthesis diversity comparable to full fine-tuning (within 20%: full {g(full, 'synth.diversity'):.4f}, "
                f"LoRA {g(lora, 'synth.diversity'):.4f})", abs(g(lora, "synth.diversity") - g(full, "synth.diversity")) <= 0.2 * abs(g(full, "synth.diversity"))))
    ranks = [g(f"lora_r{r}", "inv.id_input") for r in args.ranks]
    out.append((f"Table 5: rank 1 is enough (ID_sim at ranks {args.ranks}: {', '.join(f'{v:.3f}' for v in ranks)}; rank 1 within 0.01 of the best)",
                ranks[0] >= max(ranks) - 0.01))
    counts = [g("lora_r1" if n == args.num_images else f"lora_r1_n{n}", "inv.id_input") for n in args.image_counts]
    out.append((f"Table 6: more training images help (ID_sim at {args.image_counts} images: {', '.join(f'{v:.3f}' for v in counts)})",
                all(b >= a - 0.005 for a, b in zip(counts, counts[1:])) and counts[-1] > counts[0]))
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prior = EG3DPipeline.from_pretrained(args.base_model)
    prior.set_progress_bar_config(disable=True)
    encoder = load_synthheads_identity_encoder().eval()
    avail = {k: v for k, v in perceptual_availability().items() if k in ("lpips-alex", "dists")}
    distances = {"ms_ssim": perceptual_loss("ms-ssim", reduction="none")}
    for kind in ("dists", "lpips-alex"):
        if avail[kind] is None:
            distances[kind] = perceptual_loss(kind, reduction="none")
    distance = distances.get("lpips-alex", distances["ms_ssim"])
    _, w_std = w_statistics(prior)
    directions = fit_synthheads_directions(prior, args.direction_images, args.eval_steps, args.work_dir / "direction_cache")
    importance, per_identity = {}, []
    for k in range(args.identities):
        per_identity.append(run_identity(args, k, prior, encoder, directions, w_std, distances, distance, importance))
    mean = {m: {key: float(np.mean([r[m][key] for r in per_identity])) for key in per_identity[0][m]} for m in per_identity[0]}
    for m in mean:
        mean[m]["trainable"] = int(round(mean[m]["trainable"]))
    if importance:
        for name, ratios in importance.items():
            plot_importance({b: float(np.mean(v)) for b, v in ratios.items()}, args.out / f"importance_{name}.png", title=f"|dW|/|W0| per block ({name})")
    meta = {**run_provenance("benchmarks/paper_tables.py", argv, "CPU", t0),
            "diversity_distance": "LPIPS-alex" if "lpips-alex" in distances else "1 - MS-SSIM (LPIPS weights not available)"}
    md = report(args, mean, avail, directions, importance, meta)
    atomic_write_text(args.out / "results.md", md)
    atomic_write_text(args.out / "results.json", json.dumps({"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                                        "mean": mean, "per_identity": per_identity,
                                                        "directions": {a: {"accuracy": d.accuracy} for a, d in directions.items()},
                                                        "importance": {m: {b: float(np.mean(v)) for b, v in r.items()} for m, r in importance.items()},
                                                        "claims": [{"claim": t, "reproduced": bool(ok)} for t, ok in claims(args, mean)]}, indent=2))
    print(md)
    return mean


if __name__ == "__main__":
    main()

"""The paper's Table 1 claim on SynthHeads, with ground truth: does a rank-1 LoRA adapter make the demo prior keep
a held-out identity (test ID similarity and novel-view PSNR up over the prior) and land within 0.01 ID_sim of
full fine-tuning?

    python benchmarks/personalization_claim.py --out outputs/personalization_claim [--identities 1] [--steps 300]

Per identity: 50 training images (EG3D dataset layout), tuning with the default settings, then for each unseen test
image: W-space inversion with the model under test, ID similarity (SynthHeads identity encoder) of the
reconstruction vs the input, and PSNR/SSIM/ID of renders at yaw -0.35/+0.35 vs ground-truth renders of the same
head and expression. Writes results.json / results.md and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from my3dgen_hf import EG3DPipeline
from my3dgen_hf.metrics import psnr, ssim
from my3dgen_hf.personalization import load_eg3d_dataset, personalize, project_to_w
from my3dgen_hf.synthetic import export_dataset, render, sample_identity
from my3dgen_hf.synthetic.identity_encoder import load_synthheads_identity_encoder
from my3dgen_hf.synthetic.synthheads import ImageParams

HELD_OUT = 1_000_900


def to_tensor(img):
    return torch.from_numpy(img).permute(2, 0, 1).float()[None] / 127.5 - 1


def evaluate(pipe, encoder, test_images, test_labels, test_params, identity, steps, cache_dir):
    rows = []
    for img, c, ip in zip(test_images, test_labels, test_params):
        ws = project_to_w(pipe, img[None], c[None], steps=steps, cache_dir=cache_dir, progress=False)
        with torch.no_grad():
            row = _views(pipe, encoder, img, c, ip, identity, ws)
        rows.append(row)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _views(pipe, encoder, img, c, ip, identity, ws):
    """ID of the reconstruction vs the input; PSNR/SSIM/ID of yaw -0.35/+0.35 renders vs ground truth."""
    rec = pipe.generator.synthesis(ws, c[None], noise_mode="const")["image"].clamp(-1, 1)
    row = {"id_input": [float((encoder(rec) * encoder(img[None])).sum())]}
    for yaw in (-0.35, 0.35):
        gt_ip = dataclasses.replace(ip, yaw=yaw)
        gt = to_tensor(render(identity, gt_ip, resolution=pipe.generator.img_resolution))
        nv = pipe.generator.synthesis(ws, torch.from_numpy(gt_ip.camera_label()).float()[None], noise_mode="const")["image"].clamp(-1, 1)
        row.setdefault("psnr_novel", []).append(psnr(nv, gt).item())
        row.setdefault("ssim_novel", []).append(ssim(nv, gt).item())
        row.setdefault("id_novel", []).append(float((encoder(nv) * encoder(gt)).sum()))
    return {k: float(np.mean(v)) for k, v in row.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default="my3dgen-hf/demo-synthheads")
    p.add_argument("--out", type=Path, default=Path("outputs/personalization_claim"))
    p.add_argument("--identities", type=int, default=1)
    p.add_argument("--num_images", type=int, default=50)
    p.add_argument("--test_images", type=int, default=6)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval_projection_steps", type=int, default=60)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    encoder = load_synthheads_identity_encoder().eval()
    results, t0 = [], time.time()
    for k in range(args.identities):
        iid = HELD_OUT + k
        data = args.out / f"data_{iid}"
        if not (data / "dataset.json").exists():
            export_dataset(data, num_identities=1, images_per_identity=args.num_images, resolution=128, seed=0,
                           test_images_per_identity=args.test_images, identity_offset=iid)
        folder = next(p for p in data.iterdir() if p.is_dir())
        images, labels, _ = load_eg3d_dataset(folder, num_images=args.num_images)
        test_images, test_labels, test_names = load_eg3d_dataset(folder / "test")
        meta = json.loads((folder / "meta.json").read_text())
        params = {m["file"]: m["params"] for m in meta["test_images"]}
        test_params = [ImageParams.from_dict(params[Path(n).name]) for n in test_names]
        identity = sample_identity(0, iid)
        row = {"identity": iid}
        for mode in ("prior", "lora_rank1", "full_finetune"):
            pipe = EG3DPipeline.from_pretrained(args.base_model)
            if mode != "prior":
                anchors = project_to_w(pipe, images, labels, cache_dir=args.out / "anchor_cache", progress=False)
                t = time.time()
                res = personalize(pipe, images, labels, anchors, adapter_name="person", rank=1, steps=args.steps,
                                  full_finetune=mode == "full_finetune")
                row[f"{mode}.train_s"] = round(time.time() - t, 1)
                row[f"{mode}.trainable"] = res.summary.get("trainable_parameters")
            for key, v in evaluate(pipe, encoder, test_images, test_labels, test_params, identity, args.eval_projection_steps,
                                   args.out / f"eval_cache_{mode}").items():
                row[f"{mode}.{key}"] = v
            print(json.dumps(row), flush=True)
        results.append(row)
    keys = [k for k in results[0] if k != "identity"]
    mean = {k: float(np.mean([r[k] for r in results if r.get(k) is not None])) for k in keys if all(isinstance(r.get(k), (int, float)) for r in results)}
    (args.out / "results.json").write_text(json.dumps({"rows": results, "mean": mean, "args": {k: str(v) for k, v in vars(args).items()},
                                                        "wall_time_s": round(time.time() - t0, 1)}, indent=2))
    lines = ["| model | test ID_sim (input view) | novel-view PSNR | novel-view SSIM | novel-view ID_sim | trainable |", "|---|---|---|---|---|---|"]
    for mode in ("prior", "lora_rank1", "full_finetune"):
        lines.append(f"| {mode} | {mean[mode + '.id_input']:.4f} | {mean[mode + '.psnr_novel']:.2f} | {mean[mode + '.ssim_novel']:.4f} | "
                     f"{mean[mode + '.id_novel']:.4f} | {mean.get(mode + '.trainable', 0):,.0f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

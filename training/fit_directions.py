#!/usr/bin/env python
"""Fit semantic edit directions (smile, eyes closed) of a SynthHeads-trained prior and store them with the model.

    python training/fit_directions.py --model outputs/demo-prior/pipeline        # -> <model>/directions/*.safetensors

InterFaceGAN needs latent codes labelled with the attribute; on SynthHeads the labels are ground truth: images of
training identities rendered with and without the attribute are projected into W of the prior and a linear boundary
is fit between the two sets (``my3dgen_hf.synthetic.directions``). The app's Edit tab and
``my3dgen_hf.personalization.load_directions(model_folder)`` read them. For priors of real faces, compute directions
with ``direction_from_classifier`` and an attribute classifier of your own, or load InterFaceGAN ``.npy`` boundaries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from my3dgen_hf import EG3DPipeline
from my3dgen_hf.personalization import save_directions
from my3dgen_hf.synthetic.directions import ATTRIBUTES, fit_synthheads_directions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a local EG3DPipeline folder (directions are written into it)")
    p.add_argument("--num_images", type=int, default=96, help="labelled images per attribute (half with it)")
    p.add_argument("--projection_steps", type=int, default=100)
    p.add_argument("--attributes", nargs="+", default=list(ATTRIBUTES), choices=list(ATTRIBUTES))
    p.add_argument("--cache_dir", type=Path, default=None)
    p.add_argument("--num_threads", type=int, default=None)
    args = p.parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        p.error(f"{args.model} is not an EG3DPipeline folder (no model_index.json)")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    pipe = EG3DPipeline.from_pretrained(args.model)
    directions = fit_synthheads_directions(pipe, args.num_images, args.projection_steps, args.cache_dir, args.attributes)
    for path, (name, d) in zip(save_directions(args.model, directions), directions.items()):
        print(f"{name}: held-out accuracy {d.accuracy:.3f} -> {path}")


if __name__ == "__main__":
    main()

"""Render-time overhead of a rank-1 identity adapter on the full-size EG3D generator, and its size on disk.

    python benchmarks/lora_overhead.py [--device cuda] [--neural-rendering-resolution 128] [--repeats 3]

Prints, measured side by side in one run: base render time, LoRA-unfused / base and fused / base ratios
(goals <= 1.03 and 1.00), and the adapter file size at rank 1 in fp32 and fp16 (goals <= 1 MB and <= 0.5 MB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_speed import FFHQ512_KWARGS  # noqa: E402

from my3dgen_hf import EG3DGenerator, EG3DPipeline  # noqa: E402
from my3dgen_hf.lora import count_trainable_parameters, get_adapter_state_dict  # noqa: E402


def adapter_sizes(pipe, name: str) -> dict[str, int]:
    """Bytes of pytorch_lora_weights.safetensors in fp32 and fp16."""
    from safetensors.torch import save_file

    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = pipe.save_lora_weights(tmp, adapter_name=name)
        sizes["fp32"] = path.stat().st_size
        sd = {k: v.half().contiguous() for k, v in get_adapter_state_dict(pipe.generator, name, include_extras=False).items()}
        for k, v in pipe._extras_deltas().get(name, {}).items():
            sd[f"extras.{k}"] = v.half().contiguous()
        save_file(sd, str(Path(tmp) / "fp16.safetensors"))
        sizes["fp16"] = (Path(tmp) / "fp16.safetensors").stat().st_size
    return sizes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--neural-rendering-resolution", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decomposition", default="im2col", choices=["im2col", "my3dgen", "loralib"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    G = EG3DGenerator(**FFHQ512_KWARGS, neural_rendering_resolution=args.neural_rendering_resolution).eval().requires_grad_(False).to(device)
    pipe = EG3DPipeline(generator=G)
    z = torch.randn(1, 512, device=device)
    c = pipe.camera(0.0, 0.0)
    import copy
    import time

    base_G = copy.deepcopy(G)  # the plain prior, timed side by side
    pipe.add_identity_adapter("person", rank=1, decomposition=args.decomposition)
    with torch.no_grad():
        for n, prm in G.named_parameters():
            if "lora_" in n:
                prm.normal_(0, 0.01)
    counts = count_trainable_parameters(G)
    fused_pipe = EG3DPipeline(generator=copy.deepcopy(G))
    fused_pipe.fuse_lora()

    def once(model):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(z, c, truncation_psi=0.7)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    times = {"base": [], "unfused": [], "fused": []}
    with torch.no_grad():
        for model in (base_G, G, fused_pipe.generator):  # warm-up
            once(model)
        for _ in range(args.repeats):  # interleaved so that machine load drifts cancel
            times["base"].append(once(base_G))
            times["unfused"].append(once(G))
            times["fused"].append(once(fused_pipe.generator))
    base, unfused, fused = (min(times[k]) for k in ("base", "unfused", "fused"))
    sizes = adapter_sizes(pipe, "person")
    print(f"device: {device}; full ffhq512 generator, neural rendering {args.neural_rendering_resolution}, rank 1 ({args.decomposition})")
    print(f"trainable parameters: {counts['total']:,} (LoRA {counts['lora']:,} + extras {counts['extras']:,}) of {counts['base_total']:,}")
    print(f"base render: {base:.3f} s")
    print(f"LoRA unfused / base: {unfused / base:.3f}   (goal <= 1.03)")
    print(f"LoRA fused / base:   {fused / base:.3f}   (goal 1.00)")
    print(f"adapter on disk: fp32 {sizes['fp32'] / 1e6:.3f} MB (goal <= 1 MB), fp16 {sizes['fp16'] / 1e6:.3f} MB (goal <= 0.5 MB)")


if __name__ == "__main__":
    main()

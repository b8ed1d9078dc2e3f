"""Time per 512x512 image and peak memory of the full-size EG3D generator (ffhq512-128 structure).

    python benchmarks/render_speed.py [--device cuda] [--neural-rendering-resolution 128] [--repeats 3]
    python benchmarks/render_speed.py --compare-original /path/to/eg3d/checkout

With ``--compare-original`` the original NVlabs implementation (``<DIR>/eg3d`` on sys.path, never committed
here) is built with the same weights and timed in the same process, and the ratio ours/original is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from my3dgen_hf import EG3DGenerator
from my3dgen_hf.eg3d.camera import sample_camera_label

FFHQ512_KWARGS = dict(
    z_dim=512, c_dim=25, w_dim=512, img_resolution=512, img_channels=3, sr_num_fp16_res=4,
    mapping_kwargs={"num_layers": 2}, channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
    fused_modconv_default="inference_only",
    sr_kwargs={"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def time_render(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


def build_original(eg3d_dir: Path, ours: EG3DGenerator, nrr: int, device):
    sys.path.insert(0, str(eg3d_dir / "eg3d") if (eg3d_dir / "eg3d").is_dir() else str(eg3d_dir))
    from training.triplane import TriPlaneGenerator  # noqa: E402  (user-supplied checkout)

    kwargs = dict(FFHQ512_KWARGS)
    kwargs["rendering_kwargs"] = dict(ours.rendering_kwargs)
    G = TriPlaneGenerator(**kwargs).eval().requires_grad_(False).to(device)
    G.load_state_dict(ours.state_dict(), strict=True)
    G.neural_rendering_resolution = nrr
    return G


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--neural-rendering-resolution", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--compare-original", type=Path, default=None, help="checkout of NVlabs/eg3d to time side by side")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    G = EG3DGenerator(**FFHQ512_KWARGS, neural_rendering_resolution=args.neural_rendering_resolution).eval().requires_grad_(False).to(device)
    z = torch.randn(args.batch_size, 512, device=device)
    c = sample_camera_label(0.0, 0.0, device=device).repeat(args.batch_size, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with torch.no_grad():
        ours = time_render(lambda: G(z, c, truncation_psi=0.7), args.repeats, device) / args.batch_size
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})")
    print(f"parameters: {sum(p.numel() for p in G.parameters()):,}")
    print(f"ours: {ours:.3f} s per 512x512 image (neural rendering {args.neural_rendering_resolution}), peak memory {peak_memory_mb(device):.0f} MiB")
    if args.compare_original is not None:
        orig = build_original(args.compare_original, G, args.neural_rendering_resolution, device)
        with torch.no_grad():
            ref = time_render(lambda: orig(z, c, truncation_psi=0.7, noise_mode="const"), args.repeats, device) / args.batch_size
        print(f"original: {ref:.3f} s per image")
        print(f"ratio ours/original: {ours / ref:.3f}")


if __name__ == "__main__":
    main()

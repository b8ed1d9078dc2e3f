"""``my3dgen-synthheads``: export a SynthHeads dataset in the EG3D layout."""

from __future__ import annotations

import argparse
import time

from .synthheads import export_dataset


def _range(text: str):
    """'0.6' -> 0.6 (symmetric half range); '-0.2,0.5' -> (-0.2, 0.5)."""
    parts = [float(v) for v in text.split(",")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected R or LO,HI, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="my3dgen-synthheads",
        description="Render SynthHeads (procedural 3D cartoon heads with exact EG3D camera labels and ground truth) "
        "into EG3D dataset folders: OUT/id_XXXXX/img_XXXXX.png + dataset.json + meta.json, OUT/dataset.json, "
        "OUT/identities.json.",
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--identities", type=int, required=True, help="number of identities")
    ap.add_argument("--images-per-identity", type=int, required=True, help="training images per identity")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="world seed (same seed -> byte-identical images)")
    ap.add_argument("--test-images-per-identity", type=int, default=0, help="held-out views in id_XXXXX/test/")
    ap.add_argument("--identity-offset", type=int, default=0, help="first identity id (for disjoint identity sets)")
    ap.add_argument("--workers", type=int, default=1, help="rendering processes")
    ap.add_argument("--yaw-range", type=_range, default=0.6, help="R (uniform in [-R, R]) or LO,HI, radians")
    ap.add_argument("--pitch-range", type=_range, default=0.35, help="R or LO,HI, radians (positive = camera lower)")
    ap.add_argument("--occluder-prob", type=float, default=0.1)
    ap.add_argument("--test-yaw-range", type=_range, default=None, help="default: the training range")
    ap.add_argument("--test-pitch-range", type=_range, default=None, help="default: the training range")
    ap.add_argument("--test-occluder-prob", type=float, default=0.0)
    ap.add_argument("--supersample", type=int, default=2, help="anti-aliasing rays per pixel side (1 = off)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    info = export_dataset(
        args.out,
        num_identities=args.identities,
        images_per_identity=args.images_per_identity,
        resolution=args.resolution,
        seed=args.seed,
        test_images_per_identity=args.test_images_per_identity,
        identity_offset=args.identity_offset,
        yaw_range=args.yaw_range,
        pitch_range=args.pitch_range,
        occluder_prob=args.occluder_prob,
        test_yaw_range=args.test_yaw_range,
        test_pitch_range=args.test_pitch_range,
        test_occluder_prob=args.test_occluder_prob,
        supersample=args.supersample,
        workers=args.workers,
        progress=not args.no_progress,
    )
    n = info["num_identities"] * (info["images_per_identity"] + info["test_images_per_identity"])
    dt = time.perf_counter() - t0
    print(f"wrote {n} images of {info['num_identities']} identities to {args.out} in {dt:.1f}s ({n / max(dt, 1e-9):.1f} img/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

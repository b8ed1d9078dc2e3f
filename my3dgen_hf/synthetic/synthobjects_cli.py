"""``my3dgen-synthobjects``: export a SynthObjects dataset (captioned chairs and tables) in the TuneMV3D layout."""

from __future__ import annotations

import argparse
import time

from .synthobjects import CAMERA_DISTANCE, ELEVATION_RANGE, FOV_DEGREES, export_dataset


def _elevation(text: str) -> tuple[float, float]:
    """'20' -> (20, 20); '5,40' -> (5, 40)."""
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return (parts[0], parts[0])
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"expected DEG or LO,HI in degrees, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="my3dgen-synthobjects",
        description="Render SynthObjects (procedural chairs and tables with captions, exact cameras and ground-truth "
        "geometry) into the TuneMV3D multi-view layout: OUT/<object_id>/{000.png..., cameras.json, caption.txt} and "
        "OUT/meta.json (every object's parameters and caption). Train with "
        "`training/train_tunemv3d.py --train_data_dir OUT`.",
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--objects", type=int, required=True, help="number of objects")
    ap.add_argument("--views", type=int, required=True, help="views per object (>= num_views + num_novel_views of training)")
    ap.add_argument("--resolution", type=int, default=64, help="image size in pixels (>= 8)")
    ap.add_argument("--seed", type=int, default=0, help="world seed (same seed -> identical images)")
    ap.add_argument("--category", choices=("chair", "table", "mixed"), default="chair")
    ap.add_argument("--object-offset", type=int, default=0, help="first object id (for disjoint object sets)")
    ap.add_argument("--supersample", type=int, default=2, help="anti-aliasing rays per pixel side (1 = off)")
    ap.add_argument("--elevation", type=_elevation, default=ELEVATION_RANGE,
                    help="camera elevation in degrees: DEG, or LO,HI for uniform per view (default %(default)s)")
    ap.add_argument("--camera-distance", type=float, default=CAMERA_DISTANCE)
    ap.add_argument("--fov", type=float, default=FOV_DEGREES, help="field of view in degrees")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        info = export_dataset(
            args.out,
            num_objects=args.objects,
            num_views=args.views,
            resolution=args.resolution,
            seed=args.seed,
            category=args.category,
            object_offset=args.object_offset,
            supersample=args.supersample,
            elevation_range=args.elevation,
            camera_distance=args.camera_distance,
            fov=args.fov,
            progress=not args.no_progress,
        )
    except ValueError as e:
        ap.error(str(e))
    n = args.objects * info["num_views"]
    dt = time.perf_counter() - t0
    print(f"wrote {n} views of {args.objects} objects to {args.out} in {dt:.1f}s ({n / max(dt, 1e-9):.1f} views/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

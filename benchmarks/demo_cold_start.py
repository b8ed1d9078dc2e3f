"""Fresh-process time of the embedded demo, next to the floor its dependencies set.

    python benchmarks/demo_cold_start.py [--runs 5] [--out benchmarks/results/demo_cold_start]

Runs each command below in a fresh interpreter (HF_HUB_OFFLINE=1: no network), interleaved round by round so that
a busy CPU slows all of them alike, and prints the median wall time of each and its ratio to the demo:

- ``python -c pass`` (interpreter start and exit),
- ``import torch``,
- ``from diffusers import DiffusionPipeline`` (what any diffusers pipeline class costs: it pulls in peft,
  transformers and accelerate),
- the demo: ``from my3dgen_hf import EG3DPipeline; EG3DPipeline.from_pretrained('my3dgen-hf/demo-synthheads')(seed=0)``,
  split inside the process into import, load and render; what is left of the wall time is interpreter start and
  teardown (freeing the ~4,000 modules those packages import).

With ``--out``, the printed report is also written to ``results.md`` there, headed by the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEMO = (
    "import json, sys, time\n"
    "t0 = time.perf_counter()\n"
    "from my3dgen_hf import EG3DPipeline\n"
    "t1 = time.perf_counter()\n"
    "pipe = EG3DPipeline.from_pretrained('my3dgen-hf/demo-synthheads')\n"
    "t2 = time.perf_counter()\n"
    "pipe(seed=0)\n"
    "t3 = time.perf_counter()\n"
    "print(json.dumps({'import': t1 - t0, 'load': t2 - t1, 'render': t3 - t2, 'modules': len(sys.modules)}))\n"
)

COMMANDS = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "from diffusers import DiffusionPipeline": "from diffusers import DiffusionPipeline",
    "demo one-liner": DEMO,
}


def timed_run(code: str) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{code!r} failed:\n{r.stderr[-2000:]}")
    return wall, r.stdout


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="folder for results.md")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    parts: list[dict] = []
    for _ in range(args.runs):
        for name, code in COMMANDS.items():
            wall, out = timed_run(code)
            walls[name].append(wall)
            if code is DEMO:
                parts.append(json.loads(out.strip().splitlines()[-1]))
    demo = statistics.median(walls["demo one-liner"])
    lines = [f"Median of {args.runs} fresh processes each, interleaved (CPU count {os.cpu_count()}).", "",
             "| command | wall s | / demo |", "|---|---|---|"]
    for name, values in walls.items():
        m = statistics.median(values)
        lines.append(f"| {name} | {m:.2f} | {m / demo:.2f} |")
    split = {k: statistics.median(d[k] for d in parts) for k in ("import", "load", "render")}
    rest = demo - sum(split.values())
    floor = statistics.median(walls["from diffusers import DiffusionPipeline"])
    lines += ["", "Demo split: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items())
              + f", interpreter start + teardown {rest:.2f} s ({parts[0]['modules']} modules loaded).",
              f"Demo minus the diffusers floor: {demo - floor:+.2f} s."]
    print("\n".join(lines))
    if args.out is not None:
        from my3dgen_hf.utils.io import atomic_write_text
        from my3dgen_hf.utils.provenance import provenance_lines, run_provenance

        meta = run_provenance("benchmarks/demo_cold_start.py", argv, "cpu", t_start)
        atomic_write_text(args.out / "results.md", "\n".join([*provenance_lines(meta), "", *lines]) + "\n")


if __name__ == "__main__":
    main()

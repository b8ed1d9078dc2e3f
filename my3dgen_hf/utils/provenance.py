"""Where a benchmark result came from: the command, the machine, the date and the wall time, as the committed
``results.md`` / ``results.json`` files record them."""

from __future__ import annotations

import platform
import sys
import time
from typing import Optional, Sequence

import torch


def run_provenance(script: str, argv: Optional[Sequence[str]], device: str, start_time: float) -> dict:
    """``script``: the script's path from the repository root; ``argv``: its arguments (None: ``sys.argv[1:]``);
    ``start_time``: ``time.perf_counter()`` when the run began."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": " ".join(["python", script, *args]),
        "machine": f"{platform.machine()} {device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                   f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "wall_time_s": round(time.perf_counter() - start_time, 1),
    }


def provenance_lines(meta: dict) -> list[str]:
    """Markdown lines (hard line breaks) for the head of a results file."""
    return [
        f"Command: `{meta.get('command', 'n/a')}`  ",
        f"Machine: {meta.get('machine', 'n/a')}  ",
        f"Date: {meta.get('date', 'n/a')}; wall time {meta.get('wall_time_s', float('nan')) / 60:.1f} min  ",
    ]

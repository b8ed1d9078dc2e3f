"""Cold start of the Gradio app: process start -> server up -> first render returned to a client.

    python benchmarks/app_cold_start.py                       # the shipped demo prior, 3 runs
    python benchmarks/app_cold_start.py --base-model DIR --runs 5

Each run starts ``python app.py`` in a fresh process (HF_HUB_OFFLINE=1: no network), waits for the page to answer,
then calls the ``/render`` endpoint through ``gradio_client`` (imported before the clock starts) and stops the
process. Prints the time to "server up" and to "first render" for every run and their medians (goal: < 15 s)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def one_run(base_model: str | None, threads: int | None, timeout: float) -> dict:
    from gradio_client import Client

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port)]
    if base_model:
        cmd += ["--base-model", base_model]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_up(url, proc, timeout)
        t_up = time.perf_counter() - t0
        client = Client(url, verbose=False)
        t_client = time.perf_counter() - t0
        image, depth = client.predict("base", "none", 1.0, "seed", 0, None, 20, 0, 0.7, api_name="/render")
        t_render = time.perf_counter() - t0
        assert Path(image).is_file()
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"server_up_s": round(t_up, 2), "client_connected_s": round(t_client, 2), "first_render_s": round(t_render, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", default=None, help="default: the app's default (the shipped demo prior)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads in the app (default: torch's)")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    import gradio_client  # noqa: F401  (imported before the clock starts)

    runs = []
    for i in range(args.runs):
        r = one_run(args.base_model, args.threads, args.timeout)
        runs.append(r)
        if not args.json:
            print(f"run {i + 1}: server up {r['server_up_s']:.2f} s, first render {r['first_render_s']:.2f} s")
    summary = {
        "base_model": args.base_model or "my3dgen-hf/demo-synthheads",
        "runs": runs,
        "median_server_up_s": statistics.median(r["server_up_s"] for r in runs),
        "median_first_render_s": statistics.median(r["first_render_s"] for r in runs),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"median: server up {summary['median_server_up_s']:.2f} s, first render {summary['median_first_render_s']:.2f} s "
              f"(goal < 15 s) on {summary['cpu_count']} CPU cores")
    return summary


if __name__ == "__main__":
    main()

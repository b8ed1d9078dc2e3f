"""My3DGen Gradio app: `python app.py` (also the Hugging Face Space entry point).

    python app.py                                   # the shipped demo prior, http://127.0.0.1:7860
    python app.py --base-model converted/ffhq512-128 --port 7861
    MY3DGEN_BASE_MODEL=user/eg3d-prior python app.py

Other settings come from MY3DGEN_* environment variables (see my3dgen_hf/app/config.py and docs/app.md).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import time

T_START = time.perf_counter()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="My3DGen: personalize, render and share 3D head adapters in the browser.")
    p.add_argument("--base-model", default=None,
                   help="the EG3D prior: 'my3dgen-hf/demo-synthheads' (shipped, default), a local converted folder or a Hub id "
                        "(env: MY3DGEN_BASE_MODEL)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 to serve the network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--max-sessions", type=int, default=None, help="live sessions at once (env: MY3DGEN_MAX_SESSIONS)")
    p.add_argument("--train-concurrency", type=int, default=None, help="trainings at once (env: MY3DGEN_TRAIN_CONCURRENCY)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (env: MY3DGEN_TORCH_THREADS)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from my3dgen_hf.app import AppConfig, configure_environment

    configure_environment()  # before gradio is imported: no analytics, no telemetry
    cfg = AppConfig.from_env(base_model=args.base_model, max_sessions=args.max_sessions, train_concurrency=args.train_concurrency,
                             torch_threads=args.threads)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
    from my3dgen_hf.app.ui import create_app, launch_kwargs

    try:
        demo = create_app(cfg)
    except Exception as e:  # a wrong --base-model: one readable line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    service = demo.my3dgen_service
    atexit.register(service.shutdown)
    # SIGTERM (a stopped Space, `kill`): exit normally so that the session folders are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("my3dgen_hf.app").info("base model %s ready in %.1f s", cfg.base_model, time.perf_counter() - T_START)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(service))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``omniar serve``: load checkpoints into workers and run the API with uvicorn on 127.0.0.1.

    omniar serve [--model FOLDER ...] [--host 127.0.0.1] [--port 8000] [--max-rows 32] [--no-batching]
    omniar serve-forecast [--model assets/forecast-zeroshot]     (the same server, forecasting only)

Each ``--model`` folder is served under its folder name (``assets/text-shakespeare`` ->
``text-shakespeare``); its kind (text, cif, image, speech, forecast) comes from its config.
Without ``--model`` the shipped checkpoints are served (a missing one is skipped with a note).

Scaling out: the process holds no state between requests, so N replicas on N ports (or hosts)
behind any HTTP load balancer serve N times the load. On a multi-GPU host run one replica per
device: ``omniar serve --device cuda:0 --port 8000 & omniar serve --device cuda:1 --port 8001``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from apps.api.server import Limits, build_app
from apps.api.workers import ForecastWorker, ImageWorker, SpeechWorker, TokenWorker, checkpoint_kind
from apps.cli import SERVE_MODELS as DEFAULT_MODELS  # one list: `omniar serve`'s default


def load_workers(folders, device: str = "cpu", limits: Limits | None = None, skip_missing: bool = False) -> dict:
    """{name: worker} for checkpoint folders. FileNotFoundError / ValueError name a bad folder."""
    limits = limits or Limits()
    workers = {}
    for folder in folders:
        name = Path(folder).name
        if not Path(folder).is_dir():
            if skip_missing:
                print(f"omniar serve: note: {folder} not found; not serving it", file=sys.stderr)
                continue
            raise FileNotFoundError(f"checkpoint folder {folder} not found")
        if name in workers:
            raise ValueError(f"two models named {name!r}; rename one of the folders")
        kind = checkpoint_kind(folder)
        if kind in ("text", "cif"):
            workers[name] = TokenWorker(name, folder, kind, device, limits.max_rows, limits.max_queue)
        elif kind == "speech":
            workers[name] = SpeechWorker(name, folder, device, max_rows=min(limits.max_rows, 16),
                                         max_queue=limits.max_queue)
        elif kind == "image":
            workers[name] = ImageWorker(name, folder, device, limits.window_s,
                                        max_items=16 if limits.max_rows > 1 else 1, max_queue=limits.max_queue)
        else:
            workers[name] = ForecastWorker(name, folder, device, limits.window_s,
                                           max_items=512 if limits.max_rows > 1 else 1, max_queue=limits.max_queue)
    if not workers:
        raise ValueError("no model to serve")
    return workers


def main(a: argparse.Namespace, defaults=DEFAULT_MODELS) -> None:
    """Serve until interrupted. Bad flags, checkpoints or a taken port: ValueError with the reason
    (the CLI prints it on one line and exits with status 2)."""
    bounds = [("--max-rows", a.max_rows, 1, 1024), ("--max-queue", a.max_queue, 0, 100_000),
              ("--max-tokens", a.max_tokens, 1, 100_000), ("--timeout", a.timeout, 0.1, 86_400),
              ("--max-body-mb", a.max_body_mb, 0.001, 1024), ("--port", a.port, 0, 65535)]
    for flag, v, lo, hi in bounds:
        if not lo <= v <= hi:
            raise ValueError(f"{flag} must be in [{lo}, {hi}], got {v}")
    limits = Limits(max_body_bytes=int(a.max_body_mb * 1024 * 1024), max_tokens=a.max_tokens,
                    request_timeout=a.timeout, max_rows=1 if a.no_batching else a.max_rows, max_queue=a.max_queue,
                    window_s=0.0 if a.no_batching else 0.02)
    workers = load_workers(a.model or defaults, a.device, limits, skip_missing=not a.model)
    import uvicorn
    logging.basicConfig(level=logging.WARNING)
    app = build_app(workers, limits)
    names = ", ".join(f"{n} ({w.kind})" for n, w in workers.items())
    print(f"omniar serve: http://{a.host}:{a.port}  models: {names}", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=5)
    except (OSError, SystemExit) as e:   # uvicorn exits(1) when the port is taken
        raise ValueError(f"cannot serve on {a.host}:{a.port} ({e})") from None

"""All OmniAR apps in one Gradio page, one tab each, served on loopback by default.

    python -m apps.launcher [--host 127.0.0.1] [--port 7860] [--text-model assets/text-shakespeare]
    omniar demo ...            (same thing, through apps.cli)

Adding an app is one line in ``APPS``: its tab name, the command-line flag naming its checkpoint
folder, that flag's default, and a loader ``(folder, device) -> gr.Blocks`` that raises
FileNotFoundError with a clear message (path + the command that trains it) when the folder is
missing. An ``optional`` app whose default folder is missing is left out with a printed note
instead (the speech app: its checkpoint is not shipped with every checkout); a folder named on the
command line must exist. Nothing is downloaded and nothing is shared publicly (no ``share=True``,
no telemetry).
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

import gradio as gr

from apps.crystal import app as crystal_app
from apps.forecast import app as forecast_app
from apps.t2i import app as t2i_app
from apps.text import app as text_app
from apps.tts import app as tts_app


@dataclass(frozen=True)
class AppSpec:
    tab: str                                  # tab label
    flag: str                                 # command-line flag holding the checkpoint folder
    default: str                              # that flag's default
    loader: Callable[[str, str], gr.Blocks]   # (checkpoint folder, device) -> Blocks
    optional: bool = False                    # default folder missing: skip the tab with a note, not exit 2


APPS: list[AppSpec] = [
    AppSpec("Text", "--text-model", text_app.DEFAULT_MODEL, text_app.load_app),
    AppSpec("Crystals", "--crystal-model", crystal_app.DEFAULT_MODEL, crystal_app.load_app),
    AppSpec("Forecast", "--forecast-model", forecast_app.DEFAULT_MODEL, forecast_app.load_app),
    AppSpec("Images", "--image-model", t2i_app.DEFAULT_MODEL, t2i_app.load_app),
    AppSpec("Speech", "--speech-model", tts_app.DEFAULT_MODEL, tts_app.load_app, optional=True),
]


def build_launcher(apps: dict[str, gr.Blocks], title: str = "OmniAR") -> gr.Blocks:
    """{tab name: app Blocks} -> one queued Blocks with a tab per app (not launched)."""
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nOne shared autoregressive backbone, one tab per modality.")
        with gr.Tabs():
            for name, app in apps.items():
                with gr.Tab(name):
                    app.render()
    # events set their own concurrency_limit; this is the default for any that don't
    return demo.queue(default_concurrency_limit=1, max_size=64)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apps.launcher", description="Launch the OmniAR apps")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--device", default="cpu", help="torch device for every model (default: %(default)s)")
    for spec in APPS:
        ap.add_argument(spec.flag, default=spec.default,
                        help=f"{spec.tab} checkpoint folder (default: %(default)s)")
    return ap


def load_apps(args: argparse.Namespace) -> dict[str, gr.Blocks]:
    apps = {}
    for spec in APPS:
        folder = getattr(args, spec.flag.lstrip("-").replace("-", "_"))
        try:
            apps[spec.tab] = spec.loader(folder, args.device)
        except FileNotFoundError as e:
            if not spec.optional or folder != spec.default:
                raise
            print(f"omniar demo: note: no {spec.tab} tab: {e}", file=sys.stderr)
    return apps


def main(argv=None) -> int:
    """Parse, load every app, serve. Exits with status 2 and a one-line message on a missing
    checkpoint or a port that is taken (never a traceback)."""
    args = build_parser().parse_args(argv)
    try:
        demo = build_launcher(load_apps(args))
    except (FileNotFoundError, ValueError) as e:
        print(f"omniar demo: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False)
    except OSError as e:
        print(f"omniar demo: error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

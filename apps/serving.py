"""What every Gradio app shares: the checkpoint-folder check and its standalone ``main``."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
log = logging.getLogger(__name__)


def user_errors(title: str, what: str):
    """Gradio handler decorator: ValueError -> gr.Error with its message; anything else ->
    gr.Error naming the exception (the traceback goes to the server log, never to the page)."""
    import gradio as gr

    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except gr.Error:
                raise
            except ValueError as e:
                raise gr.Error(str(e), title=title, print_exception=False) from None
            except Exception as e:
                log.exception("%s failed", what)
                raise gr.Error(f"{what} failed ({type(e).__name__}: {e})", print_exception=False) from None
        return handler
    return wrap


def in_range(name: str, value, lo, hi, whole: bool = True):
    """A form value as a number in [lo, hi] (a whole number when ``whole``); ValueError naming the
    field otherwise (text, NaN, inf, out of range)."""
    import math
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (whole and x != int(x)) or not lo <= x <= hi:
        raise ValueError(f"{name} must be {'a whole number' if whole else 'a number'} from {lo} to {hi}, got {value!r}")
    return int(x) if whole else x


def check_checkpoint(folder: str | os.PathLike, kind: str, train_command: str,
                     files: tuple[str, ...] = CHECKPOINT_FILES) -> Path:
    """Raise FileNotFoundError naming the folder (or file) that is missing and the command that
    makes it; return the folder as a Path."""
    folder = Path(folder)
    how = f"train one with: {train_command} --out {folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{kind} checkpoint folder {folder} not found; {how}")
    for f in files:
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f} not found: {folder} is not a complete {kind} checkpoint; {how}")
    return folder


def serve(prog: str, description: str, default_model: str, load_app: Callable, argv=None) -> int:
    """``python -m apps.<x>_app [--model] [--host 127.0.0.1] [--port] [--device]``: one app alone.
    A missing or wrong checkpoint is a one-line error and exit status 2."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--model", default=default_model, help="checkpoint folder (default: %(default)s)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    try:
        demo = load_app(a.model, a.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog.split('.')[-1]}: error: {e}", file=sys.stderr)
        return 2
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(server_name=a.host, server_port=a.port, share=False, ssr_mode=False)
    return 0

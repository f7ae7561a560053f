"""Text generation app: a thin Gradio front end over ``apps.text.model.stream_text``.

    python -m apps.text.app --model assets/text-shakespeare [--host 127.0.0.1] [--port 7860]

``build_demo(model, tokenizer)`` does no work until an event fires; nothing runs at import time.
Every bad input (empty prompt, unknown characters, a prompt longer than the context, absurd
sampling settings, NaN) ends as a ``gr.Error`` with a plain message: a toast in the page, and
``gradio_client.exceptions.AppError`` carrying the same message for API callers.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import logging
import math
import re
import sys

import gradio as gr

from apps.serving import check_checkpoint, serve
from apps.text.model import stream_text, stream_text_batched
from backbone.batching import BatchEngine, QueueFull
from backbone.container import OmniModel
from backbone.sampling import SamplingParams
from modalities.text import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "assets/text-shakespeare"
TRAIN_COMMAND = "omniar train text --config configs/text_shakespeare.yaml"
API_NAME = "generate"
ENGINE_ROWS = 16        # users decoding together in the app (the launcher's Text tab)
ENGINE_TIMEOUT = 300.0  # seconds per generation


# ---- input checking (pure functions; ValueError with a message meant for people) ---------------
def _number(name: str, value, *, integer: bool = False, optional: bool = False):
    """A finite float (or whole number when ``integer``); None/blank allowed only when ``optional``."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if optional:
            return None
        raise ValueError(f"{name} is empty; enter a number")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer and isinstance(value, int):
        return value  # exact, even past float precision
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if x != int(x):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(x)
    return x


def parse_stop_strings(text: str | None) -> list[str]:
    """'ROMEO:, JULIET:' or one per line -> ['ROMEO:', 'JULIET:'] (blank entries dropped)."""
    if not text:
        return []
    return [s.strip() for s in re.split(r"[,\n]", text) if s.strip()]


def make_params(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed, stop):
    """UI values -> validated SamplingParams. top_k 0/blank = off, top_p blank = off, min_p 0 = off,
    seed -1/blank = random."""
    top_k = _number("top_k", top_k, integer=True, optional=True)
    min_p = _number("min_p", min_p, optional=True)
    seed = _number("seed", seed, integer=True, optional=True)
    if seed is not None and seed >= 2**63:
        raise ValueError(f"seed must be below 2**63 (or -1 for random), got {seed}")
    p = SamplingParams(
        temperature=_number("temperature", temperature),
        top_k=top_k if top_k else None,
        top_p=_number("top_p", top_p, optional=True),
        min_p=min_p if min_p else None,
        repetition_penalty=_number("repetition_penalty", repetition_penalty),
        max_new_tokens=_number("max_new_tokens", max_new_tokens, integer=True),
        seed=seed if seed is not None and seed >= 0 else None,
        stop_strings=parse_stop_strings(stop),
    )
    return p.validate()


# ---- the app ----------------------------------------------------------------------------------
def make_generate_fn(model, tokenizer, engine=None):
    """The event handler: a generator yielding the accumulated continuation (prompt not included).
    With ``engine`` (a BatchEngine on ``model``) concurrent users share batched decoding steps."""

    def generate(prompt, temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, seed, stop):
        try:
            params = make_params(temperature, top_k, top_p, min_p, repetition_penalty,
                                 max_new_tokens, seed, stop)
            if engine is None:
                pieces = stream_text(model, tokenizer, prompt, params)
            else:
                pieces = stream_text_batched(engine, tokenizer, prompt, params, timeout=ENGINE_TIMEOUT)
            text = ""
            for piece in pieces:  # validation errors surface on the first step, before any yield
                text += piece
                yield text
            if not text:
                yield ""
        except gr.Error:  # a ValueError subclass: pass through untouched
            raise
        except QueueFull:
            raise gr.Error("the model is busy with other users; try again in a moment",
                           print_exception=False) from None
        except ValueError as e:
            raise gr.Error(str(e), title="Cannot generate", print_exception=False) from None
        except Exception as e:  # keep internals out of the page; the server log has the traceback
            log.exception("text generation failed")
            raise gr.Error(f"generation failed ({type(e).__name__}: {e})", print_exception=False) from None

    return generate


def build_demo(model, tokenizer, title: str = "OmniAR text", engine=None) -> gr.Blocks:
    """The text app as a Blocks (not launched, no queue set: the caller decides). With ``engine``
    (a started BatchEngine on ``model``) up to ``engine.max_rows`` users generate at once, batched."""
    block = model.args.block_size
    fn = make_generate_fn(model, tokenizer, engine)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"### Text generation\nA {model.num_params() / 1e6:.2f}M-parameter model, "
                    f"context {block} tokens, vocabulary {tokenizer.vocab_size}. "
                    "The output shows the continuation of the prompt.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, value="", placeholder="ROMEO:",
                                    max_length=100_000, elem_id="text-prompt")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
                output = gr.Textbox(label="Generated text", lines=12, interactive=False, buttons=["copy"],
                                    elem_id="text-output")
            with gr.Column(scale=2):
                temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature",
                                        info="0 = greedy")
                top_k = gr.Number(value=0, label="Top-k", info="0 = off")
                top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Top-p", info="1 = off")
                min_p = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Min-p", info="0 = off")
                rep = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="Repetition penalty",
                                info="1 = off")
                max_new = gr.Number(value=min(200, block), label="Max new tokens",
                                    info=f"at most the room left in the {block}-token context")
                seed = gr.Number(value=-1, label="Seed", info="-1 or blank = random")
                stop = gr.Textbox(label="Stop strings", lines=2, placeholder="comma or newline separated")
        inputs = [prompt, temperature, top_k, top_p, min_p, rep, max_new, seed, stop]
        # preprocess=False: the handler gets the raw values and checks them itself, so an
        # out-of-range slider value from an API caller gets the same named message as any other
        # bad setting. With an engine, as many users as it has rows decode together, each step one
        # batched forward (backbone/batching.py); without one, one at a time streams fastest.
        ev = go.click(fn, inputs, output, api_name=API_NAME, preprocess=False,
                      concurrency_limit=engine.max_rows if engine is not None else 1,
                      concurrency_id="omniar-text-model")
        stop_btn.click(None, None, None, cancels=[ev], api_visibility="private")
    return demo


def load_app(folder: str | os.PathLike, device: str = "cpu") -> gr.Blocks:
    """Checkpoint folder -> text app Blocks. FileNotFoundError (clear message) if it is missing."""
    folder = check_checkpoint(folder, "text", TRAIN_COMMAND)
    model = OmniModel.from_pretrained(folder, device=device)
    if "lm" not in model.heads:
        raise ValueError(f"{folder} has no 'lm' head (heads: {sorted(model.heads)}); it is not a text model")
    engine = BatchEngine(model, max_rows=ENGINE_ROWS, max_queue=ENGINE_ROWS, name="text-app-engine").start()
    return build_demo(model, load_tokenizer(folder), engine=engine)


def main(argv=None) -> int:
    return serve("python -m apps.text.app", "OmniAR text generation app", DEFAULT_MODEL, load_app, argv)


if __name__ == "__main__":
    sys.exit(main())

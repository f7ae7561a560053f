"""Speech app: text to speech, optionally in the voice of a short reference clip, with a plot of the
predicted prosody (duration and pitch per phoneme) when the model predicts it (RALL-E).

    python -m apps.tts.app [--model assets/speech-tts] [--host 127.0.0.1] [--port 7860]

``build_demo(model)`` does no work until an event fires; ``model`` follows apps.tts.model.SpeechModel
(``MAX_CHARS``, ``sample_rate``, ``synthesize(...) -> SpeechResult``). Bad input (empty or
unpronounceable text, text over the limit, a clip that is unreadable, silent, too short or too long,
a clip without its transcript) ends as a ``gr.Error`` with a plain message, never a traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import math
import sys

import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from apps.serving import check_checkpoint, serve, user_errors
from apps.tts.checks import (FRAME_RATE, MAX_CHARS, MAX_REF_S, MIN_REF_S, check_settings, check_text,
                             check_voice_prompt)
from apps.tts.model import BatchedSpeech, SpeechModel, speak
from backbone.batching import BatchEngine

DEFAULT_MODEL = "assets/speech-tts"
TRAIN_COMMAND = "omniar train tts --config configs/tts_ralle.yaml"
ENGINE_ROWS = 8   # users whose speech decodes together
CHECKPOINT_FILES = ("config.json", "model.safetensors")   # what a SpeechModel folder must hold
NO_PROSODY = ("This model (VALL-E) predicts codec tokens directly: it has no per-phoneme duration or "
              "pitch to plot. A RALL-E checkpoint shows them here.")
EXAMPLE = "The quick brown fox jumps over the lazy dog."


def prosody_figure(phonemes: list[str], durations: list[int], pitch_hz: list[float]):
    """Two aligned panels over the phonemes (x): duration in codec frames (bars; 1 frame = 20 ms)
    and pitch in Hz (points joined within voiced runs; unvoiced = nan = gap). A matplotlib Figure
    (no pyplot: nothing global, safe in server threads)."""
    n = len(phonemes)
    fig = Figure(figsize=(min(24.0, max(6.0, 0.22 * n)), 4.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(n)
    top.bar(x, durations, color="#4c78a8", width=0.8)
    top.set_ylabel(f"duration (frames,\n{1000 // FRAME_RATE} ms each)")
    hz = np.array([h if h is not None and math.isfinite(h) else np.nan for h in pitch_hz], float)
    bottom.plot(x, hz, "o-", color="#e45756", markersize=4)
    bottom.set_ylabel("pitch (Hz)")
    if np.isfinite(hz).any():
        lo, hi = np.nanmin(hz), np.nanmax(hz)
        bottom.set_ylim(max(0.0, lo - 0.1 * (hi - lo) - 10), hi + 0.1 * (hi - lo) + 10)
    else:
        bottom.text(0.5, 0.5, "no voiced phonemes", transform=bottom.transAxes, ha="center", va="center")
    bottom.set_xticks(x, phonemes, fontsize=9 if n <= 80 else 7)
    bottom.set_xlim(-0.6, n - 0.4)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Predicted prosody: {n} phonemes, {sum(durations) / FRAME_RATE:.2f} s", fontsize=10)
    return fig


def to_int16(wav) -> np.ndarray:
    """float (T,) in [-1, 1] -> int16 (T,) (what gr.Audio plays without converting)."""
    return (np.clip(np.nan_to_num(np.asarray(wav, np.float32)), -1, 1) * 32767).round().astype(np.int16)


def make_synthesize_fn(model):
    limit = getattr(model, "MAX_CHARS", MAX_CHARS)

    @user_errors("Cannot speak", "speech synthesis")
    def synthesize(text, ref, transcript, seed, temperature):
        """(text, clip path or (sr, samples) or None, transcript, seed, temperature) ->
        ((sample_rate, int16 (T,)), plot figure or hidden, markdown note)."""
        text = check_text(text, limit)
        seed, temperature = check_settings(seed, temperature)
        prompt_wav, prompt_text = check_voice_prompt(ref, transcript, model.sample_rate)
        r = speak(model, text, prompt_wav, prompt_text, seed=seed, temperature=temperature)
        seconds = len(r.wav) / r.sample_rate
        voice = "the reference voice" if prompt_wav is not None else "the default voice"
        note = f"{seconds:.2f} s of speech in {voice}, {len(r.phonemes)} phonemes: `{' '.join(r.phonemes)}`"
        if r.durations:
            plot = gr.update(value=prosody_figure(r.phonemes, r.durations, r.pitch_hz), visible=True)
        else:
            plot, note = gr.update(value=None, visible=False), f"{note}\n\n{NO_PROSODY}"
        return (r.sample_rate, to_int16(r.wav)), plot, note
    return synthesize


def build_demo(model, title: str = "OmniAR speech") -> gr.Blocks:
    """The speech app as a Blocks (not launched) around a SpeechModel."""
    limit = getattr(model, "MAX_CHARS", MAX_CHARS)
    kind = getattr(model, "kind", None) or {True: "RALL-E", False: "VALL-E"}.get(getattr(model, "cot", None))
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown("### Text to speech\nThe shared autoregressive backbone predicts speech-codec tokens "
                    f"from IPA phonemes{f' (model: {kind})' if kind else ''}. Add a {MIN_REF_S:g}-{MAX_REF_S:g} s clip "
                    "and its transcript to speak in that voice.")
        with gr.Row():
            with gr.Column(scale=2):
                text = gr.Textbox(label=f"Text (up to {limit} characters)", value=EXAMPLE, lines=3,
                                  max_length=limit, elem_id="tts-text")
                go = gr.Button("Speak", variant="primary")
            with gr.Column(scale=1):
                ref = gr.Audio(label=f"Voice prompt (optional, {MIN_REF_S:g}-{MAX_REF_S:g} s; WAV, FLAC or OGG)",
                               sources=["upload"], type="filepath", elem_id="tts-ref")
                transcript = gr.Textbox(label="Words spoken in the voice prompt", max_length=limit,
                                        elem_id="tts-transcript")
                seed = gr.Number(value=0, label="Seed", precision=0)
                temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
        audio = gr.Audio(label="Speech", type="numpy", interactive=False, elem_id="tts-audio")
        note = gr.Markdown(elem_id="tts-note")
        plot = gr.Plot(label="Duration and pitch per phoneme", elem_id="tts-plot")
        go.click(make_synthesize_fn(model), [text, ref, transcript, seed, temperature], [audio, plot, note],
                 api_name="tts", concurrency_limit=ENGINE_ROWS, concurrency_id="omniar-speech-model")
    return demo


def load_app(folder: str | os.PathLike, device: str = "cpu") -> gr.Blocks:
    """Checkpoint folder -> speech app Blocks (FileNotFoundError naming the training command)."""
    folder = check_checkpoint(folder, "text-to-speech", TRAIN_COMMAND, files=CHECKPOINT_FILES)
    sm = SpeechModel.from_pretrained(str(folder), device=device)
    if not hasattr(sm, "prepare"):       # anything else with a ``synthesize`` is served as it is
        return build_demo(sm)
    # concurrent users decode as rows of one engine (each gets what it gets alone)
    engine = BatchEngine(sm.model, max_rows=ENGINE_ROWS, max_queue=ENGINE_ROWS, name="speech-app-engine").start()
    return build_demo(BatchedSpeech(sm, engine))


def main(argv=None) -> int:
    return serve("python -m apps.tts.app", "OmniAR speech app", DEFAULT_MODEL, load_app, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Golden CLI outputs, recorded before the one-engine refactor (issue 17).

Each case is an ``omniar`` command line with a fixed seed. ``record.py`` runs every case and
stores what it produced under tests/golden/data/; ``test_golden.py`` runs the same command and
compares. Text and CIFs must be identical; images and audio equal within float tolerance.

    python -m tests.golden.record            # (re)record every case; only when a change is meant
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
REF_WAV = DATA / "voice_prompt.wav"     # espeak-ng, en-us+f3 (the held-out voice), 16 kHz
REF_TEXT = "The birch canoe slid on the smooth planks."
SERIES_CSV = DATA / "series.csv"        # 240 hourly points: a daily cycle, a trend and noise
NEXT_SCALE = DATA / "t2i-next_scale"    # tiny next-scale / next-cell checkpoints (2 training steps)
NEXT_CELL = DATA / "t2i-next_cell"

# name -> (argv with {out} for the output path, kind of output)
CASES: dict[str, tuple[list[str], str]] = {
    "generate_shakespeare": (["generate", "ROMEO:", "--max-new-tokens", "60", "--seed", "0"], "stdout"),
    "generate_bpe_greedy": (["generate", "The", "--model", "assets/text-fortunes-bpe", "--max-new-tokens", "40",
                             "--temperature", "0"], "stdout"),
    "generate_bpe_topp": (["generate", "Life is", "--model", "assets/text-fortunes-bpe", "--max-new-tokens", "40",
                           "--temperature", "0.9", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "3"],
                          "stdout"),
    "generate_draft_model": (["generate", "The", "--model", "assets/text-fortunes-bpe", "--max-new-tokens", "40",
                              "--temperature", "0", "--draft", "assets/text-fortunes-bpe-draft"], "stdout"),
    "generate_draft_ngram": (["generate", "ROMEO:", "--max-new-tokens", "40", "--temperature", "0",
                              "--draft", "ngram"], "stdout"),
    "generate_draft_head": (["generate", "The", "--model", "assets/text-fortunes-bpe", "--max-new-tokens", "40",
                             "--temperature", "0", "--draft", "head"], "stdout"),
    "generate_draft_lookup": (["generate", "To be or not to be", "--max-new-tokens", "40", "--temperature", "0.7",
                               "--seed", "2", "--draft", "prompt-lookup"], "stdout"),
    "generate_contrastive": (["generate", "ROMEO:", "--max-new-tokens", "40", "--penalty-alpha", "0.6",
                              "--top-k", "4"], "stdout"),
    "t2i_diffusion": (["t2i", "a red circle to the left of a blue square", "-o", "{out}.png", "--n", "2",
                       "--steps", "10", "--seed", "0", "--model", "assets/t2i-shapes"], "png"),
    "t2i_default": (["t2i", "a red circle to the left of a blue square", "-o", "{out}.png", "--n", "2",
                     "--steps", "10", "--seed", "0"], "png"),
    "t2i_flow": (["t2i", "two green triangles", "-o", "{out}.png", "--model", "assets/t2i-shapes-flow",
                  "--n", "2", "--steps", "10", "--seed", "1"], "png"),
    "t2i_mar": (["t2i", "a yellow square", "-o", "{out}.png", "--model", "assets/t2i-shapes-mar",
                 "--steps", "10", "--seed", "0"], "png"),
    "t2i_digits": (["t2i", "the digit 7", "-o", "{out}.png", "--model", "assets/t2i-digits", "--steps", "10"], "png"),
    "t2i_next_scale": (["t2i", "a blue circle", "-o", "{out}.png", "--model", str(NEXT_SCALE), "--steps", "5"], "png"),
    "t2i_next_cell": (["t2i", "a blue circle", "-o", "{out}.png", "--model", str(NEXT_CELL), "--steps", "5"], "png"),
    "caption_raster": (["caption", str(DATA / "scene.png"), "--model", "assets/t2i-shapes"], "stdout"),
    "caption_default": (["caption", str(DATA / "scene.png")], "stdout"),
    "caption_mar": (["caption", str(DATA / "scene.png"), "--model", "assets/t2i-shapes-mar"], "stdout"),
    "tts": (["tts", "Hello world. How are you?", "-o", "{out}.wav", "--seed", "0"], "wav"),
    "tts_valle": (["tts", "A quick test.", "-o", "{out}.wav", "--model", "assets/speech-tts-valle",
                   "--seed", "1"], "wav"),
    "tts_voice_prompt": (["tts", "Good morning.", "-o", "{out}.wav", "--voice-prompt", str(REF_WAV),
                          "--prompt-text", REF_TEXT, "--seed", "0"], "wav"),
    "forecast_zeroshot": (["forecast", str(SERIES_CSV), "--column", "y", "--horizon", "24", "-o", "{out}.csv"], "csv"),
    "forecast_bins": (["forecast", str(SERIES_CSV), "--column", "y", "--horizon", "24", "-o", "{out}.csv",
                       "--model", "assets/forecast-bins"], "csv"),
    "crystal": (["crystal", "SrTiO3", "--n", "3", "--seed", "0", "-o", "{out}"], "cifs"),
}


def run_case(name: str, workdir: Path):
    """Run one case's command in-process -> what it produced: str (stdout, CSV or CIFs) or
    np.ndarray (pixels uint8 (H, W, 3), audio float32 (T,))."""
    from apps.cli import main
    argv, kind = CASES[name]
    out = workdir / name
    argv = [a.replace("{out}", str(out)) for a in argv]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"{name}: omniar {' '.join(argv)} exited {rc}")
    if kind == "stdout":
        return buf.getvalue()
    if kind == "png":
        from PIL import Image
        return np.asarray(Image.open(f"{out}.png").convert("RGB"))
    if kind == "wav":
        import soundfile as sf
        return sf.read(f"{out}.wav", dtype="float32")[0]
    if kind == "csv":
        return Path(f"{out}.csv").read_text()
    if kind == "cifs":
        files = sorted(p for p in out.iterdir() if p.suffix == ".cif")
        return "".join(f"## {p.name}\n{p.read_text()}" for p in files)
    raise ValueError(kind)


def golden_path(name: str) -> Path:
    kind = CASES[name][1]
    return DATA / (f"{name}.npy" if kind in ("png", "wav") else f"{name}.txt")


def save(name: str, value):
    path = golden_path(name)
    if isinstance(value, np.ndarray):
        np.save(path, value, allow_pickle=False)
    else:
        path.write_text(value)


def load(name: str):
    path = golden_path(name)
    return np.load(path, allow_pickle=False) if path.suffix == ".npy" else path.read_text()

"""Input checks shared by the text-to-speech CLI, app and model (apps/tts/model.py).

Every check raises ``ValueError`` with a message meant for the user (the CLI prints it and exits
with status 2; the app shows it as a ``gr.Error``), never a traceback.

    check_text(text) -> str                       one call's text, whitespace collapsed
    split_sentences(text, max_chars) -> [str]     one sentence per piece, each <= max_chars
    read_reference(source) -> float32 (T,)        a voice-prompt clip, mono, 16 kHz, 1-10 s
    check_voice_prompt(source, transcript)        both or neither
    check_settings(seed, temperature)             seed: whole 0..2**31-1 or None; 0 < temperature <= 2
"""
from __future__ import annotations

import math
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from modalities.speech_corpus import PAUSE, phonemes_of

MAX_CHARS = 300          # longest text per synthesis call (SpeechModel.MAX_CHARS)
SAMPLE_RATE = 16000      # Hz, the codec's rate
FRAME_RATE = 50          # codec frames per second (durations are in frames)
PAUSE_S = 0.3            # silence between sentences spoken separately
MIN_REF_S, MAX_REF_S = 1.0, 10.0
SILENCE_RMS = 1e-4       # a reference clip quieter than this (full scale = 1) is silent
RATES = (4000, 192000)   # accepted sample rates of a reference clip, Hz
AUDIO_FORMATS = "WAV, FLAC or OGG"
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def _normalise(text: str) -> str:
    """Drop control characters (a NUL would cut the text short in espeak) and collapse whitespace."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    return " ".join(text.split())


def _sayable(text: str) -> bool:
    return any(c.isalnum() for c in text)


def check_text(text, max_chars: int = MAX_CHARS, what: str = "the text") -> str:
    """``text`` -> the same text with whitespace collapsed, or ValueError when it is not a string,
    empty, longer than ``max_chars`` characters, or has nothing to pronounce (no letter or digit,
    or espeak-ng finds no phoneme but pauses in it; punctuation alone such as '!!!' is refused even
    though espeak would read it out as a word)."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    clean = _normalise(text)
    if not clean:
        raise ValueError(f"{what} is empty; type something to say")
    if len(clean) > max_chars:
        raise ValueError(f"{what} is {len(clean)} characters long; the limit is {max_chars} per call "
                         "(split longer text at sentence ends, as `omniar tts` does)")
    if not _sayable(clean) or all(p == PAUSE for p in phonemes_of(clean)):
        raise ValueError(f"{what} has nothing to pronounce ({clean[:40]!r}): use words or numbers")
    return clean


def _cut(piece: str, max_chars: int) -> list[str]:
    """One over-long sentence -> parts <= max_chars: at commas/colons/dashes, else spaces, else hard."""
    if len(piece) <= max_chars:
        return [piece]
    for sep in (r"(?<=[,:])\s+|\s+(?=[-\u2013\u2014]\s)", r"\s+"):
        parts = [p for p in re.split(sep, piece) if p]
        if len(parts) > 1:
            out, cur = [], ""
            for p in parts:
                if cur and len(cur) + 1 + len(p) > max_chars:
                    out.append(cur)
                    cur = ""
                cur = f"{cur} {p}" if cur else p
            out.append(cur)
            return [q for c in out for q in _cut(c, max_chars)]
    return [piece[i:i + max_chars] for i in range(0, len(piece), max_chars)]


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """Text of any length -> its sentences, one per piece, each at most ``max_chars`` characters.

    Sentences end at . ! ? ; followed by whitespace ('3.14', 'e.g.x' stay whole); a longer sentence
    is cut at commas/colons/dashes, then at spaces. Pieces without a letter or digit ('...',
    '!!!') say nothing and are dropped, so [] means there is nothing to say."""
    if not isinstance(text, str):
        raise ValueError(f"the text must be a string, got {type(text).__name__}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    out = []
    for sentence in _SENTENCE_END.split(_normalise(text)):
        out += [p.strip() for p in _cut(sentence, max_chars)]
    return [p for p in out if p and _sayable(p)]


def _to_float_mono(data: np.ndarray) -> np.ndarray:
    """PCM of any common dtype, (T,) or (T, C) or (C, T) with C <= 8 -> float32 (T,) mono."""
    data = np.asarray(data)
    if data.dtype.kind not in "iuf" or data.dtype.itemsize > 8:
        raise ValueError(f"the reference audio must hold numbers, got {data.dtype}")
    if data.ndim == 2 and data.shape[0] <= 8 < data.shape[1]:
        data = data.T                                   # (C, T) -> (T, C)
    if data.ndim == 2 and data.shape[1] <= 8:
        pass
    elif data.ndim != 1:
        raise ValueError(f"the reference audio must be mono (T,) or multi-channel (T, C), got shape {data.shape}")
    if data.dtype.kind == "i":
        x = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    elif data.dtype.kind == "u":
        half = float(2 ** (8 * data.dtype.itemsize - 1))
        x = (data.astype(np.float64) - half) / half
    else:
        x = data.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("the reference audio contains NaN or infinite samples")
    x = x.mean(axis=1) if x.ndim == 2 else x
    peak = float(np.abs(x).max()) if x.size else 0.0
    return (x / peak if peak > 1.0 else x).astype(np.float32)   # floats beyond full scale: rescale


def _read_file(path: Path, min_s: float, max_s: float) -> tuple[int, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"reference audio file {path} not found")
    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and info.frames / info.samplerate > max_s + 1:   # before reading it all
            raise ValueError(f"the reference clip is {info.frames / info.samplerate:.2f} s long; "
                             f"it must be {min_s:g} to {max_s:g} s")
        data, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except ValueError:
        raise
    except Exception as e:                               # libsndfile: malformed or unsupported
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read {path.name} as audio ({reason}); use a {AUDIO_FORMATS} file") from None
    return int(sr), data


def read_reference(source, sample_rate: int = SAMPLE_RATE, min_s: float = MIN_REF_S,
                   max_s: float = MAX_REF_S) -> np.ndarray:
    """A voice-prompt clip -> float32 (T,) mono in [-1, 1] at ``sample_rate`` Hz.

    ``source``: a path (WAV/FLAC/OGG, read with soundfile) or ``(sr, samples)`` as gr.Audio gives
    it (int16/int32/uint8/float, (T,) or (T, C)). Any rate in 4-192 kHz is resampled with
    torchaudio. ValueError for a missing/unreadable file, NaN/inf, silence (RMS < 1e-4) and a
    length outside [min_s, max_s] seconds."""
    if source is None:
        raise ValueError("no reference audio given")
    if isinstance(source, (str, os.PathLike)):
        sr, data = _read_file(Path(source), min_s, max_s)
    elif isinstance(source, tuple) and len(source) == 2:
        sr, data = source
    else:
        raise ValueError(f"reference audio must be a file path or (sample_rate, samples), got {type(source).__name__}")
    ok = isinstance(sr, (int, float, np.integer, np.floating)) and not isinstance(sr, bool)
    if not ok or not math.isfinite(sr) or sr != int(sr) or not RATES[0] <= sr <= RATES[1]:
        raise ValueError(f"the reference audio's sample rate must be a whole number of Hz from "
                         f"{RATES[0]} to {RATES[1]}, got {sr!r}")
    x = _to_float_mono(data)
    seconds = len(x) / int(sr)
    if not min_s <= seconds <= max_s:
        raise ValueError(f"the reference clip is {seconds:.2f} s long; it must be {min_s:g} to {max_s:g} s")
    if float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < SILENCE_RMS:
        raise ValueError("the reference clip is silent; record or upload someone speaking")
    if int(sr) != sample_rate:
        x = AF.resample(torch.from_numpy(x), int(sr), sample_rate).numpy()
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


def check_voice_prompt(source, transcript, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray | None, str | None]:
    """(clip or None, its transcript or None/"") -> (float32 (T,) at sample_rate, transcript), or
    (None, None) when neither is given; ValueError when only one of the two is."""
    has_text = isinstance(transcript, str) and transcript.strip() != ""
    if source is None or (isinstance(source, str) and not source.strip()):
        if has_text:
            raise ValueError("a transcript was given but no voice prompt clip; add the clip or drop the transcript")
        return None, None
    if not has_text:
        raise ValueError("the voice prompt needs its transcript: the exact words spoken in the clip")
    return read_reference(source, sample_rate), check_text(transcript, what="the voice prompt's transcript")


def check_settings(seed, temperature) -> tuple[int | None, float]:
    """seed: None or a whole number 0..2**31-1; temperature: a number above 0 and at most 2."""
    if seed is not None:
        try:
            s = float(seed)
        except (TypeError, ValueError):
            raise ValueError(f"seed must be a whole number, got {seed!r}") from None
        if not math.isfinite(s) or s != int(s) or not 0 <= s < 2 ** 31:
            raise ValueError(f"seed must be a whole number from 0 to {2 ** 31 - 1}, got {seed!r}")
        seed = int(s)
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(t) or not 0 < t <= 2:
        raise ValueError(f"temperature must be above 0 and at most 2, got {temperature!r}")
    return seed, t

"""A speech corpus made here with espeak-ng: audio, IPA phonemes and exact per-phoneme timing.

Nothing is downloaded. Sentences come from text that ships on this machine (tinyshakespeare in
../shared/data, Debian's fortunes); speakers are espeak-ng voices with variants (``en-us+f2``,
``en-gb+m3``, ...), each with its own base pitch, and every utterance gets a random speaking rate.

Durations are exact, not aligned: libespeak-ng (through ctypes) reports a phoneme event with the
sample position where each phoneme starts while it synthesises (``espeakINITIALIZE_PHONEME_EVENTS``
with ``..._PHONEME_IPA`` so the event names are IPA). An empty event name is a pause; it becomes
the phoneme ``_``.

Layout on disk (``build_corpus(out)``)::

    out/manifest.jsonl      one JSON line per utterance: id, split, text, speaker, rate, pitch,
                            phonemes [P] (IPA), starts [P] (sample index at SAMPLE_RATE), offset, n
    out/audio.safetensors   {"audio": int16 (total,)}: every utterance at SAMPLE_RATE, back to back

Splits: ``train`` / ``val`` are disjoint sentences over the training speakers; ``test`` holds
held-out sentences; ``voice`` is the held-out speaker (HELDOUT_VOICE) reading held-out sentences;
extra splits given by the caller are read by training speakers after those (the TTS evaluation's
``hard`` split: benchmarks/metrics/speech_hard.py, whose ``python -m`` builds the corpus with it).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import random
import re
import threading
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

SAMPLE_RATE = 16000          # the corpus and the codec; espeak-ng synthesises at 22050 Hz
LANGS = ("en-us", "en")          # espeak-ng names: "en" is British English (gmw/en)
VARIANTS = ("", "+f1", "+f2", "+f3", "+f4", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7")
HELDOUT_VOICE = "en-us+f3"   # never trained on; the voice-prompt (cloning) test speaker
PAUSE = "_"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FORTUNES = Path("/usr/share/games/fortunes/fortunes")

_EV_END, _EV_PHONEME = 0, 7
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA, _INIT_DONT_EXIT = 0x0001, 0x0002, 0x8000
_RATE, _PITCH = 1, 3


def speakers() -> list[str]:
    """Every voice name, e.g. 'en-us', 'en-us+f1', ..., 'en-gb+m7' (24)."""
    return [lang + v for lang in LANGS for v in VARIANTS]


def base_pitch(speaker: str) -> int:
    """A fixed espeak pitch (0..99) per speaker, so pitch is part of who speaks."""
    return 30 + (sum(map(ord, speaker)) * 7919) % 41


class _ID(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT in speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _ID)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """libespeak-ng in synchronous mode. ``synth(text, voice, rate, pitch)`` returns the audio at
    22050 Hz and the phoneme events. One instance per process (the library is global state)."""
    _lock = threading.Lock()
    _instance = None

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise RuntimeError("libespeak-ng not found: install the Debian package espeak-ng "
                               "(make sysdeps)") from e
        self.rate = self.lib.espeak_Initialize(2, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT)
        if self.rate <= 0:
            raise RuntimeError("espeak_Initialize failed")
        self._audio, self._events = [], []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: the library calls it later
        self.lib.espeak_SetSynthCallback(self._cb)

    @classmethod
    def get(cls) -> "Espeak":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_audio(self, wav, n, events):
        if n > 0:
            self._audio.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EV_END:
            e = events[i]
            if e.type == _EV_PHONEME:
                self._events.append((e.id.string.decode("utf-8", "replace") or PAUSE, int(e.sample)))
            i += 1
        return 0

    def synth(self, text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50
              ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """text -> (int16 audio (T,) at self.rate, [(ipa phoneme, start sample), ...])."""
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self._audio, self._events = [], []
            data = text.encode("utf-8")
            self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 1, None, None)  # 1 = espeakCHARS_UTF8
            self.lib.espeak_Synchronize()
            audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)
            return audio, list(self._events)


def phonemes_of(text: str, voice: str = "en-us") -> list[str]:
    """The IPA phonemes espeak-ng speaks for ``text`` (pauses as '_'); [] if none."""
    return [p for p, _ in synth(text, voice)[1]]


def synth(text: str, voice: str = "en-us", rate: int = 170, pitch: int | None = None
          ) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Speak ``text`` -> (float32 audio (T,) in [-1, 1] at SAMPLE_RATE, [(phoneme, start sample)]).

    Phonemes are merged into runs of non-empty spans; the first starts at 0 (it takes the leading
    silence) and a phoneme ends where the next starts (the last at T)."""
    es = Espeak.get()
    raw, events = es.synth(text, voice, rate, base_pitch(voice) if pitch is None else pitch)
    wav = AF.resample(torch.from_numpy(raw.astype(np.float32) / 32768.0), es.rate, SAMPLE_RATE).numpy()
    out: list[tuple[str, int]] = []
    for p, s in events:
        s = int(round(s * SAMPLE_RATE / es.rate))
        if out and s <= out[-1][1]:          # zero-length (a pause event at the same sample): merge
            if p != PAUSE and out[-1][0] == PAUSE:
                out[-1] = (p, out[-1][1])
            continue
        out.append((p, s))
    if out:
        out[0] = (out[0][0], 0)
    while len(out) > 1 and out[-1][0] == PAUSE and out[-2][0] == PAUSE:
        out.pop()
    return wav, out


# ---- sentences ---------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z']+")


def clean_sentence(line: str) -> str | None:
    """A usable sentence: plain words and light punctuation, 3..14 words; else None."""
    line = " ".join(line.strip().split())
    if not line or re.search(r"[^A-Za-z',.;:!? -]", line) or not line[0].isalpha():
        return None
    words = _WORD.findall(line)
    if not 3 <= len(words) <= 14 or line.isupper():
        return None
    return line


def sentences(seed: int = 0) -> list[str]:
    """Unique sentences from tinyshakespeare and fortunes, shuffled with ``seed``."""
    lines: list[str] = []
    if (SHARED_DATA / "tinyshakespeare.txt").is_file():
        lines += (SHARED_DATA / "tinyshakespeare.txt").read_text().splitlines()
    if FORTUNES.is_file():
        lines += FORTUNES.read_text(errors="ignore").splitlines()
    if not lines:
        raise FileNotFoundError(f"no text: neither {SHARED_DATA / 'tinyshakespeare.txt'} nor {FORTUNES} exists")
    out = sorted({c for c in map(clean_sentence, lines) if c})
    random.Random(seed).shuffle(out)
    return out


def corpus_plan(n_train: int, n_val: int, n_test: int, seed: int = 0,
                extra: dict[str, list[str]] | None = None) -> list[dict]:
    """What to speak: [{id, split, text, speaker, rate}, ...]. Sentences of different splits never
    overlap; train/val/test use the training speakers, ``voice`` the held-out one. ``extra``:
    {split: sentences} read by training speakers, planned last (the other splits stay the same)."""
    rng = random.Random(seed)
    sents = sentences(seed)
    if len(sents) < n_train + n_val + n_test:
        raise ValueError(f"only {len(sents)} sentences for {n_train + n_val + n_test} requested")
    spk = [s for s in speakers() if s != HELDOUT_VOICE]
    test = sents[n_train + n_val:n_train + n_val + n_test]
    plan = []
    for split, texts, pool in [("train", sents[:n_train], spk), ("val", sents[n_train:n_train + n_val], spk),
                               ("test", test, spk), ("voice", test, [HELDOUT_VOICE]),
                               *((name, texts, spk) for name, texts in (extra or {}).items())]:
        for i, t in enumerate(texts):
            plan.append({"id": f"{split}-{i:05d}", "split": split, "text": t, "speaker": rng.choice(pool),
                         "rate": rng.randint(150, 200)})
    return plan


def build_corpus(out: str | Path, n_train: int = 4000, n_val: int = 100, n_test: int = 100, seed: int = 0,
                 progress: bool = True, extra: dict[str, list[str]] | None = None) -> Path:
    """Synthesise the plan (``corpus_plan``) into ``out`` (manifest.jsonl + audio.safetensors,
    written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, chunks, offset = [], [], 0
    for item in tqdm(corpus_plan(n_train, n_val, n_test, seed, extra), desc="espeak-ng", disable=not progress):
        wav, events = synth(item["text"], item["speaker"], item["rate"])
        if not events or len(wav) < SAMPLE_RATE // 10:
            continue
        pcm = np.clip(np.rint(wav * 32767), -32768, 32767).astype(np.int16)
        rows.append({**item, "pitch": base_pitch(item["speaker"]), "phonemes": [p for p, _ in events],
                     "starts": [s for _, s in events], "offset": offset, "n": len(pcm)})
        chunks.append(pcm)
        offset += len(pcm)
    save_file({"audio": torch.from_numpy(np.concatenate(chunks))}, str(out / "audio.safetensors.tmp"))
    (out / "audio.safetensors.tmp").replace(out / "audio.safetensors")
    (out / "manifest.jsonl.tmp").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "manifest.jsonl.tmp").replace(out / "manifest.jsonl")
    return out


class Corpus:
    """A built corpus: ``rows(split)`` and ``audio(row)`` -> float32 (T,) at SAMPLE_RATE."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / "manifest.jsonl").is_file():
            raise FileNotFoundError(f"{folder}/manifest.jsonl not found: build it with "
                                    f"python -m modalities.speech_corpus --out {folder}")
        self.folder = folder
        self.items = [json.loads(l) for l in (folder / "manifest.jsonl").read_text().splitlines()]
        self.pcm = load_file(str(folder / "audio.safetensors"))["audio"]

    def rows(self, split: str) -> list[dict]:
        return [r for r in self.items if r["split"] == split]

    def audio(self, row: dict) -> torch.Tensor:
        return self.pcm[row["offset"]:row["offset"] + row["n"]].float() / 32768.0


def main(argv=None, extra: dict[str, list[str]] | None = None) -> None:
    """``python -m modalities.speech_corpus --out DIR``: build a corpus (``extra``: more splits)."""
    ap = argparse.ArgumentParser(description="Build the espeak-ng speech corpus")
    ap.add_argument("--out", default="runs/speech/corpus")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    c = Corpus(build_corpus(a.out, a.n_train, a.n_val, a.n_test, a.seed, extra=extra))
    print(f"{len(c.items)} utterances, {len(c.pcm) / SAMPLE_RATE / 3600:.2f} h in {a.out}")


if __name__ == "__main__":
    main()

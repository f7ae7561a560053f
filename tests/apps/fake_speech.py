"""Shared by the speech tests (imported, not a conftest): a stand-in that follows the
apps.tts.model.SpeechModel contract, and a fixture-style helper that makes ``SpeechModel.from_pretrained``
return it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apps.tts.model import SpeechModel
from modalities.speech_corpus import phonemes_of


@dataclass
class FakeResult:
    wav: np.ndarray
    sample_rate: int
    phonemes: list[str]
    durations: list[int] = field(default_factory=list)
    pitch: list[int] = field(default_factory=list)
    pitch_hz: list[float] = field(default_factory=list)
    n_frames: int = 0               # as apps.tts.model.SpeechResult: codec frames in wav


class FakeSpeechModel:
    """Speaks each phoneme (espeak-ng's IPA for the text) as a tone: seeded durations of 3-9 codec
    frames (320 samples each) and pitch 100-220 Hz, '_' silent. ``prosody=False`` acts like
    VALL-E (empty durations/pitch). Every call is recorded in ``calls``."""
    MAX_CHARS = 300
    sample_rate = 16000
    hop = 320

    def __init__(self, prosody: bool = True):
        self.prosody = prosody
        self.kind = "RALL-E (fake)" if prosody else "VALL-E (fake)"
        self.calls: list[dict] = []

    def synthesize(self, text, prompt_wav=None, prompt_text=None, seed=0, temperature=1.0):
        self.calls.append(dict(text=text, prompt_wav=prompt_wav, prompt_text=prompt_text, seed=seed,
                               temperature=temperature))
        phonemes = phonemes_of(text)
        rng = np.random.default_rng(seed)
        durations = [int(d) for d in rng.integers(3, 10, len(phonemes))]
        pitch = [0 if p == "_" else int(b) for p, b in zip(phonemes, rng.integers(1, 32, len(phonemes)))]
        hz = [float("nan") if b == 0 else 100.0 + 4 * b for b in pitch]
        parts = []
        for d, h in zip(durations, hz):
            t = np.arange(d * self.hop) / self.sample_rate
            parts.append(np.zeros_like(t) if h != h else 0.3 * np.sin(2 * np.pi * h * t))
        wav = np.concatenate(parts).astype(np.float32)
        if not self.prosody:
            return FakeResult(wav, self.sample_rate, phonemes, n_frames=sum(durations))
        return FakeResult(wav, self.sample_rate, phonemes, durations, pitch, hz, n_frames=sum(durations))


def patch_from_pretrained(monkeypatch, model) -> list:
    """Make apps.tts.model.SpeechModel.from_pretrained return ``model``; returns the list of
    (folder, device) it is called with."""
    loaded = []

    def from_pretrained(cls, folder="assets/speech-tts", codec=None, device=None):
        loaded.append((str(folder), device))
        return model
    monkeypatch.setattr(SpeechModel, "from_pretrained", classmethod(from_pretrained))
    return loaded

"""CTC phoneme recognition and forced alignment: the per-phoneme starts of a voice-prompt clip that
``omniar tts --voice-prompt`` needs for RALL-E's prosody tokens (apps/tts/model.py loads the
shipped recogniser from assets/speech-ctc).

``CTCRecognizer`` is a small phoneme recogniser trained here with CTC (Graves et al. 2006) on the
corpus train split (modalities/speech_corpus.py; its training, and the phoneme error rate it is
scored by, are evaluation code: benchmarks/metrics/speech_checks.py). ``align`` runs
torchaudio's CTC forced alignment; ``transcribe`` reads phonemes greedily.

Audio everywhere is mono float at 16 kHz (SAMPLE_RATE) in [-1, 1]: a list of (T,) clips.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
from safetensors.torch import load_model, save_model

from modalities.speech_corpus import PAUSE, SAMPLE_RATE

MIN_SAMPLES = SAMPLE_RATE // 10     # shorter clips are zero-padded to 0.1 s (the convs need frames)


# ---- audio input ---------------------------------------------------------------------------------
def as_clips(wavs) -> list[torch.Tensor]:
    """A list of clips, each (T,) or (1, T), numpy or torch, or a (N, T) batch -> list of float32
    (T,) tensors, short ones zero-padded to MIN_SAMPLES. Raises ValueError on empty or non-finite
    clips (a broken generation must not score as silence)."""
    if isinstance(wavs, (np.ndarray, torch.Tensor)):
        if wavs.ndim != 2:
            raise ValueError(f"expected a list of 1-D clips or a (N, T) batch, got an array of shape {tuple(wavs.shape)}")
        wavs = list(wavs)
    if len(wavs) == 0:
        raise ValueError("no clips given")
    out = []
    for i, w in enumerate(wavs):
        w = torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w).detach().float().cpu()
        if w.ndim == 2 and w.shape[0] == 1:
            w = w[0]
        if w.ndim != 1:
            raise ValueError(f"clip {i}: expected mono audio (T,) or (1, T) at {SAMPLE_RATE} Hz, got shape {tuple(w.shape)}")
        if w.numel() == 0:
            raise ValueError(f"clip {i} is empty (0 samples)")
        if not torch.isfinite(w).all():
            raise ValueError(f"clip {i} has NaN or inf samples")
        out.append(F.pad(w, (0, MIN_SAMPLES - len(w))) if len(w) < MIN_SAMPLES else w)
    return out


def pad_batch(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of (T_i,) -> (zero-padded (B, max T), lengths (B,) long)."""
    lengths = torch.tensor([len(c) for c in clips])
    return nn.utils.rnn.pad_sequence(clips, batch_first=True), lengths


# ---- features and folders ------------------------------------------------------------------------
class LogMel(nn.Module):
    """(B, T) float at 16 kHz with lengths (B,) -> (log-mel (B, n_mels, F), frame lengths (B,)).

    torchaudio's MelSpectrogram(16000, n_fft=400, hop_length=hop, n_mels) computed directly (its
    window buffer cannot be saved with safetensors' save_model): 25 ms Hann windows every ``hop``
    samples, power spectrum, HTK mel filters, log(power + 1e-6), then a fixed per-bin standardisation
    (``mean``/``std`` buffers, set from training audio by ``fit`` and saved with the model)."""

    def __init__(self, n_mels: int = 80, hop: int = 160, n_fft: int = 400):
        super().__init__()
        self.hop, self.n_fft = hop, n_fft
        # fixed tensors, rebuilt on load rather than saved
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", AF.melscale_fbanks(n_fft // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE),
                             persistent=False)                                   # (n_fft/2 + 1, n_mels)
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def raw(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., T) -> unnormalised log-mel (..., n_mels, T // hop + 1)."""
        shape = wav.shape
        spec = torch.stft(wav.reshape(-1, shape[-1]), self.n_fft, self.hop, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True).abs().pow(2)
        return torch.log((spec.transpose(-1, -2) @ self.fb).transpose(-1, -2) + 1e-6).reshape(*shape[:-1], -1, spec.shape[-1])

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.raw(wav) - self.mean[:, None]) / self.std[:, None]
        return x, lengths // self.hop + 1

    @torch.no_grad()
    def fit(self, clips: list[torch.Tensor]) -> None:
        """Set mean/std per mel bin over all frames of ``clips`` (list of (T,))."""
        x = torch.cat([self.raw(c.to(self.mean.device)) for c in clips], dim=-1)   # (n_mels, total F)
        self.mean.copy_(x.mean(-1))
        self.std.copy_(x.std(-1).clamp_min(1e-3))


class Pretrained(nn.Module):
    """A model folder: config.json ({"kind", "config": constructor kwargs, "meta"}) + model.safetensors.
    Loading reads safetensors only, never a pickle."""
    KIND = ""

    def save_pretrained(self, folder, **meta) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors.tmp"))
        os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
        (folder / "config.json.tmp").write_text(json.dumps({"kind": self.KIND, "config": self.config, "meta": meta}, indent=2))
        os.replace(folder / "config.json.tmp", folder / "config.json")
        return folder

    @classmethod
    def from_pretrained(cls, folder, device=None):
        folder = Path(folder)
        for f in ("config.json", "model.safetensors"):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder / f} not found: not a {cls.KIND} folder (config.json + model.safetensors)")
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("kind") != cls.KIND:
            raise ValueError(f"{folder} holds a {cfg.get('kind')!r} model, not {cls.KIND!r}")
        model = cls(**cfg["config"])
        load_model(model, str(folder / "model.safetensors"), strict=True)
        model.meta = cfg.get("meta", {})
        return model.eval().to(device) if device else model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class ConvBlock(nn.Module):
    """Pre-norm residual 1-D conv: (B, C, F) -> (B, C, F), x + conv(gelu(layernorm(x)))."""

    def __init__(self, channels: int, kernel: int = 5, dilation: int = 1, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(channels)   # per frame: batch padding never enters the statistics (BatchNorm)
        self.conv = nn.Conv1d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.conv(F.gelu(self.norm(x.transpose(1, 2)).transpose(1, 2))))


# ---- CTC phoneme recogniser ----------------------------------------------------------------------
class CTCRecognizer(Pretrained):
    """Phoneme recogniser: wav -> log-mel (80, 10 ms hop) -> conv (stride 2: 20 ms frames) ->
    residual convs -> BiGRU -> per-frame log-probs over [blank] + ``phonemes`` (pause '_' included:
    it is a label like any other, so alignment can place pauses)."""
    KIND = "speech-ctc"

    def __init__(self, phonemes: list[str], channels: int = 192, blocks: int = 3, hidden: int = 192,
                 gru_layers: int = 1, n_mels: int = 80, hop: int = 160, dropout: float = 0.1):
        super().__init__()
        self.config = dict(phonemes=list(phonemes), channels=channels, blocks=blocks, hidden=hidden,
                           gru_layers=gru_layers, n_mels=n_mels, hop=hop, dropout=dropout)
        self.phonemes = list(phonemes)
        self.index = {p: i + 1 for i, p in enumerate(self.phonemes)}     # 0 is the CTC blank
        self.features = LogMel(n_mels, hop)
        self.stem = nn.Conv1d(n_mels, channels, 5, stride=2, padding=2)
        self.blocks = nn.Sequential(*[ConvBlock(channels, 5, 2 ** (i % 3), dropout) for i in range(blocks)])
        self.gru = nn.GRU(channels, hidden, gru_layers, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, len(self.phonemes) + 1)

    @property
    def frame_hop(self) -> int:
        """Samples per output frame (320 = 20 ms)."""
        return 2 * self.features.hop

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav (B, T), lengths (B,) -> (log-probs (B, F, 1 + P), frame lengths (B,))."""
        x, n = self.features(wav, lengths)
        x = self.blocks(F.gelu(self.stem(x))).transpose(1, 2)          # (B, F, C)
        n = ((n - 1) // 2 + 1).clamp(max=x.shape[1])
        # packed, so the backward GRU starts at each clip's last frame, not in the padding
        packed = nn.utils.rnn.pack_padded_sequence(x, n.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return self.out(h).log_softmax(-1), n

    @torch.no_grad()
    def log_probs(self, wavs, batch: int = 16) -> list[torch.Tensor]:
        """Clips -> per clip log-probs (F_i, 1 + P) on CPU (batched by similar length)."""
        clips = as_clips(wavs)
        self.eval()
        out: list[torch.Tensor | None] = [None] * len(clips)
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            wav, lengths = pad_batch([clips[i] for i in idx])
            lp, n = self(wav.to(self.device), lengths.to(self.device))
            for k, i in enumerate(idx):
                out[i] = lp[k, :n[k]].cpu()
        return out

    def transcribe(self, wavs, batch: int = 16) -> list[list[str]]:
        """Clips (list of (T,) at 16 kHz) -> greedy CTC phoneme lists (repeats merged, blanks dropped)."""
        hyps = []
        for lp in self.log_probs(wavs, batch):
            ids = torch.unique_consecutive(lp.argmax(-1)).tolist()
            hyps.append([self.phonemes[i - 1] for i in ids if i != 0])
        return hyps

    def align(self, wav, phonemes: list[str]) -> list[int]:
        """CTC forced alignment (torchaudio.functional.forced_align) of one clip (T,) to its
        phonemes [P] -> start sample of each phoneme [P], non-decreasing, the first at 0 (it takes
        the leading silence, as in the corpus). Runs of pauses are aligned as one pause and split
        evenly.

        CTC emits a phoneme on a few frames somewhere inside it and blanks around; a boundary is
        put halfway through the blanks between two emissions (against espeak-ng's exact starts on
        corpus test clips this halves the bias of "first emitted frame", +19 ms -> -9 ms, with a
        model trained 80 s: mean error 19 ms, 67% within 20 ms)."""
        unknown = sorted({p for p in phonemes if p not in self.index})
        if unknown:
            raise ValueError(f"phonemes not in the recogniser's set: {unknown}")
        if not phonemes:
            raise ValueError("no phonemes to align")
        runs: list[list[int]] = []                    # positions in ``phonemes`` per aligned token
        for k, p in enumerate(phonemes):
            if p == PAUSE and k and phonemes[k - 1] == PAUSE:
                runs[-1].append(k)
            else:
                runs.append([k])
        tokens = [self.index[phonemes[r[0]]] for r in runs]
        clip = as_clips([wav])[0]
        lp = self.log_probs([clip])[0]                                    # (F, 1 + P)
        need = len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))
        if lp.shape[0] < need:
            raise ValueError(f"clip too short to align: {lp.shape[0]} frames of {self.frame_hop} samples "
                             f"for {len(tokens)} phonemes (needs {need})")
        path, _ = AF.forced_align(lp[None], torch.tensor([tokens], dtype=torch.int32), blank=0)
        spans = AF.merge_tokens(path[0], torch.zeros(path.shape[1]))     # one span per token, end exclusive
        bounds = [0] + [min(len(clip), (a.end + b.start) * self.frame_hop // 2) for a, b in zip(spans, spans[1:])]
        bounds.append(len(clip))
        starts = [0] * len(phonemes)
        for r, (a, b) in zip(runs, zip(bounds, bounds[1:])):
            for j, k in enumerate(r):
                starts[k] = a + (b - a) * j // len(r)
        return starts

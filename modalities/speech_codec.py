"""The speech codec: EnCodec (Défossez et al. 2022, "High Fidelity Neural Audio Compression") built
from the ``encodec`` package's own classes (SEANet encoder/decoder + residual VQ), small enough to
train here on CPU. Pretrained EnCodec weights cannot be downloaded, so the shipped codec
(assets/speech-codec) is trained on the espeak-ng corpus with a waveform L1 plus a multi-scale
mel loss (EnCodec's reconstruction terms, Sec. 3.4) and the VQ commitment loss; no
discriminators (CPU budget).

    codes = codec.encode(wav)        # (B, 1, T) float in [-1, 1] -> (B, n_q, F) long, F = T / hop
    wav   = codec.decode(codes)      # (B, n_q, F) -> (B, 1, F * hop)

Training goes through the one trainer (backbone/train.py): ``forward(wav)`` returns
``(loss, {part: loss})``, and the folder format is config.json + model.safetensors.

Official EnCodec weights load from a local safetensors file with ``Codec.from_encodec_state``
(the 24 kHz architecture by default). The official ``.th`` files are pickles, which this project
never opens; convert one yourself once, with code you trust:
``python -c "import torch,safetensors.torch as s; s.save_file(torch.load('encodec_24khz-d7cc33bc.th', weights_only=True), 'encodec_24khz.safetensors')"``.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from encodec.model import EncodecModel
from encodec.modules import SEANetDecoder, SEANetEncoder
from encodec.quantization import ResidualVectorQuantizer
from safetensors.torch import load_file, load_model, save_model
from torch import Tensor, nn

from modalities.speech_corpus import SAMPLE_RATE

DEFAULTS = dict(sample_rate=16000, n_filters=16, dimension=64, ratios=[8, 5, 4, 2], n_q=6, bins=512,
                lstm=2, causal=False, norm="weight_norm", dead_code=0.25,
                mel_scales=[256, 512, 1024, 2048], mel_floor=1e-2, wave_weight=0.1, commit_weight=1.0,
                input_gain=10.0)
OFFICIAL_24KHZ = dict(sample_rate=24000, n_filters=32, dimension=128, ratios=[8, 5, 4, 2], n_q=32, bins=1024,
                      lstm=2, causal=True, norm="weight_norm", input_gain=1.0)


def _build(c: dict):
    kw = dict(channels=1, dimension=c["dimension"], n_filters=c["n_filters"], ratios=list(c["ratios"]),
              lstm=c["lstm"], causal=c["causal"], norm=c["norm"])
    with warnings.catch_warnings():   # encodec uses the deprecated torch.nn.utils.weight_norm
        warnings.simplefilter("ignore")
        enc, dec = SEANetEncoder(**kw), SEANetDecoder(**kw)
    q = ResidualVectorQuantizer(dimension=c["dimension"], n_q=c["n_q"], bins=c["bins"],
                                threshold_ema_dead_code=c.get("dead_code", 2))
    frame_rate = math.ceil(c["sample_rate"] / enc.hop_length)
    # kbps of all n_q codebooks, nudged up so encodec's floor(bandwidth / per-codebook) never rounds to n_q - 1
    bandwidth = c["n_q"] * math.log2(c["bins"]) * frame_rate / 1000 * (1 + 1e-9)
    m = EncodecModel(enc, dec, q, [bandwidth], c["sample_rate"], 1, normalize=False, name="omniar")
    m.set_target_bandwidth(bandwidth)
    return m


class Codec(nn.Module):
    """EnCodec at one bandwidth (all ``n_q`` codebooks). ``config`` overrides DEFAULTS."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = {**DEFAULTS, **(config or {})}
        self.model = _build(self.config)
        self.sample_rate = self.config["sample_rate"]
        self.hop = self.model.encoder.hop_length
        self.n_q, self.bins = self.config["n_q"], self.config["bins"]
        self.frame_rate = self.sample_rate / self.hop
        # espeak-ng speech sits around -25 dBFS; at SEANet's initial scale such an input barely moves
        # the encoder's output past its biases, and the autoencoder sat at an average spectrum for
        # 400+ steps. A fixed gain in front of the encoder (undone after the decoder) fixed that.
        self.gain = float(self.config.get("input_gain", 1.0))
        self._mels = None

    # ---- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) or (T,) float -> codes (B, n_q, ceil(T / hop)) long."""
        wav = self._as_batch(wav)
        emb = self.model.encoder(wav * self.gain)                                   # (B, D, F)
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.model.bandwidth)  # (n_q, B, F)
        return codes.transpose(0, 1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, n_q', F) long (n_q' <= n_q: the first levels only) -> wav (B, 1, F * hop)."""
        if codes.dim() != 3 or codes.shape[1] > self.n_q:
            raise ValueError(f"codes must be (B, <= {self.n_q}, F), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.bins):
            raise ValueError(f"codes must lie in [0, {self.bins})")
        emb = self.model.quantizer.decode(codes.transpose(0, 1))                    # (B, D, F)
        return self.model.decoder(emb) / self.gain

    def _as_batch(self, wav: Tensor) -> Tensor:
        if wav.dim() == 1:
            wav = wav[None, None]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"wav must be (B, 1, T) or (T,), got {tuple(wav.shape)}")
        pad = (-wav.shape[-1]) % self.hop   # whole frames: F = ceil(T / hop)
        return F.pad(wav, (0, pad)) if pad else wav

    # ---- training --------------------------------------------------------------------------
    def mel_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """EnCodec's multi-scale spectral loss: L1 + L2 between log-mels at several window sizes
        (here 256..2048 samples, hop = window / 4). x, y (B, 1, T) -> scalar.
        Magnitudes are floored at ``mel_floor`` (-40 dB under a typical speech bin) before the log:
        espeak-ng writes exact digital silence, and with a tiny floor the loss was dominated by
        how silent the silence is (batch-to-batch loss swings of 2x) rather than by the speech."""
        if self._mels is None:
            self._mels = [torchaudio.transforms.MelSpectrogram(self.sample_rate, n_fft=n, hop_length=n // 4,
                                                               n_mels=min(80, n // 8), power=1.0).to(x.device)
                          for n in self.config["mel_scales"]]
        loss = 0.0
        for mel in self._mels:
            a, b = (torch.log(mel(v.squeeze(1)).clamp(min=self.config.get("mel_floor", 1e-5))) for v in (x, y))
            loss = loss + F.l1_loss(a, b) + F.mse_loss(a, b)
        return loss / len(self._mels)

    def forward(self, wav: Tensor) -> tuple[Tensor, dict]:
        """wav (B, 1, T) -> (loss, {"mel", "wave", "commit"}) for the trainer."""
        wav = self._as_batch(wav)
        emb = self.model.encoder(wav * self.gain)
        q = self.model.quantizer(emb, self.model.frame_rate, self.model.bandwidth)
        out = self.model.decoder(q.quantized)[..., :wav.shape[-1]] / self.gain
        parts = {"mel": self.mel_loss(out, wav), "wave": F.l1_loss(out, wav), "commit": q.penalty}
        c = self.config
        return parts["mel"] + c["wave_weight"] * parts["wave"] + c["commit_weight"] * parts["commit"], parts

    # ---- folders ---------------------------------------------------------------------------
    def save_pretrained(self, folder, tokenizer=None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self, str(folder / "model.safetensors.tmp"))
        os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
        (folder / "config.json.tmp").write_text(json.dumps({"codec": self.config, **getattr(self, "meta", {})}, indent=2))
        os.replace(folder / "config.json.tmp", folder / "config.json")
        return folder

    @classmethod
    def from_pretrained(cls, folder, device=None) -> "Codec":
        folder = Path(folder)
        for f in ("config.json", "model.safetensors"):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder / f} not found: not a codec folder (config.json + model.safetensors)")
        c = cls(json.loads((folder / "config.json").read_text())["codec"])
        load_model(c, str(folder / "model.safetensors"), strict=True)
        return c.eval().to(device) if device else c.eval()

    @classmethod
    def from_encodec_state(cls, path, **arch) -> "Codec":
        """Official EnCodec weights (an ``encodec.EncodecModel`` state dict) from a local
        safetensors file. ``arch`` overrides the official 24 kHz architecture (OFFICIAL_24KHZ)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only safetensors is read (no pickles); convert the .th file as the "
                             "module docstring of modalities/speech_codec.py shows")
        c = cls({**OFFICIAL_24KHZ, **arch})
        state = load_file(str(path))
        missing, unexpected = c.model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith(".inited")]:
            raise ValueError(f"{path} does not match the EnCodec architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for m in c.model.quantizer.modules():   # the official state dicts carry trained codebooks
            if hasattr(m, "inited"):
                m.inited.fill_(True)
        return c.eval()


class CodecTask:
    """Random ``seconds``-long crops of training utterances for the trainer; seeded by step.
    Its batches are raw waveforms for the codec autoencoder ({"wav": (B, 1, T)}), not token
    sequences for the backbone: there is nothing for ``backbone.sequence.pack`` to lay out."""

    def __init__(self, corpus, batch_size: int, seconds: float = 1.0, seed: int = 0, eval_batches: int = 2):
        self.corpus, self.bs, self.seed = corpus, batch_size, seed
        self.T = int(seconds * SAMPLE_RATE)
        self.train_rows = [r for r in corpus.rows("train") if r["n"] >= self.T]
        self.val_rows = [r for r in corpus.rows("val") if r["n"] >= self.T]
        self._eval = [self._batch(self.val_rows, torch.Generator().manual_seed(10_000 + i), self.bs)
                      for i in range(eval_batches)]

    def _batch(self, rows, g: torch.Generator, n: int) -> dict:
        out = []
        for _ in range(n):
            r = rows[int(torch.randint(len(rows), (1,), generator=g))]
            s = int(torch.randint(r["n"] - self.T + 1, (1,), generator=g))
            out.append(self.corpus.pcm[r["offset"] + s:r["offset"] + s + self.T].float() / 32768.0)
        return {"wav": torch.stack(out)[:, None]}

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 101 + micro)
        b = self._batch(self.train_rows, g, self.bs)
        return {"wav": b["wav"][rows]}

    def eval_batches(self) -> list[dict]:
        return self._eval


"""Time series as tokens of a language model (Chronos, Ansari et al. 2024, "Chronos: Learning
the Language of Time Series"): mean scaling, then uniform quantisation into bins.

Each series is divided by the mean absolute value of its observed context (with a floor, so an
all-zero context stays finite and forecasts zeros), and every scaled value becomes the id of the
nearest of ``n_bins`` uniformly spaced bin centres over [low, high] (values beyond the range fall
into the end bins). Missing values and left padding are the PAD token; EOS is available for
sequences that need an end marker. The ids are laid out so that an LM head over the first
``n_bins`` ids is an LM head over bins:

    0 .. n_bins-1   bins (centre i = low + i * width)
    n_bins          PAD  (missing value, left padding)
    n_bins + 1      EOS

With an integer low and (n_bins - 1) a multiple of (high - low), every integer in range is a
centre: the default 1021 bins over [-15, 15] (width 1/34) keep 0 and 1 (a constant series) exact.

``bin_segment`` turns a row of ids into a span of a training sequence (backbone/sequence.py):
the left padding is cut off (the packer pads it back on the left and hides it, as generation
does for a left-padded prompt), PAD inside the row stays an input token, and the LM head is
scored on every next token that is a bin.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from backbone.sequence import Segment


class BinTokenizer:
    """Mean scaling + uniform bins. ``to_config()`` / ``from_config()`` round-trip through JSON."""

    def __init__(self, n_bins: int = 1021, low: float = -15.0, high: float = 15.0, min_scale: float = 1e-10):
        if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"the bin range needs finite low < high, got low={low!r}, high={high!r}")
        if not (math.isfinite(min_scale) and min_scale > 0):
            raise ValueError(f"min_scale must be a positive number, got {min_scale!r}")
        self.n_bins, self.low, self.high, self.min_scale = int(n_bins), float(low), float(high), float(min_scale)
        self.centres = np.linspace(self.low, self.high, self.n_bins)                 # (n_bins,)
        self.edges = (self.centres[1:] + self.centres[:-1]) / 2                      # (n_bins - 1,)
        self.width = (self.high - self.low) / (self.n_bins - 1)
        self.pad_id, self.eos_id = self.n_bins, self.n_bins + 1
        self.vocab_size = self.n_bins + 2

    # ---- config ---------------------------------------------------------------------------------
    def to_config(self) -> dict:
        return {"kind": "mean_scale_uniform_bins", "n_bins": self.n_bins, "low": self.low, "high": self.high,
                "min_scale": self.min_scale}

    @classmethod
    def from_config(cls, cfg: dict) -> "BinTokenizer":
        if not isinstance(cfg, dict) or cfg.get("kind", "mean_scale_uniform_bins") != "mean_scale_uniform_bins":
            raise ValueError(f"not a bin tokenizer config: {cfg!r}")
        return cls(**{k: cfg[k] for k in ("n_bins", "low", "high", "min_scale") if k in cfg})

    # ---- numbers <-> ids ------------------------------------------------------------------------
    def scale_of(self, context: np.ndarray) -> np.ndarray:
        """context (B, L) float with NaN -> scale (B,): mean |observed value|, floored at min_scale
        (a row without any observed value gets 1)."""
        obs = ~np.isnan(context)
        n = obs.sum(-1)
        mean_abs = np.where(obs, np.abs(context), 0.0).sum(-1) / np.maximum(n, 1)
        return np.where(n > 0, np.maximum(mean_abs, self.min_scale), 1.0)

    def tokenize(self, values: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """values (B, L) float with NaN, scale (B,) -> ids (B, L) int64; NaN -> PAD."""
        values = np.asarray(values, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        if values.ndim != 2 or scale.shape != values.shape[:1]:
            raise ValueError(f"tokenize takes values (B, L) and scale (B,), got {values.shape} and {scale.shape}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scale must be finite and positive")
        nan = np.isnan(values)
        z = np.where(nan, 0.0, values) / scale[:, None]
        ids = np.searchsorted(self.edges, z)  # nearest centre; beyond the range -> the end bins
        return np.where(nan, self.pad_id, ids).astype(np.int64)

    def encode(self, context, length: int | None = None) -> tuple[Tensor, Tensor]:
        """A batch of ragged 1-D series (NaN = missing) -> ids (B, L) long, scale (B,) float64.

        Series are right-aligned and left-padded with PAD to the longest one (or to ``length``,
        keeping only each series' last ``length`` points); each row is scaled by the mean
        absolute value of its own observed points."""
        if isinstance(context, (np.ndarray, Tensor)) and np.ndim(context) == 1:
            context = [context]
        if isinstance(context, (np.ndarray, Tensor)) and np.ndim(context) == 2:
            context = list(context)
        if not isinstance(context, (list, tuple)) or not context:
            raise ValueError("context must be a 1-D series, a (B, L) array or a non-empty list of series")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive integer, got {length!r}")
        rows = []
        for i, c in enumerate(context):
            try:
                a = np.asarray(c.detach().cpu() if isinstance(c, Tensor) else c, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"series {i} must be a 1-D sequence of numbers ({e})") from None
            if a.ndim != 1 or a.size == 0:
                raise ValueError(f"series {i} must be a non-empty 1-D sequence, got shape {a.shape}")
            if np.isinf(a).any():
                raise ValueError(f"series {i} contains infinite values")
            rows.append(a if length is None else a[-length:])
        L = length or max(len(r) for r in rows)
        x = np.full((len(rows), L), np.nan)                                          # (B, L)
        for i, r in enumerate(rows):
            x[i, L - len(r):] = r
        scale = self.scale_of(x)                                                     # (B,)
        return torch.from_numpy(self.tokenize(x, scale)), torch.from_numpy(scale)

    def decode(self, ids, scale) -> np.ndarray:
        """ids (B, ...) int (tensor or array), scale (B,) -> values (B, ...) float64 in the original
        units (bin centre * scale); PAD and EOS decode to NaN."""
        ids = np.asarray(ids.detach().cpu() if isinstance(ids, Tensor) else ids)
        scale = np.asarray(scale.detach().cpu() if isinstance(scale, Tensor) else scale, dtype=np.float64)
        if ids.ndim < 1 or scale.shape != ids.shape[:1]:
            raise ValueError(f"decode takes ids (B, ...) and scale (B,), got {ids.shape} and {scale.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {ids.dtype}")
        if ((ids < 0) | (ids >= self.vocab_size)).any():
            raise ValueError(f"ids must be in [0, {self.vocab_size})")
        is_bin = ids < self.n_bins
        vals = np.where(is_bin, self.centres[np.where(is_bin, ids, 0)], np.nan)
        return vals * scale.reshape((-1,) + (1,) * (ids.ndim - 1))


def leading_pad(ids: Tensor, pad_id: int) -> Tensor:
    """ids (B, L) -> (B,) number of leading PAD tokens of each row (the left padding)."""
    real = (ids != pad_id).long()
    return torch.where(real.any(-1), real.argmax(-1), torch.full_like(real[:, 0], ids.shape[1]))


def bin_segment(ids: Tensor, pad_id: int) -> Segment:
    """A row of ids (L,), left-padded with PAD -> a Segment of its real part with LM targets:
    every token is scored (pack never scores the first, which only padding precedes) unless it
    is PAD (a missing value is read, never predicted)."""
    real = ids[int(leading_pad(ids[None], pad_id)[0]):]
    return Segment(real, kind="bins", head="lm", scored=real != pad_id)

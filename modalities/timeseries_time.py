"""Timestamps as position embeddings (AutoTimes, Liu et al. 2024, Sec. 3.2).

Each segment gets the text "This is time series from 2016-07-01 00:00 to 2016-07-01 23:00";
a frozen text model embeds it (its last token's final hidden state), and the forecaster adds
a learned, scaled projection of that vector to the segment's embedding
(heads/forecast.SegmentEmbed with ``time_dim``). AutoTimes uses the LLM itself as the
timestamp encoder; our forecaster's backbone never saw text, so the encoder is a shipped text
checkpoint, named in the forecaster's config. Embeddings are cached by text: a series' segment
stamps repeat across training windows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from backbone.container import OmniModel
from modalities.text import load_tokenizer


def parse_freq(freq: str):
    """A pandas offset ('h', 'D', 'W', 'MS', '15min', ...); ValueError naming the input."""
    try:
        return pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise ValueError(f"unknown frequency {freq!r}; use a pandas alias such as 'h', 'D', 'W', 'MS'") from None


def context_start(timestamps, freq: str | None = None) -> tuple[pd.Timestamp, object]:
    """(time of the first point, offset) from a series' timestamps: the first one plus ``freq``,
    or all of them (freq inferred when not given). ValueError for unparsable or irregular ones."""
    ts = [timestamps] if isinstance(timestamps, (str, pd.Timestamp, np.datetime64)) else list(timestamps)
    if not ts:
        raise ValueError("timestamps are empty")
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(ts))
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"timestamps must be dates such as '2016-07-01 00:00' ({e})") from None
    if freq is None:
        if len(idx) < 3 or (freq := pd.infer_freq(idx)) is None:
            raise ValueError("cannot infer the frequency from the timestamps; give freq (e.g. 'h', 'D', 'MS')")
    return idx[0], parse_freq(freq)


def segment_stamps(start: pd.Timestamp, offset, first: int, n_segments: int, seg_len: int) -> list[str]:
    """The texts of ``n_segments`` segments whose first point is ``first`` steps after ``start``
    (negative for left padding)."""
    t = pd.date_range(start + first * offset, periods=n_segments * seg_len, freq=offset)
    return [f"This is time series from {t[k * seg_len]:%Y-%m-%d %H:%M} to {t[(k + 1) * seg_len - 1]:%Y-%m-%d %H:%M}"
            for k in range(n_segments)]


class TimestampEncoder:
    """Frozen text model -> one vector per timestamp text: ``encode(texts) -> (N, D_text)``."""

    def __init__(self, folder: str | Path, device=None):
        self.folder = str(folder)
        self.model = OmniModel.from_pretrained(folder, device=device).eval()
        self.tok = load_tokenizer(folder)
        self.dim = self.model.args.dim
        self.cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        new = sorted({t for t in texts if t not in self.cache})
        by_len: dict[int, list[tuple[str, list[int]]]] = {}
        for t in new:  # equal-length batches: no padding needed
            ids = self.tok.encode(t)
            by_len.setdefault(len(ids), []).append((t, ids))
        dev = next(self.model.parameters()).device
        for items in by_len.values():
            for i in range(0, len(items), 256):
                chunk = items[i:i + 256]
                h = self.model(torch.tensor([ids for _, ids in chunk], device=dev))[:, -1]   # (b, D_text)
                for (t, _), v in zip(chunk, h.float().cpu()):
                    self.cache[t] = v
        return torch.stack([self.cache[t] for t in texts]) if texts else torch.zeros(0, self.dim)

    def segments(self, start: pd.Timestamp, offset, first: int, n_segments: int, seg_len: int) -> Tensor:
        """(n_segments, D_text) stamps of consecutive segments (see ``segment_stamps``)."""
        return self.encode(segment_stamps(start, offset, first, n_segments, seg_len))

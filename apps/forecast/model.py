"""Forecasting with a segment model (AutoTimes, Liu et al. 2024): the Python API.

    Forecaster.from_pretrained("assets/forecast-etth1").predict(context, horizon=96)

A checkpoint (trained by apps/forecast/recipe.py) is an OmniModel with the ``segment`` adapter
(heads/forecast.SegmentEmbed) and the ``forecast`` head (QuantileHead). Each series is normalised
by its own context statistics, cut into segments, and rolled forward one segment per step,
feeding back the median (AutoTimes' one model for all horizons): ``SegmentRollout``, a schedule
of the one generation loop (backbone/generate.py), with the generation's own KV cache.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from backbone.container import OmniModel
from backbone.generate import Feed, Prompt, Schedule, Step, run_to_end
from backbone.sequence import pack
from modalities.timeseries import (as_series, detect_period, instance_stats, leading_gap, prompt_segments,
                                   seasonal_lag, segment, series_segment)
from modalities.timeseries_time import TimestampEncoder, context_start, parse_freq

MAX_SERIES, MAX_HORIZON, MAX_CONTEXT = 1024, 2048, 100_000


def check_request(context, horizon) -> list:
    """The checks every forecaster makes of a request: ``context`` a 1-D series or a non-empty list
    of at most MAX_SERIES of them, ``horizon`` an integer in [1, MAX_HORIZON] -> the list of series
    (ValueError naming the problem otherwise)."""
    if isinstance(context, (np.ndarray, Tensor)) and np.ndim(context) == 1:
        context = [context]
    if not isinstance(context, (list, tuple)) or not context:
        raise ValueError("context must be a 1-D series or a non-empty list of them")
    if len(context) > MAX_SERIES:
        raise ValueError(f"at most {MAX_SERIES} series per call, got {len(context)}")
    if isinstance(horizon, bool) or not (isinstance(horizon, int) and 1 <= horizon <= MAX_HORIZON):
        raise ValueError(f"horizon must be an integer in [1, {MAX_HORIZON}], got {horizon!r}")
    return list(context)


class SegmentRollout(Schedule):
    """The forecast rollout as a schedule: the context's segment tokens are prefilled through the
    ``segment`` adapter; at each step the ``forecast`` head samples the next segment's quantiles
    (B, S, Q), and their median, fully observed (with the segment's timestamp features, if any),
    is embedded as the next input. ``result()``: (B, steps * S, Q) quantiles, normalised units.
    With the seasonal-lag channel, each fed segment also carries the seasonal-naive forecast of the
    one after it, read off the context and the medians fed so far at the periods ``periods``."""

    def __init__(self, model: OmniModel, tokens: Tensor, steps: int, stamps: Tensor | None = None,
                 periods: Tensor | None = None):
        """tokens (B, T, 2S [+ 2S lag] [+ Dt]): the context; stamps (B, steps, Dt): the rollout's
        timestamp features (models with timestamps); periods (B,): the seasons of models with the lag
        channel. All on the model's device."""
        self.model, self.tokens, self.steps, self.stamps = model, tokens, steps, stamps
        self.embed, self.mid = model.adapters["segment"], model.heads["forecast"].mid
        self.preds: list[Tensor] = []
        self.periods = periods
        if getattr(self.embed, "lag", False):
            S = self.embed.seg_len
            self.hist = tokens[..., :2 * S].to(periods.device)    # (B, T, 2S): the lag channel's source

    def prompt(self) -> Prompt:
        rows = [[series_segment(x)] for x in self.tokens]
        return pack(rows, side="left").prompt(self.model, self.tokens.shape[1] + self.steps)

    def next(self, h: Tensor) -> Step:
        return Step("forecast", h[:, -1])                                                   # (B, D)

    def feed(self, q: Tensor) -> Feed | None:
        self.preds.append(q)                                                                # (B, S, Q)
        k = len(self.preds)
        if k == self.steps:
            return None
        med = q[..., self.mid]                                                              # (B, S)
        nxt = torch.cat([med, torch.ones_like(med)], -1)[:, None]                           # (B, 1, 2S)
        if getattr(self.embed, "lag", False):
            self.hist = torch.cat([self.hist, nxt], 1)
            nxt = torch.cat([nxt, seasonal_lag(self.hist[:, -self._lag_window():], self.periods)[:, -1:]], -1)
        if self.stamps is not None:
            nxt = torch.cat([nxt, self.stamps[:, k - 1:k]], -1)
        return Feed(embeds=self.embed(nxt))                                                 # (B, 1, D)

    def _lag_window(self) -> int:
        """Segments of history the next lag token can reach: one season (and a segment) back."""
        return int(self.periods.max()) // self.embed.seg_len + 2

    def result(self) -> Tensor:
        return torch.cat(self.preds, 1)


class Forecaster:
    """``Forecaster.from_pretrained(folder).predict(context, horizon, quantiles)``."""

    def __init__(self, model: OmniModel):
        if "forecast" not in model.heads or "segment" not in model.adapters:
            raise ValueError("not a forecasting checkpoint (needs the 'segment' adapter and 'forecast' head)")
        self.model = model.eval()
        self.S = model.config["meta"]["seg_len"]
        self.T = model.config["meta"]["context_segments"]
        self.time_encoder = None
        if getattr(model.adapters["segment"], "time_dim", 0):
            self.time_encoder = TimestampEncoder(model.config["meta"]["timestamps"]["encoder"])

    @classmethod
    def from_pretrained(cls, folder, device=None) -> "Forecaster":
        return cls(OmniModel.from_pretrained(folder, device=device))

    @torch.no_grad()
    def predict(self, context, horizon: int, quantiles=(0.1, 0.5, 0.9), batch_size: int = 256,
                examples=None, timestamps=None, freq: str | None = None, season=None) -> np.ndarray:
        """context: a 1-D array/tensor or a list of them (any lengths, NaN allowed).
        Returns (series, horizon, len(quantiles)) in the original units.

        ``examples`` (in-context forecasting, AutoTimes): other series from the same source,
        either one list for every context or one list per context. They fill the context's
        left padding (each normalised by itself, an empty segment after each), so they only
        take effect when a context is shorter than the model's ``context_segments``.

        ``timestamps`` (per context: the timestamps of all its points, or of its first point with
        ``freq``, a pandas alias such as 'h' or 'MS'; None entries allowed) feed models trained
        with timestamps as positions; other models ignore them.

        ``season`` (models with the seasonal-lag channel): the period in points, one int for every
        context or one per context; None (or 0) detects it from each context
        (modalities/timeseries.detect_period); 1 means no season. Other models ignore it."""
        context = check_request(context, horizon)
        head = self.model.heads["forecast"]
        qidx = []
        for q in quantiles:
            if q not in head.quantiles:
                raise ValueError(f"quantile {q} is not one the model predicts; choose from {list(head.quantiles)}")
            qidx.append(head.quantiles.index(q))
        series = [as_series(c, f"series {i}") for i, c in enumerate(context)]
        if any(len(s) > MAX_CONTEXT for s in series):
            raise ValueError(f"a series is longer than {MAX_CONTEXT} points")
        for i, s in enumerate(series):
            if np.isnan(s[-self.T * self.S:]).all():
                raise ValueError(f"series {i} has no observed value in its last {self.T * self.S} points "
                                 "(the model's context)")
        if examples is not None:
            if not isinstance(examples, (list, tuple)):
                raise ValueError("examples must be a list of series, or one list of series per context")
            per = len(examples) == len(series) and all(isinstance(e, (list, tuple)) for e in examples)
            examples = [[as_series(x, f"example {j}") for j, x in enumerate(e)] for e in
                        (examples if per else [examples] * len(series))]
            if sum(len(x) for e in examples for x in e) > MAX_CONTEXT * 4:
                raise ValueError("the examples are too long in total")
        seasons = self.seasons(season, series)
        starts = [None] * len(series)
        if timestamps is not None and self.time_encoder is not None:
            if freq is not None:
                parse_freq(freq)
            if not isinstance(timestamps, (list, tuple)) or len(timestamps) != len(series):
                raise ValueError(f"timestamps must be a list with one entry per series ({len(series)})")
            for i, (t, x) in enumerate(zip(timestamps, series)):
                if t is None:
                    continue
                if not isinstance(t, str) and len(t) not in (1, len(x)):
                    raise ValueError(f"series {i}: {len(t)} timestamps for {len(x)} points")
                starts[i] = context_start(t, freq)
        out = []
        for i in range(0, len(series), batch_size):
            ex = examples[i:i + batch_size] if examples is not None else None
            out.append(self._predict(series[i:i + batch_size], horizon, qidx, ex, starts[i:i + batch_size],
                                     seasons[i:i + batch_size]))
        return np.concatenate(out)

    @property
    def seasonal(self) -> bool:
        """Whether the model reads a season (the seasonal-lag channel)."""
        return bool(getattr(self.model.adapters["segment"], "lag", False))

    def seasons(self, season, series: list[np.ndarray]) -> list[int]:
        """The period of each series: given (one for all, or one each) or detected; ValueError if
        not a positive integer below MAX_CONTEXT."""
        per = list(season) if isinstance(season, (list, tuple, np.ndarray)) else [season] * len(series)
        if len(per) != len(series):
            raise ValueError(f"season must be one integer or one per series ({len(series)}), got {len(per)}")
        out = []
        for p, s in zip(per, series):
            if p is None or (isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p == 0):
                out.append(detect_period(s[-self.T * self.S:]) if self.seasonal else 1)
            elif isinstance(p, (int, np.integer)) and not isinstance(p, bool) and 1 <= p <= MAX_CONTEXT:
                out.append(int(p))
            else:
                raise ValueError(f"season must be a positive integer (the period in points), got {p!r}")
        return out

    def _predict(self, series: list[np.ndarray], horizon: int, qidx: list[int], examples=None,
                 starts=None, seasons=None) -> np.ndarray:
        S, T = self.S, self.T
        stats = [instance_stats(s[-T * S:]) for s in series]
        x = torch.stack([segment(s, S, m, sd, T) for s, (m, sd) in zip(series, stats)])     # (B, T, 2S)
        for i, ex in enumerate(examples or []):
            free = leading_gap(x[i])
            if free >= 2:
                x[i, :free] = prompt_segments(ex, S, free)
        steps = -(-horizon // S)
        if T + steps > self.model.args.block_size:
            raise ValueError(f"horizon {horizon} needs {T + steps} segments but the model's context is "
                             f"{self.model.args.block_size}")
        periods = None
        if self.seasonal:                                      # (B, T, 4S): the seasonal-naive channel
            periods = torch.tensor(seasons or [1] * len(series))
            x = torch.cat([x, seasonal_lag(x, periods)], -1)
            periods = periods.to(next(self.model.parameters()).device)
        stamps = None
        if self.time_encoder is not None:  # (B, T + steps, Dt): stamps of the context and the rollout
            enc = self.time_encoder
            tf = torch.stack([enc.segments(*st, len(s) - T * S, T + steps, S) if st else
                              torch.zeros(T + steps, enc.dim) for s, st in zip(series, starts or [None] * len(series))])
            x, stamps = torch.cat([x, tf[:, :T]], -1), tf[:, T:].to(next(self.model.parameters()).device)
        q = run_to_end(self.model, SegmentRollout(self.model, x, steps, stamps, periods))       # (B, steps * S, Q)
        y = q[:, :horizon][..., qidx].double().cpu().numpy()                                    # (B, H, q)
        mean = np.array([m for m, _ in stats])[:, None, None]
        std = np.array([sd for _, sd in stats])[:, None, None]
        return y * std + mean

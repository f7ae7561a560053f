"""Forecasting speed: forecasts per second for a batch of 64 series (context 512, horizon 64),
ours (the shipped ETTh1 model, CPU) against statsforecast AutoETS (season 24) in the same run;
and the REST API's latency with 20 concurrent clients on loopback (p50 / p95).

    python -m benchmarks.forecast_speed [--requests 10]

Writes benchmarks/results/forecast_speed.json.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from apps.forecast.model import Forecaster  # noqa: E402
from apps.forecast.recipe import ett_series  # noqa: E402
from benchmarks import common  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "timeseries" / "ETTh1.csv"


def batch_of_series(n: int = 64, length: int = 512) -> list[np.ndarray]:
    """n windows of the ETTh1 test months (all channels), seeded."""
    series = ett_series(DATA, 672)["test"]
    g = np.random.default_rng(0)
    out = []
    for _ in range(n):
        s = series[g.integers(len(series))]
        t = g.integers(length, len(s))
        out.append(s[t - length:t])
    return out


def time_ours(xs, horizon: int, reps: int) -> float:
    fc = Forecaster.from_pretrained(ROOT / "assets" / "forecast-etth1")
    fc.predict(xs, horizon)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fc.predict(xs, horizon)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_autoets(xs, horizon: int) -> float:
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS
    df = pd.concat([pd.DataFrame({"unique_id": i, "ds": np.arange(len(x)), "y": x}) for i, x in enumerate(xs)])
    sf = StatsForecast(models=[AutoETS(season_length=24)], freq=1, n_jobs=1)
    t0 = time.perf_counter()
    sf.forecast(df=df, h=horizon)
    return time.perf_counter() - t0


def rest_latency(xs, horizon: int, clients: int, requests: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve-forecast", "--port", str(port),
                             "--max-waiting", str(4 * clients)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        body = json.dumps({"series": [xs[0].tolist()], "horizon": horizon}).encode()

        def one(_):
            req = urllib.request.Request(base + "/v1/forecast", data=body, headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                ok = r.status == 200
            return time.perf_counter() - t0, ok

        one(0)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as ex:
            res = list(ex.map(one, range(clients * requests)))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    lat = sorted(r[0] for r in res)
    return {"clients": clients, "requests": len(res), "ok": sum(r[1] for r in res),
            "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
            "requests_per_s": len(res) / wall}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    xs = batch_of_series()
    ours = time_ours(xs, 64, 5)
    ets = time_autoets(xs, 64)
    rest = rest_latency(xs, 64, 20, a.requests)
    rows = [{"engine": "ours (batch of 64)", "seconds": ours, "forecasts_per_s": 64 / ours},
            {"engine": "statsforecast AutoETS (season 24)", "seconds": ets, "forecasts_per_s": 64 / ets}]
    common.print_table(rows, ["engine", "seconds", "forecasts_per_s"])
    print(f"ours / AutoETS: {ets / ours:.1f}x forecasts per second")
    print(f"REST, 20 concurrent clients x {a.requests}: p50 {rest['p50_ms']:.1f} ms, p95 {rest['p95_ms']:.1f} ms, "
          f"{rest['requests_per_s']:.1f} requests/s, {rest['ok']}/{rest['requests']} ok")
    path = common.write_result("forecast_speed", {"batch": rows, "speedup_vs_autoets": ets / ours, "rest": rest,
                                                  "context": 512, "horizon": 64})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""The forecasting REST API, started for real on a loopback port and called over HTTP."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve-forecast", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(proc.stderr.read())
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(base, body) -> tuple[int, dict]:
    req = urllib.request.Request(base + "/v1/forecast", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health_docs_and_a_forecast(server):
    assert json.loads(urllib.request.urlopen(server + "/health").read())["status"] == "ok"
    assert "/v1/forecast" in json.loads(urllib.request.urlopen(server + "/openapi.json").read())["paths"]
    x = (np.sin(np.arange(300) / 24 * 2 * np.pi) * 3 + 10).tolist()
    x[5] = None
    code, body = post(server, {"series": [x, x[-40:]], "horizon": 30, "quantiles": [0.1, 0.5, 0.9]})
    assert code == 200, body
    f = np.array(body["forecast"])
    assert f.shape == (2, 30, 3) and np.isfinite(f).all() and (np.diff(f, axis=-1) >= 0).all()
    code, body = post(server, {"series": [x, x[-40:]], "horizon": 30, "timestamps": ["2020-01-01 00:00", None],
                               "freq": "h"})
    assert code == 200 and np.array(body["forecast"]).shape == (2, 30, 3), body
    code, body = post(server, {"series": [x], "horizon": 30, "season": 24})
    assert code == 200 and np.array(body["forecast"]).shape == (1, 30, 3), body


@pytest.mark.parametrize("body, code, msg", [
    ({"series": [], "horizon": 5}, 422, "at least 1"),
    ({"series": [[]], "horizon": 5}, 422, "empty"),
    ({"series": [[None, None]], "horizon": 5}, 422, "no observed"),
    ({"series": [["a", 1]], "horizon": 5}, 422, "number"),
    ({"series": [[1, 2]], "horizon": 0}, 422, "greater than or equal"),
    ({"series": [[1, 2]], "horizon": 100000}, 422, "less than or equal"),
    ({"series": [[1.0] * 20001], "horizon": 5}, 422, "limit"),
    ({"series": [[1, 2]] * 257, "horizon": 5}, 422, "at most 256"),
    ({"series": [[1, 2]], "horizon": 5, "quantiles": [0.33]}, 422, "quantile"),
    ({"series": [[1, 2]], "horizon": 2000}, 422, "context"),
    ({"series": [[1, 2]], "horizon": 5, "freq": "fortnightly"}, 422, "unknown frequency"),
    ({"series": [[1, 2]], "horizon": 5, "timestamps": ["2020-01-01", None]}, 422, "2 entries for 1 series"),
    ({"series": [[1, 2]], "horizon": 5, "season": 0}, 422, "greater than or equal"),
    ({"series": [[1, 2]], "horizon": 5, "season": "12"}, 422, "integer"),
])
def test_bad_requests_get_a_clear_4xx(server, body, code, msg):
    got, detail = post(server, body)
    assert got == code and msg in json.dumps(detail), detail


def test_concurrent_clients_all_get_answers(server):
    x = np.random.default_rng(0).normal(size=200).tolist()
    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda _: post(server, {"series": [x], "horizon": 24})[0], range(16)))
    assert codes == [200] * 16

"""Quality of the shipped ETTh1 forecaster on validation windows it never trained on (fixed)."""
import json
from pathlib import Path

import numpy as np
import pytest

from apps.forecast.model import Forecaster
from apps.forecast.recipe import ett_series

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "forecast-etth1"
DATA = ROOT / ".." / "shared" / "data" / "timeseries" / "ETTh1.csv"


@pytest.fixture(scope="module")
def val_windows():
    series = ett_series(DATA, 672)["val"]
    xs, ys = [], []
    for s in series:
        for t in range(672, len(s) - 96 + 1, 96):
            xs.append(s[t - 672:t])
            ys.append(s[t:t + 96])
    return np.array(xs), np.array(ys)


def test_config_records_how_it_was_trained():
    meta = json.loads((ASSET / "config.json").read_text())["meta"]
    assert meta["train_command"] == "omniar train forecast --config configs/forecast_etth1.yaml"
    assert meta["seg_len"] == 24 and meta["context_segments"] == 28
    assert sum(f.stat().st_size for f in ASSET.iterdir()) < 20 * 2**20


def test_val_mse_beats_seasonal_naive(val_windows):
    """Horizon 96 on the 4 validation months, every 96th window of all 7 channels."""
    x, y = val_windows
    pred = Forecaster.from_pretrained(ASSET).predict(list(x), horizon=96, quantiles=[0.1, 0.5, 0.9])
    mse = float(((pred[..., 1] - y) ** 2).mean())
    naive = float(((np.tile(x[:, -24:], (1, 4)) - y) ** 2).mean())
    coverage = float(((y >= pred[..., 0]) & (y <= pred[..., 2])).mean())
    # measured: mse 0.727, seasonal naive 0.911, 10-90% band coverage 0.58 (too narrow: the
    # model is overconfident on months it has not seen). The val split chose dropout 0.2 (issue 20).
    assert mse < 0.78 and mse < naive, (mse, naive)
    assert 0.40 < coverage < 0.95, coverage

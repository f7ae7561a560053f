"""Forecaster: train 2 steps through the CLI, then batched ragged predictions with NaN, and
clear errors for bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from apps.forecast import Forecaster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fc")
    t = np.arange(20 * 30 * 24)
    cols = [np.sin(2 * np.pi * t / 24) + 0.01 * t / 24 + i for i in range(2)]
    lines = ["date,a,OT"] + [f"2020-01-01 00:00:00,{a:.4f},{b:.4f}" for a, b in zip(*cols)]
    (tmp / "ett.csv").write_text("\n".join(lines) + "\n")
    cfg = {"seg_len": 8, "context_segments": 6, "train_segments": 10, "data": {"ett": [str(tmp / "ett.csv")]},
           "model": {"preset": "tiny", "args": {"block_size": 16}},
           "train": {"out_dir": str(tmp / "run"), "max_steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                     "eval_every": 0, "ckpt_every": 2, "log_every": 1, "progress": False},
           "eval": {"batches": 1}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "apps.cli", "train", "forecast", "--config", str(tmp / "cfg.yaml"),
                        "--out", str(tmp / "model")], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    fc = Forecaster.from_pretrained(tmp / "model")
    fc.folder = tmp / "model"
    return fc


def test_ragged_batch_with_nan_and_constant_series(forecaster):
    x = np.sin(np.arange(100) / 3) * 5 + 20
    x[10:20] = np.nan
    out = forecaster.predict([x, x[-5:], np.full(30, 4.0)], horizon=20, quantiles=[0.1, 0.5, 0.9])
    assert out.shape == (3, 20, 3) and np.isfinite(out).all()
    assert (np.diff(out, axis=-1) >= 0).all()                      # quantiles never cross
    np.testing.assert_allclose(out[2], 4.0, atol=1e-3)             # a constant stays where it is (scale floor)
    alone = forecaster.predict(x[-5:], horizon=20, quantiles=[0.1, 0.5, 0.9])
    np.testing.assert_allclose(alone[0], out[1], rtol=1e-4, atol=1e-4)  # batching changes nothing


@pytest.mark.parametrize("ctx, kw, msg", [
    ([], {}, "non-empty"), ([[1.0, np.inf]], {}, "infinite"), ([[np.nan, np.nan]], {}, "no observed"),
    ([[1.0, 2.0]], {"horizon": 0}, "horizon"), ([[1.0, 2.0]], {"horizon": 10 ** 6}, "horizon"),
    ([[1.0, 2.0]], {"quantiles": [0.33]}, "quantile"), ([[1.0, 2.0]], {"horizon": 100}, "context"),
])
def test_bad_input_gives_a_clear_error(forecaster, ctx, kw, msg):
    with pytest.raises(ValueError, match=msg):
        forecaster.predict(ctx, **{"horizon": 8, **kw})


def test_cli_forecast_writes_quantiles_and_refuses_bad_csv(forecaster, tmp_path):
    model = forecaster.folder
    rows = ["time,OT"] + [f"t{i}," + ("" if i % 17 == 0 else f"{np.sin(i / 4):.4f}") for i in range(200)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "apps.cli", "forecast", *map(str, args), "--model", model],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    r = cli(tmp_path / "in.csv", "--column", "OT", "--horizon", "12", "-o", tmp_path / "out.csv")
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "step,q0.1,q0.5,q0.9" and len(lines) == 13
    (tmp_path / "bad.csv").write_text("time,OT\nt0,1.0\nt1,abc\n")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    for args, msg in [((tmp_path / "bad.csv", "--column", "OT"), "line 3"),
                      ((tmp_path / "in.csv", "--column", "nope"), "no column"),
                      ((tmp_path / "bin.csv", "--column", "OT"), "UTF-8"),
                      ((tmp_path / "in.csv", "--column", "OT", "-o", tmp_path / "out.csv"), "exists")]:
        r = cli(*args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr

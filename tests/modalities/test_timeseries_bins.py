"""Chronos bin tokens: mean scaling, round trip within half a bin, NaN -> PAD, constant and zero
series, ragged batches, JSON config, clear errors."""
import json

import numpy as np
import pytest
import torch

from modalities.timeseries_bins import BinTokenizer, leading_pad


def test_round_trip_is_within_half_a_bin():
    tok = BinTokenizer(n_bins=1024, low=-15, high=15)
    rng = np.random.default_rng(0)
    x = rng.normal(50, 20, size=(4, 300)) * np.array([1, 1e-3, 1e4, -1])[:, None]   # (B, L) any units
    ids, scale = tok.encode(x)
    assert ids.shape == (4, 300) and ids.dtype == torch.long and scale.shape == (4,)
    np.testing.assert_allclose(scale.numpy(), np.abs(x).mean(1))                  # mean scaling
    assert int(ids.max()) < tok.n_bins                                             # no specials for real values
    err = np.abs(tok.decode(ids, scale) - x)
    assert (err <= tok.width / 2 * scale.numpy()[:, None] + 1e-12).all()
    assert tok.width == pytest.approx(30 / 1023)


def test_values_beyond_the_range_fall_into_the_end_bins():
    tok = BinTokenizer(n_bins=11, low=-5, high=5)
    ids, scale = tok.encode([np.array([1.0] * 20 + [100.0, -100.0])])              # scale 10: +-10 > 5
    assert scale.item() == pytest.approx(10.0) and ids[0].tolist()[-2:] == [10, 0]
    np.testing.assert_allclose(tok.decode(ids, scale)[0, -2:], [50.0, -50.0])     # clipped to the range


def test_nan_is_pad_and_ragged_series_are_left_padded():
    tok = BinTokenizer(n_bins=101, low=-5, high=5)
    a = np.array([1.0, np.nan, 3.0, 2.0])
    ids, scale = tok.encode([a, np.array([4.0]), torch.tensor([2.0, 2.0])])
    assert ids.shape == (3, 4)
    assert ids[0, 1] == tok.pad_id and (ids[1, :3] == tok.pad_id).all() and (ids[2, :2] == tok.pad_id).all()
    assert scale.tolist() == pytest.approx([2.0, 4.0, 2.0])                       # observed points only
    out = tok.decode(ids, scale)
    assert np.isnan(out[0, 1]) and np.isnan(out[1, :3]).all() and out[1, 3] == pytest.approx(4.0)
    assert leading_pad(ids, tok.pad_id).tolist() == [0, 3, 2]
    ids2, _ = tok.encode([a], length=6)                                            # fixed length, left-padded
    assert ids2.shape == (1, 6) and (ids2[0, :2] == tok.pad_id).all()
    assert tok.encode([a], length=2)[0][0].tolist() == tok.encode([a[-2:]])[0][0].tolist()


def test_constant_and_zero_series():
    tok = BinTokenizer()                                                           # 1021 bins: 0 and 1 exact
    ids, scale = tok.encode([np.full(20, 7.0), np.zeros(20), np.full(5, -3.0)])
    out = tok.decode(ids, scale)
    np.testing.assert_allclose(out[0], 7.0)                                        # constant -> 1.0 exactly
    np.testing.assert_allclose(out[2, -5:], -3.0)
    assert np.isfinite(scale.numpy()).all() and scale[1] > 0                      # floor: no division by zero
    assert (out[1] == 0).all()                                                     # 0 is a centre


def test_config_round_trips_through_json():
    tok = BinTokenizer(n_bins=255, low=-10, high=12, min_scale=1e-6)
    back = BinTokenizer.from_config(json.loads(json.dumps(tok.to_config())))
    assert back.to_config() == tok.to_config() and back.vocab_size == 257
    assert (back.pad_id, back.eos_id) == (255, 256)
    x = np.linspace(-3, 5, 40)
    assert torch.equal(back.encode(x)[0], tok.encode(x)[0])


@pytest.mark.parametrize("kw, msg", [({"n_bins": 1}, "n_bins"), ({"n_bins": 2.5}, "n_bins"),
                                     ({"low": 3, "high": 1}, "low < high"), ({"high": float("inf")}, "finite"),
                                     ({"min_scale": 0}, "min_scale")])
def test_bad_settings_give_clear_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        BinTokenizer(**kw)


@pytest.mark.parametrize("ctx, msg", [([], "non-empty"), ([[1.0, np.inf]], "infinite"), ([np.zeros((2, 2))], "1-D"),
                                      ([[]], "non-empty"), ([["a"]], "numbers")])
def test_bad_input_gives_a_clear_error(ctx, msg):
    with pytest.raises(ValueError, match=msg):
        BinTokenizer(n_bins=15).encode(ctx)


def test_bad_decode_input_gives_a_clear_error():
    tok = BinTokenizer(n_bins=15)
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode(np.array([[20]]), np.ones(1))
    with pytest.raises(ValueError, match="scale"):
        tok.decode(np.array([[1, 2]]), np.ones(3))
    with pytest.raises(ValueError, match="integers"):
        tok.decode(np.array([[1.5]]), np.ones(1))
    with pytest.raises(ValueError, match="length"):
        tok.encode([1.0, 2.0], length=0)

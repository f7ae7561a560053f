"""Timestamps as positions: stamp texts, frequency parsing, the cached text encoder, and a
forecaster trained with timestamps (2 steps) that uses them only when given."""
import numpy as np
import pandas as pd
import pytest
import torch

from modalities.text import CharTokenizer
from modalities.timeseries_time import TimestampEncoder, context_start, parse_freq, segment_stamps


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory, make_tiny_lm):
    tok = CharTokenizer.train("This is time series from 0123456789-: to")
    folder = tmp_path_factory.mktemp("text")
    make_tiny_lm(tok.vocab_size, block_size=128).save_pretrained(folder, tokenizer=tok)
    return folder


def test_stamps_cover_each_segment_and_reach_back_for_padding():
    start, off = context_start(["2016-07-01 00:00", "2016-07-01 01:00", "2016-07-01 02:00"])
    assert start == pd.Timestamp("2016-07-01") and off == parse_freq("h")
    s = segment_stamps(start, off, -24, 2, 24)
    assert s == ["This is time series from 2016-06-30 00:00 to 2016-06-30 23:00",
                 "This is time series from 2016-07-01 00:00 to 2016-07-01 23:00"]
    m, moff = context_start("1990-01-01", "MS")
    assert segment_stamps(m, moff, 4, 1, 4)[0].endswith("1990-05-01 00:00 to 1990-08-01 00:00")


@pytest.mark.parametrize("ts, freq, msg", [([], None, "empty"), (["yesterday"], "h", "dates"),
                                           (["2020-01-01", "2020-01-02"], None, "infer"),
                                           ("2020-01-01", "fortnightly", "unknown frequency")])
def test_bad_timestamps_give_clear_errors(ts, freq, msg):
    with pytest.raises(ValueError, match=msg):
        context_start(ts, freq)


def test_encoder_is_cached_and_matches_a_direct_forward(text_folder):
    enc = TimestampEncoder(text_folder)
    texts = segment_stamps(pd.Timestamp("2020-01-01"), parse_freq("h"), 0, 3, 4)
    v = enc.encode(texts + texts[:1])
    assert v.shape == (4, enc.dim) and len(enc.cache) == 3 and torch.equal(v[0], v[3])
    ids = torch.tensor([enc.tok.encode(texts[1])])
    torch.testing.assert_close(v[1], enc.model(ids)[0, -1])


def test_forecaster_with_timestamps(text_folder, tmp_path):
    from apps.forecast.model import Forecaster
    from apps.forecast.recipe import run
    dates = pd.date_range("2016-07-01", periods=20 * 30 * 24, freq="h")
    t = np.arange(len(dates))
    lines = ["date,OT"] + [f"{d:%Y-%m-%d %H:%M:%S},{np.sin(2 * np.pi * i / 24):.4f}" for d, i in zip(dates, t)]
    (tmp_path / "ett.csv").write_text("\n".join(lines) + "\n")
    cfg = {"seg_len": 8, "context_segments": 6, "train_segments": 8, "data": {"ett": [str(tmp_path / "ett.csv")]},
           "timestamps": {"encoder": str(text_folder)}, "model": {"preset": "tiny", "args": {"block_size": 16}},
           "train": {"out_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4, "warmup_steps": 1,
                     "eval_every": 0, "ckpt_every": 2, "log_every": 1, "progress": False}, "eval": {"batches": 1}}
    run(cfg, out=str(tmp_path / "model"))
    fc = Forecaster.from_pretrained(tmp_path / "model")
    assert fc.time_encoder is not None and fc.model.config["meta"]["timestamps"]["encoder"] == str(text_folder)
    with torch.no_grad():
        fc.model.adapters["segment"].time_scale.fill_(1.0)       # make the stamps matter after 2 steps
    x = np.sin(np.arange(40) / 3)
    ts = [f"{d:%Y-%m-%d %H:%M}" for d in pd.date_range("2017-01-01", periods=40, freq="h")]
    a = fc.predict([x, x], 16, timestamps=[ts, None])
    b = fc.predict([x, x], 16, timestamps=[ts[0], None], freq="h")
    plain = fc.predict([x], 16)
    np.testing.assert_allclose(a, b, rtol=1e-5)                  # all stamps == first stamp + freq
    np.testing.assert_allclose(a[1], plain[0], rtol=1e-5)        # None == no timestamps
    assert not np.allclose(a[0], a[1])                           # the stamps reach the model
    with pytest.raises(ValueError, match="one entry per series"):
        fc.predict([x], 16, timestamps=ts)
    with pytest.raises(ValueError, match="2 timestamps for 40"):
        fc.predict([x], 16, timestamps=[ts[:2]])

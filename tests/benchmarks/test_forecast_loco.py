"""The leave-one-collection-out benchmark's parts: collections, the checkpoint it picks for each,
and relative scores by hand."""
import json

import numpy as np
import pytest

from benchmarks.forecast_zeroshot import held_out, load_collection, score


def test_relative_scores_by_hand():
    """Two series; a method half as wrong as seasonal naive on one and as wrong on the other has
    relative MASE sqrt(0.5 * 1) (geometric mean over series); naive itself scores 1."""
    x = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    s = [{"x": x, "y": np.array([1.0, 4.0]), "m": 2, "h": 2, "freq": "a"},
         {"x": x, "y": np.array([3.0, 2.0]), "m": 2, "h": 2, "freq": "b"}]
    naive = [np.repeat(np.array([1.0, 2.0])[:, None], 9, 1)] * 2
    half = [np.repeat(np.array([1.0, 3.0])[:, None], 9, 1), naive[1]]
    r = score(s, {"seasonal_naive": naive, "m": half})
    assert r["seasonal_naive"]["rel_mase"] == pytest.approx(1.0)
    assert r["m"]["rel_mase"] == pytest.approx(np.sqrt(0.5))
    assert r["m"]["freq"]["a"]["rel_mase"] == pytest.approx(0.5) and r["m"]["freq"]["b"]["rel_wql"] == pytest.approx(1)


def test_collections_hold_real_series_with_seasons_and_horizons():
    for name, n, freqs in (("m1", 1001, {"yearly", "quarterly", "monthly"}), ("packages", 28, None)):
        c = load_collection(name)
        assert len(c) == n and all(len(s["y"]) == s["h"] and np.isfinite(s["x"]).all() for s in c)
        assert freqs is None or {s["freq"] for s in c} == freqs
    with pytest.raises(ValueError, match="unknown collection"):
        load_collection("tourism")                              # kept for outside evaluation


def test_held_out_reads_the_checkpoint_meta(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"meta": {"held_out": ["m1", "m3", "tourism"]}}))
    assert held_out(tmp_path) == {"m1", "m3", "tourism"}
    (tmp_path / "config.json").write_text(json.dumps({"meta": {}}))   # before issue 20: M3 and Tourism
    assert held_out(tmp_path) == {"m3", "tourism"}

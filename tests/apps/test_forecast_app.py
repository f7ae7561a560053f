"""Forecasting app: handlers with the shipped model, clear errors, and the launcher tab driven
by headless Chromium (upload a CSV, click, a plot appears)."""

import numpy as np
import pytest

from apps.forecast.model import Forecaster
from apps.forecast.app import csv_columns, make_forecast_fn, time_columns



@pytest.fixture(scope="module")
def run():
    return make_forecast_fn(Forecaster.from_pretrained("assets/forecast-etth1"))


@pytest.fixture
def series_csv(tmp_path):
    import pandas as pd
    dates = pd.date_range("2020-01-01", periods=800, freq="h")
    lines = ["date,load,OT"] + [f"{d:%Y-%m-%d %H:%M},{np.cos(i / 5):.3f},{10 + 3 * np.sin(2 * np.pi * i / 24):.3f}"
                                 for i, d in enumerate(dates)]
    p = tmp_path / "series.csv"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_handler_plots_and_writes_the_forecast(run, series_csv):
    img, path, info = run(series_csv, "OT", 48)
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 0
    lines = open(path).read().splitlines()
    assert lines[0] == "step,q0.1,q0.5,q0.9" and len(lines) == 49
    assert "48 steps" in info
    assert csv_columns(series_csv) == ["load", "OT"] and time_columns(series_csv) == ["date"]


def test_time_column_dates_the_forecast(run, series_csv, tmp_path):
    import gradio as gr
    img, path, info = run(series_csv, "OT", 5, "date")
    lines = open(path).read().splitlines()
    assert lines[0] == "time,q0.1,q0.5,q0.9" and lines[1].startswith("2020-02-03 08:00:00,") and len(lines) == 6
    text = open(series_csv).read().splitlines()
    (tmp_path / "gaps.csv").write_text("\n".join(text[:10] + text[12:14] + text[40:]) + "\n")  # uneven steps
    with pytest.raises(gr.Error, match="not evenly spaced"):
        run(str(tmp_path / "gaps.csv"), "OT", 5, "date")
    with pytest.raises(gr.Error, match="does not hold dates"):
        run(series_csv, "OT", 5, "load")


def test_bad_input_is_a_clear_error(run, series_csv, tmp_path):
    import gradio as gr
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "text.csv").write_text("a,b\nx,y\n")
    cases = [((None, "OT", 10), "upload a CSV"), ((series_csv, "date", 10), "numeric column"),
             ((series_csv, "OT", 0), "horizon"), ((series_csv, "OT", 2.5), "horizon"),
             ((str(tmp_path / "bin.csv"), "OT", 10), "UTF-8"), ((str(tmp_path / "text.csv"), "a", 10), "no numeric"),
             ((series_csv, "OT", 10, "(none)", -1), "season"), ((series_csv, "OT", 10, "(none)", 1.5), "season")]
    for args, msg in cases:
        with pytest.raises(gr.Error, match=msg):
            run(*args)


def test_example_csvs_forecast_with_the_shipped_zero_shot_model():
    """Every example of the tab is a readable CSV whose value column (the last) forecasts with
    the default model, at the example's horizon and season."""
    from apps.forecast.app import DEFAULT_MODEL, EXAMPLE_FILES, EXAMPLES
    run_zs = make_forecast_fn(Forecaster.from_pretrained(DEFAULT_MODEL))
    for name, horizon, season in EXAMPLE_FILES:
        path = str(EXAMPLES / name)
        cols, tcols = csv_columns(path), time_columns(path)
        assert len(cols) == 1 and len(tcols) == 1, name
        img, out, info = run_zs(path, cols[0], horizon, tcols[0], season)
        lines = open(out).read().splitlines()
        assert len(lines) == horizon + 1 and f"season {season}" in info, info


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from app_server import browser_tab, running_launcher  # tests/apps/app_server.py
    with running_launcher([], tmp_path_factory.mktemp("server") / "launcher.log", threads=2) as url:
        with browser_tab(url, "Forecast") as pg:
            yield pg


def test_browser_upload_and_forecast(page, series_csv):
    from playwright.sync_api import expect
    page.locator("#fc-file input[type=file]").set_input_files(series_csv)
    expect(page.locator("#fc-column input")).to_have_value("OT", timeout=30_000)
    expect(page.locator("#fc-time input")).to_have_value("date", timeout=10_000)
    page.get_by_role("button", name="Forecast", exact=True).click()
    expect(page.locator("#fc-plot img")).to_be_visible(timeout=60_000)
    expect(page.locator("#fc-info")).to_contain_text("96 steps", timeout=10_000)
    assert "Traceback" not in page.content()


def test_concurrent_users_share_batched_calls_and_match_solo():
    """The tab's BatchedForecaster: 6 users at once are merged into fewer predict calls, and each
    gets its solo forecast up to float rounding; a bad request fails alone."""
    import threading

    from apps.forecast.app import BatchedForecaster
    fc = Forecaster.from_pretrained("assets/forecast-zeroshot")
    bf = BatchedForecaster(fc)
    rng = np.random.default_rng(0)
    series = [np.sin(np.arange(100 + 50 * i) / 24 * 2 * np.pi) * 3 + 10 + rng.normal(size=100 + 50 * i) * 0.1
              for i in range(6)]
    solo = [fc.predict(s, 24)[0] for s in series]
    out = [None] * 6
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, bf.predict(series[i], 24)[0])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.allclose(o, s, rtol=1e-5, atol=1e-5) for o, s in zip(out, solo))
    assert bf.worker.batcher.calls < 6 and bf.worker.batcher.items_done == 6
    with pytest.raises(ValueError, match="horizon"):
        bf.predict(series[0], 0)

"""Forecasting app: upload a CSV, pick the time and value columns, set the horizon; see the
history with the median forecast and its 10-90% band, and download the forecast as CSV. With a
time column the plot is over dates, the CSV gets a time column, and models trained with
timestamps (AutoTimes' timestamps as positions) get them.

    python -m apps.forecast.app --model assets/forecast-zeroshot [--host 127.0.0.1] [--port 7860]

``build_demo(forecaster)`` does no work until an event fires. A malformed, binary, huge or
non-numeric upload, an unknown column or a bad horizon ends as a ``gr.Error`` with a plain
message, never a traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import csv
import sys
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from apps.api.workers import ForecastWorker
from apps.forecast.cli import read_series_csv, read_time_csv
from apps.forecast.model import Forecaster
from apps.forecast.plot import plot_forecast
from apps.serving import check_checkpoint, serve, user_errors

DEFAULT_MODEL = "assets/forecast-zeroshot"
TRAIN_COMMAND = "omniar train forecast --config configs/forecast_zeroshot.yaml"
MAX_UPLOAD_BYTES = 20 << 20
NO_TIME = "(none)"
CONCURRENT_USERS = 8   # users whose forecasts are merged into one batched call
EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples"
# (file, horizon, season): monthly airline passengers 1949-60, US real GDP by quarter 1959-2009,
# the Nile's yearly flow 1871-1970 (R / statsmodels datasets; assets/examples/README.md)
EXAMPLE_FILES = [("forecast_air_passengers.csv", 24, 12), ("forecast_us_gdp.csv", 8, 4), ("forecast_nile.csv", 10, 1)]


def csv_columns(path) -> list[str]:
    """The columns of an uploaded CSV whose first data row is numeric (ValueError otherwise)."""
    if path is None:
        raise ValueError("upload a CSV file first")
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the file is larger than {MAX_UPLOAD_BYTES >> 20} MB")
    try:
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header, first = next(reader, None), next(reader, None)
    except (UnicodeDecodeError, csv.Error):
        raise ValueError("this is not a UTF-8 text CSV file") from None
    if not header or not first:
        raise ValueError("the CSV needs a header line and at least one row")
    numeric = []
    for name, cell in zip(header, first):
        try:
            float(cell)
            numeric.append(name)
        except ValueError:
            pass
    if not numeric:
        raise ValueError(f"no numeric column in {header}")
    return numeric


def time_columns(path) -> list[str]:
    """The columns of an uploaded CSV whose first data row parses as a date (maybe none)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header, first = next(reader, None), next(reader, None)
    out = []
    for name, cell in zip(header or [], first or []):
        try:
            float(cell)
            continue
        except ValueError:
            pass
        try:
            pd.Timestamp(cell)
            out.append(name)
        except (ValueError, TypeError):
            pass
    return out


class BatchedForecaster:
    """A Forecaster whose ``predict`` calls from concurrent users (each in its own Gradio thread) are
    merged: calls with the same horizon that arrive within 20 ms run as one batched ``predict``
    (apps/api/workers.py's ForecastWorker, as the HTTP API does). Everything else is the model's."""

    def __init__(self, fc: Forecaster, timeout: float = 300.0):
        self.fc, self.timeout = fc, timeout
        self.worker = ForecastWorker("app", "", forecaster=fc, max_queue=64)

    def __getattr__(self, name):
        return getattr(self.fc, name)

    def predict(self, context, horizon: int, quantiles=(0.1, 0.5, 0.9), timestamps=None, season=None) -> np.ndarray:
        series = context if isinstance(context, list) else [context]
        stamps = timestamps or [None] * len(series)
        self.worker.check(series, horizon, list(quantiles))          # a bad request fails alone
        self.fc.seasons(season, series)                             # so is a bad season
        key = (horizon, tuple(quantiles), None, timestamps is not None)
        return np.stack(self.worker.batcher.run_sync(key, [(s, t, season) for s, t in zip(series, stamps)],
                                                     self.timeout))


def make_forecast_fn(forecaster):
    @user_errors("Cannot forecast", "forecast")
    def run(path, column, horizon, time_column=NO_TIME, season=0):
        cols = csv_columns(path)
        if column not in cols:
            raise ValueError(f"pick a numeric column: {cols}")
        if horizon is None or horizon != int(horizon) or not 1 <= int(horizon) <= 1000:
            raise ValueError(f"the horizon must be a whole number from 1 to 1000, got {horizon!r}")
        if season is None or season != int(season) or not 0 <= int(season) <= 10_000:
            raise ValueError(f"the season must be a whole number from 0 (detect) to 10000, got {season!r}")
        x = read_series_csv(path, column)
        times = stamps = None
        if time_column and time_column != NO_TIME:
            stamps = read_time_csv(path, time_column)
            try:
                idx = pd.DatetimeIndex(pd.to_datetime(stamps))
            except (ValueError, TypeError):
                raise ValueError(f"column {time_column!r} has a cell that is not a date") from None
            freq = pd.infer_freq(idx) if len(idx) >= 3 else None
            if freq is None:
                raise ValueError(f"the times in {time_column!r} are not evenly spaced; pick '{NO_TIME}'")
            times = idx.append(pd.date_range(idx[-1], periods=int(horizon) + 1, freq=freq)[1:])
        q = forecaster.predict(x, int(horizon), quantiles=[0.1, 0.5, 0.9], season=int(season) or None,
                               timestamps=None if stamps is None else [stamps])[0]     # (H, 3)
        out = Path(tempfile.mkdtemp(prefix="omniar-forecast-")) / "forecast.csv"
        first = "time" if times is not None else "step"
        keys = [f"{t}" for t in times[-len(q):]] if times is not None else range(1, len(q) + 1)
        out.write_text(f"{first},q0.1,q0.5,q0.9\n" + "".join(f"{k},{a:.6g},{b:.6g},{c:.6g}\n"
                                                            for k, (a, b, c) in zip(keys, q)))
        info = f"{int(horizon)} steps of **{column}** from {len(x)} points ({int(np.isnan(x).sum())} missing)"
        if getattr(forecaster, "seasonal", False):
            used = int(season) or forecaster.seasons(None, [x])[0]
            info += f", season {used}" + ("" if int(season) else " (detected)")
        return plot_forecast(x, q, f"{column}: median and 10-90% band", times), str(out), info
    return run


def build_demo(forecaster, title: str = "OmniAR forecasting") -> gr.Blocks:
    run = make_forecast_fn(forecaster)

    @user_errors("Cannot read this file", "upload")
    def on_upload(path):
        if path is None:          # the file was cleared
            return gr.Dropdown(choices=[], value=None), gr.Dropdown(choices=[NO_TIME], value=NO_TIME)
        cols, tcols = csv_columns(path), time_columns(path)
        return (gr.Dropdown(choices=cols, value="OT" if "OT" in cols else cols[-1]),
                gr.Dropdown(choices=[NO_TIME] + tcols, value=tcols[0] if tcols else NO_TIME))

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown("Upload a CSV with a header, pick the time and value columns and the horizon.")
        with gr.Row():
            file = gr.File(label="CSV file", file_types=[".csv"], type="filepath", elem_id="fc-file")
            with gr.Column():
                time_column = gr.Dropdown(label="time column", choices=[NO_TIME], value=NO_TIME, elem_id="fc-time")
                column = gr.Dropdown(label="value column", choices=[], elem_id="fc-column")
                horizon = gr.Number(96, precision=0, label="horizon (steps)", elem_id="fc-horizon")
                season = gr.Number(0, precision=0, label="season (points per cycle: 12 monthly, 4 quarterly, "
                                   "24 hourly; 0 = detect)", elem_id="fc-season")
                button = gr.Button("Forecast", variant="primary")
        gr.Examples([[str(EXAMPLES / f), h, m] for f, h, m in EXAMPLE_FILES], [file, horizon, season],
                    label="Example series (public data; press Forecast)")
        plot = gr.Image(label="forecast", elem_id="fc-plot", interactive=False)
        info = gr.Markdown(elem_id="fc-info")
        download = gr.File(label="forecast CSV", elem_id="fc-download")
        file.change(on_upload, file, [column, time_column])   # an upload or an example
        button.click(run, [file, column, horizon, time_column, season], [plot, download, info],
                     concurrency_limit=CONCURRENT_USERS, concurrency_id="omniar-forecast-model")
    return demo


def load_app(folder: str | os.PathLike, device: str = "cpu") -> gr.Blocks:
    """Checkpoint folder -> forecasting app Blocks (FileNotFoundError/ValueError with a clear message)."""
    folder = check_checkpoint(folder, "forecasting", TRAIN_COMMAND, files=("config.json", "model.safetensors"))
    # concurrent users' forecasts are merged into batched calls (BatchedForecaster)
    return build_demo(BatchedForecaster(Forecaster.from_pretrained(folder, device=device)))


def main(argv=None) -> int:
    return serve("python -m apps.forecast.app", "OmniAR forecasting app", DEFAULT_MODEL, load_app, argv)


if __name__ == "__main__":
    sys.exit(main())

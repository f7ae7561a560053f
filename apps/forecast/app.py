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
from apps.serving import check_checkpoint, serve, user_errors

DEFAULT_MODEL = "assets/forecast-zeroshot"
TRAIN_COMMAND = "omniar train forecast --config configs/forecast_zeroshot.yaml"
MAX_UPLOAD_BYTES = 20 << 20
SHOW_HISTORY = 500  # points of history drawn before the forecast
NO_TIME = "(none)"
CONCURRENT_USERS = 8   # users whose forecasts are merged into one batched call


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


def plot_forecast(history: np.ndarray, q: np.ndarray, title: str, times=None) -> np.ndarray:
    """history (L,), q (H, 3) = 10/50/90% -> RGB image (H, W, 3) uint8. ``times``: L + H dates
    for the x axis (else steps)."""
    import matplotlib  # only to draw: not loaded until the first forecast
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h = history[-SHOW_HISTORY:]
    t0 = len(h)
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=90)
    xs = np.arange(t0 + len(q)) if times is None else np.asarray(times[-(t0 + len(q)):])
    ax.plot(xs[:t0], h, color="0.3", lw=1, label="history")
    steps = xs[t0:]
    ax.fill_between(steps, q[:, 0], q[:, 2], color="tab:blue", alpha=0.25, label="10-90%")
    ax.plot(steps, q[:, 1], color="tab:blue", lw=1.5, label="median")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


class BatchedForecaster:
    """A Forecaster whose ``predict`` calls from concurrent users (each in its own Gradio thread) are
    merged: calls with the same horizon that arrive within 20 ms run as one batched ``predict``
    (apps/api/workers.py's ForecastWorker, as the HTTP API does). Everything else is the model's."""

    def __init__(self, fc: Forecaster, timeout: float = 300.0):
        self.fc, self.timeout = fc, timeout
        self.worker = ForecastWorker("app", "", forecaster=fc, max_queue=64)

    def __getattr__(self, name):
        return getattr(self.fc, name)

    def predict(self, context, horizon: int, quantiles=(0.1, 0.5, 0.9), timestamps=None) -> np.ndarray:
        series = context if isinstance(context, list) else [context]
        stamps = timestamps or [None] * len(series)
        self.worker.check(series, horizon, list(quantiles))          # a bad request fails alone
        key = (horizon, tuple(quantiles), None, timestamps is not None)
        return np.stack(self.worker.batcher.run_sync(key, list(zip(series, stamps)), self.timeout))


def make_forecast_fn(forecaster):
    @user_errors("Cannot forecast", "forecast")
    def run(path, column, horizon, time_column=NO_TIME):
        cols = csv_columns(path)
        if column not in cols:
            raise ValueError(f"pick a numeric column: {cols}")
        if horizon is None or horizon != int(horizon) or not 1 <= int(horizon) <= 1000:
            raise ValueError(f"the horizon must be a whole number from 1 to 1000, got {horizon!r}")
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
        q = forecaster.predict(x, int(horizon), quantiles=[0.1, 0.5, 0.9],
                               timestamps=None if stamps is None else [stamps])[0]     # (H, 3)
        out = Path(tempfile.mkdtemp(prefix="omniar-forecast-")) / "forecast.csv"
        first = "time" if times is not None else "step"
        keys = [f"{t}" for t in times[-len(q):]] if times is not None else range(1, len(q) + 1)
        out.write_text(f"{first},q0.1,q0.5,q0.9\n" + "".join(f"{k},{a:.6g},{b:.6g},{c:.6g}\n"
                                                            for k, (a, b, c) in zip(keys, q)))
        info = f"{int(horizon)} steps of **{column}** from {len(x)} points ({int(np.isnan(x).sum())} missing)"
        return plot_forecast(x, q, f"{column}: median and 10-90% band", times), str(out), info
    return run


def build_demo(forecaster, title: str = "OmniAR forecasting") -> gr.Blocks:
    run = make_forecast_fn(forecaster)

    @user_errors("Cannot read this file", "upload")
    def on_upload(path):
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
                button = gr.Button("Forecast", variant="primary")
        plot = gr.Image(label="forecast", elem_id="fc-plot", interactive=False)
        info = gr.Markdown(elem_id="fc-info")
        download = gr.File(label="forecast CSV", elem_id="fc-download")
        file.upload(on_upload, file, [column, time_column])
        button.click(run, [file, column, horizon, time_column], [plot, download, info],
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

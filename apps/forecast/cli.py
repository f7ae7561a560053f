"""``omniar forecast data.csv --column OT --horizon 96 -o forecast.csv``: one column of a CSV
forecast by a segment (apps/forecast/model.py) or bin-token (apps/forecast/bins.py) checkpoint.
The CSV readers here are shared with the fine-tuning command and the app.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from apps.forecast.bins import BinForecaster
from apps.forecast.model import Forecaster
from apps.forecast.plot import plot_forecast, save_plot
from modalities.timeseries import as_series


def load_forecaster(folder, device=None) -> Forecaster | BinForecaster:
    """The forecaster for a checkpoint: segment models (Forecaster) or bin-token models (meta.task
    "forecast_bins")."""
    cfg = Path(folder) / "config.json"
    try:
        task = json.loads(cfg.read_text()).get("meta", {}).get("task") if cfg.is_file() else None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{cfg} is not a valid JSON config") from None
    if task == "forecast_bins":
        return BinForecaster.from_pretrained(folder, device=device)
    return Forecaster.from_pretrained(folder, device=device)


MAX_CSV_ROWS = 200_000   # a stated bound (issue 21: 10^6 rows ran past 90 s and ~1 GB in finetune-forecast)


def read_series_csv(path: str | Path, column: str, max_rows: int = MAX_CSV_ROWS) -> np.ndarray:
    """One numeric column of a CSV with a header; empty cells and 'nan' are missing values.
    ValueError (naming the file, column or line) for anything else, or for more than ``max_rows`` rows
    (checked as the file is read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.stat().st_size > 200 * 2**20:
        raise ValueError(f"{path} is larger than 200 MB")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or column not in reader.fieldnames:
                raise ValueError(f"{path}: no column {column!r}; the columns are {reader.fieldnames}")
            vals = []
            for i, row in enumerate(reader, start=2):
                if i - 1 > max_rows:
                    raise ValueError(f"{path} has more than {max_rows} rows, the limit; keep the recent "
                                     f"history (e.g. `tail -n {max_rows}`)")
                cell = (row.get(column) or "").strip()
                try:
                    vals.append(float(cell) if cell and cell.lower() != "nan" else float("nan"))
                except ValueError:
                    raise ValueError(f"{path}, line {i}: {cell!r} in column {column!r} is not a number") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text CSV") from None
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV ({e})") from None
    return as_series(vals, f"column {column!r}")


def read_time_csv(path: str | Path, column: str) -> list[str]:
    """The cells of a time column (as text) of a CSV with a header; ValueError if it is missing,
    or if a cell does not parse as a date."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or column not in reader.fieldnames:
            raise ValueError(f"{path}: no column {column!r}; the columns are {reader.fieldnames}")
        cells = [(row.get(column) or "").strip() for row in reader]
    try:
        for c in (cells[0], cells[-1]):
            pd.Timestamp(c)
    except (ValueError, TypeError, IndexError):
        raise ValueError(f"column {column!r} does not hold dates (e.g. {cells[0]!r})") from None
    return cells


def main(a):
    """``omniar forecast data.csv --column OT --horizon 96 -o forecast.csv``."""
    out = Path(a.out)
    if out.is_dir() or str(a.out).endswith(("/", "\\")):
        raise ValueError(f"-o {a.out}: give a file name for the CSV (e.g. {Path(a.out) / 'forecast.csv'}), not a folder")
    if not out.parent.is_dir():
        raise ValueError(f"-o {a.out}: the folder {out.parent} does not exist")
    if out.exists() and not a.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    plot = getattr(a, "plot", None)
    if plot is not None:
        plot = Path(plot)
        if plot.suffix.lower() != ".png" or not plot.parent.is_dir():
            raise ValueError(f"--plot {plot}: give a .png file in an existing folder")
        if plot.exists() and not a.force:
            raise ValueError(f"{plot} exists; pass --force to overwrite it")
    season = getattr(a, "season", None)
    if season is not None and not 1 <= season <= 100_000:
        raise ValueError(f"--season must be a whole number of points from 1 to 100000, got {season}")
    x = read_series_csv(a.csv, a.column)
    try:
        qs = [float(q) for q in a.quantiles.split(",")]
    except ValueError:
        raise ValueError(f"--quantiles takes comma-separated numbers such as 0.1,0.5,0.9, got {a.quantiles!r}") from None
    fc = load_forecaster(a.model)
    kw = {"season": season} if isinstance(fc, Forecaster) else {}
    band = [0.1, 0.5, 0.9] if plot is not None else []
    every = qs + [q for q in band if q not in qs]
    full = fc.predict(x, a.horizon, quantiles=every, **kw)[0]                          # (H, q + band)
    pred = full[:, :len(qs)]                                                            # (H, q)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write("step," + ",".join(f"q{q:g}" for q in qs) + "\n")
            for i, row in enumerate(pred, start=1):
                f.write(f"{i}," + ",".join(f"{v:.6g}" for v in row) + "\n")
        tmp.replace(out)
    except OSError as e:                                  # never leave a stray .tmp behind
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {out}: {e.strerror or e}") from None
    msg = f"wrote {out}: {a.horizon} steps of {a.column!r} from {len(x)} points " \
          f"({int(np.isnan(x).sum())} missing), quantiles {qs}"
    if isinstance(fc, Forecaster) and fc.seasonal:
        msg += f", season {season or fc.seasons(None, [x])[0]}" + (" (detected)" if season is None else "")
    if plot is not None:
        q3 = full[:, [every.index(q) for q in band]]                                    # (H, 3)
        save_plot(plot_forecast(x, q3, f"{a.column}: median and 10-90% band"), plot)
        msg += f"; plot {plot}"
    print(msg)

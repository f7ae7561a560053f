"""The forecasting REST API: ``omniar serve-forecast [--host 127.0.0.1] [--port 8000]``.

    POST /v1/forecast  {"series": [[...], ...], "horizon": 96, "quantiles": [0.1, 0.5, 0.9],
                        "timestamps": ["2016-07-01 00:00", ...], "freq": "h"}
    GET  /health
    GET  /docs, /openapi.json   (FastAPI's own)

pydantic validates sizes (series per request, points per series, horizon) and types; every
kind of bad input is a 4xx with a message. NaN arrives as JSON null. One forecast runs at a
time (each has its own KV cache, but they would share the compute; a batch of series is one
forward anyway); at most ``max_waiting`` requests wait for it, each up to ``queue_timeout``
seconds, and the rest get 503 at once. Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import argparse
import math

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, field_validator, model_validator

from apps.forecast.model import MAX_HORIZON, Forecaster
from modalities.timeseries_time import parse_freq

MAX_SERIES_PER_REQUEST, MAX_POINTS = 256, 20_000


class ForecastRequest(BaseModel):
    series: list[list[float | None]] = Field(min_length=1, max_length=MAX_SERIES_PER_REQUEST,
                                             description="one or more series; null = missing value")
    horizon: int = Field(ge=1, le=MAX_HORIZON)
    quantiles: list[float] = Field(default=[0.1, 0.5, 0.9], min_length=1, max_length=9)
    timestamps: list[str | list[str] | None] | None = Field(
        default=None, max_length=MAX_SERIES_PER_REQUEST,
        description="per series: the time of its first point (with freq) or of every point; null = none. "
                    "Used by models trained with timestamps, ignored by others")
    freq: str | None = Field(default=None, max_length=16, description="pandas frequency alias, e.g. 'h', 'D', 'MS'")

    @field_validator("series")
    @classmethod
    def _check_series(cls, v):
        for i, s in enumerate(v):
            if not s:
                raise ValueError(f"series {i} is empty")
            if len(s) > MAX_POINTS:
                raise ValueError(f"series {i} has {len(s)} points; the limit is {MAX_POINTS}")
            if all(x is None for x in s):
                raise ValueError(f"series {i} has no observed value")
            if any(x is not None and not math.isfinite(x) for x in s):
                raise ValueError(f"series {i} contains a non-finite number")
        return v

    @field_validator("timestamps")
    @classmethod
    def _check_timestamps(cls, v):
        for i, t in enumerate(v or []):
            if isinstance(t, list) and len(t) > MAX_POINTS:
                raise ValueError(f"timestamps {i} has {len(t)} entries; the limit is {MAX_POINTS}")
        return v

    @field_validator("freq")
    @classmethod
    def _check_freq(cls, v):
        if v is not None:
            parse_freq(v)
        return v

    @model_validator(mode="after")
    def _one_timestamp_entry_per_series(self):
        if self.timestamps is not None and len(self.timestamps) != len(self.series):
            raise ValueError(f"timestamps has {len(self.timestamps)} entries for {len(self.series)} series")
        return self


class ForecastResponse(BaseModel):
    quantiles: list[float]
    forecast: list[list[list[float]]] = Field(description="[series][step][quantile]")


def build_app(forecaster: Forecaster, max_waiting: int = 32, queue_timeout: float = 30.0) -> FastAPI:
    app = FastAPI(title="OmniAR forecasting", version="1")
    limiter = anyio.CapacityLimiter(1)
    waiting = [0]

    @app.get("/health")
    def health():
        return {"status": "ok", "seg_len": forecaster.S, "context_segments": forecaster.T}

    @app.post("/v1/forecast", response_model=ForecastResponse)
    async def forecast(req: ForecastRequest):
        series = [np.array([np.nan if x is None else x for x in s], dtype=np.float64) for s in req.series]
        if waiting[0] >= max_waiting:
            raise HTTPException(503, "the server is busy; try again")
        waiting[0] += 1
        try:
            with anyio.fail_after(queue_timeout):
                await limiter.acquire()
        except TimeoutError:
            raise HTTPException(503, "the server is busy; try again") from None
        finally:
            waiting[0] -= 1
        try:  # the forecast itself runs in a worker thread; the event loop stays free
            out = await anyio.to_thread.run_sync(
                lambda: forecaster.predict(series, req.horizon, quantiles=req.quantiles,
                                           timestamps=req.timestamps, freq=req.freq))
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        finally:
            limiter.release()
        return ForecastResponse(quantiles=req.quantiles, forecast=out.tolist())

    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="omniar serve-forecast", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/forecast-zeroshot")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-waiting", type=int, default=32, help="queued requests beyond this get 503")
    a = ap.parse_args(argv)
    import uvicorn  # the server itself: only when serving, not for build_app (tests, embedding)
    app = build_app(Forecaster.from_pretrained(a.model), a.max_waiting)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

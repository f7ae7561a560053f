"""The forecasting request and response of ``POST /v1/forecast`` (served by ``omniar serve``,
apps/api/server.py; ``omniar serve-forecast`` is its forecasting-only alias).

    {"series": [[...], ...], "horizon": 96, "quantiles": [0.1, 0.5, 0.9],
     "timestamps": ["2016-07-01 00:00", ...], "freq": "h", "season": 24}

pydantic validates sizes (series per request, points per series, horizon) and types strictly
(a number is a JSON number, not a string or a boolean; unknown fields are refused). A missing
value is JSON null; NaN, Infinity and values beyond +-1e15 are refused with the series named.
"""
from __future__ import annotations

import argparse
import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from apps.forecast.model import MAX_HORIZON
from modalities.timeseries_time import parse_freq

MAX_SERIES_PER_REQUEST, MAX_POINTS = 256, 20_000
MAX_ABS_VALUE = 1e15      # beyond this the float32 model's scaling overflows; refused, not clipped


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = Field(None, max_length=200, description="default: the server's forecasting model")
    series: list[list[float | None]] = Field(min_length=1, max_length=MAX_SERIES_PER_REQUEST,
                                             description="one or more series; null = missing value")
    horizon: int = Field(ge=1, le=MAX_HORIZON)
    quantiles: list[float] = Field(default=[0.1, 0.5, 0.9], min_length=1, max_length=9)
    timestamps: list[str | list[str] | None] | None = Field(
        default=None, max_length=MAX_SERIES_PER_REQUEST,
        description="per series: the time of its first point (with freq) or of every point; null = none. "
                    "Used by models trained with timestamps, ignored by others")
    freq: str | None = Field(default=None, max_length=16, description="pandas frequency alias, e.g. 'h', 'D', 'MS'")
    season: int | None = Field(default=None, ge=1, le=MAX_POINTS,
                               description="the season length in points (12 for monthly data with a yearly "
                                           "cycle; 1 = none); default: detected per series")

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
            bad = next((j for j, x in enumerate(s) if x is not None and not (math.isfinite(x) and
                                                                           abs(x) <= MAX_ABS_VALUE)), None)
            if bad is not None:
                raise ValueError(f"series {i} point {bad} is NaN, infinite or beyond +-{MAX_ABS_VALUE:g}; "
                                 "send a missing value as null")
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

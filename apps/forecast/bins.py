"""Chronos-style bin-token forecasting: sampled paths through the one generation loop, empirical
quantiles (Ansari et al. 2024).

    BinForecaster.from_pretrained("assets/forecast-bins").predict(context, horizon=18)

A checkpoint is trained by apps/forecast/bins_recipe.py: an OmniModel whose ``lm`` head covers the
bins of its tokenizer (modalities/timeseries_bins.py). Each forecast is a text-style generation
(``backbone.generate.generate``) from the context's bin tokens, left-padded to one batch.
"""
from __future__ import annotations

import numpy as np
import torch

from apps.forecast.model import MAX_CONTEXT, check_request
from backbone.container import OmniModel
from backbone.generate import generate
from backbone.sampling import SamplingParams
from modalities.timeseries import as_series
from modalities.timeseries_bins import BinTokenizer, leading_pad

MAX_SAMPLES = 1000


class BinForecaster:
    """``BinForecaster.from_pretrained(folder).predict(context, horizon, quantiles)``: sampled
    paths (temperature 1, the full distribution over bins), empirical quantiles."""

    def __init__(self, model: OmniModel):
        meta = model.config["meta"]
        if meta.get("task") != "forecast_bins" or "lm" not in model.heads:
            raise ValueError("not a bin-token forecasting checkpoint (needs meta.task 'forecast_bins' and an 'lm' head)")
        self.model = model.eval()
        self.tok = BinTokenizer.from_config(meta["tokenizer"])
        self.C = meta["context_length"]
        if model.heads["lm"].vocab_size != self.tok.n_bins:
            raise ValueError("the checkpoint's LM head does not match its tokenizer's bins")

    @classmethod
    def from_pretrained(cls, folder, device=None) -> "BinForecaster":
        return cls(OmniModel.from_pretrained(folder, device=device))

    @torch.no_grad()
    def predict(self, context, horizon: int, quantiles=(0.1, 0.5, 0.9), num_samples: int = 20, seed: int | None = 0,
                batch_size: int = 32, examples=None) -> np.ndarray:
        """context: a 1-D array/tensor or a list of them (any lengths, NaN allowed; the last
        ``context_length`` points are used). Returns (series, horizon, len(quantiles)) in the
        original units: empirical quantiles of ``num_samples`` sampled paths per series.
        ``batch_size`` series (x num_samples rows) go through the model at a time; a fixed
        ``seed`` makes a call reproducible (for the same batch_size)."""
        context = check_request(context, horizon)
        if isinstance(quantiles, (str, bytes)) or not hasattr(quantiles, "__len__") or len(quantiles) == 0:
            raise ValueError("quantiles must be a non-empty list of numbers in (0, 1)")
        for q in quantiles:
            if isinstance(q, bool) or not isinstance(q, (int, float, np.floating)) or not 0 < q < 1:
                raise ValueError(f"quantile {q!r} is not a number in (0, 1)")
        if isinstance(num_samples, bool) or not (isinstance(num_samples, int) and 1 <= num_samples <= MAX_SAMPLES):
            raise ValueError(f"num_samples must be an integer in [1, {MAX_SAMPLES}], got {num_samples!r}")
        if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        if examples is not None:
            raise ValueError("in-context examples are a segment-model feature; bin models take examples=None")
        series = [as_series(c, f"series {i}") for i, c in enumerate(context)]
        if any(len(s) > MAX_CONTEXT for s in series):
            raise ValueError(f"a series is longer than {MAX_CONTEXT} points")
        for i, s in enumerate(series):
            if np.isnan(s[-self.C:]).all():
                raise ValueError(f"series {i} has no observed value in its last {self.C} points (the model's context)")
        # batches of similar prompt lengths: less left padding to compute
        ctx = [s[-self.C:] for s in series]
        first = [int(np.flatnonzero(~np.isnan(c))[0]) for c in ctx]
        order = np.argsort([len(c) - f for c, f in zip(ctx, first)], kind="stable")
        paths = np.empty((len(series), num_samples, horizon))
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            bseed = None if seed is None else seed + k // batch_size
            paths[idx] = self.sample([ctx[i][first[i]:] for i in idx], horizon, num_samples, bseed)
        q = np.quantile(paths, np.asarray(quantiles, dtype=np.float64), axis=1)        # (q, B, H)
        return q.transpose(1, 2, 0)                                                     # (B, H, q)

    @torch.no_grad()
    def sample(self, context: list[np.ndarray], horizon: int, num_samples: int, seed: int | None) -> np.ndarray:
        """Validated 1-D contexts (each starting with an observed point) -> sampled paths
        (B, num_samples, horizon) in the original units, through the one generation loop."""
        ids, scale = self.tok.encode(context)                                          # (B, L), (B,)
        lead = leading_pad(ids, self.tok.pad_id).tolist()
        prompts = [row[p:] for row, p in zip(ids.tolist(), lead) for _ in range(num_samples)]  # B * N ragged
        params = SamplingParams(temperature=1.0, top_k=None, max_new_tokens=horizon, seed=seed)
        toks = list(generate(self.model, prompts, params, head="lm", pad_id=self.tok.pad_id))
        out = torch.stack(toks, 1).view(len(context), num_samples, horizon)             # (B, N, H)
        return self.tok.decode(out, scale)

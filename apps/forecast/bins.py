"""Chronos-style forecasting on the shared backbone: mean scaling + uniform bins, an LM head over
the bins, teacher-forced next-token training, sampled forecasts (Ansari et al. 2024).

    python -m apps.forecast.bins --config configs/forecast_bins.yaml
    BinForecaster.from_pretrained("assets/forecast-bins").predict(context, horizon=18)

The alternative to the segment forecaster (apps/forecast/model.py) on the same backbone and the same
training data: the task subclasses its SeriesTask, so pools, mix weights, short histories, missing
values and TSMixup are shared; only the way a window becomes model input differs. A model is an
OmniModel with an untied ``lm`` head of ``n_bins`` outputs (heads/lm.LMHead) over a token
embedding of ``n_bins + 2`` ids (bins, PAD, EOS; modalities/timeseries_bins.py), so every sampled
token is a bin: PAD and EOS can be read but never predicted.

Left padding (a short history) is masked out of attention and every row's positions start at its
first observed point, in training exactly as ``backbone.generate`` does for left-padded prompts;
missing values inside the context stay in as PAD tokens (the model learns to read them).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys

import numpy as np
import torch
from torch import Tensor

from apps.forecast.model import MAX_CONTEXT, MAX_HORIZON, MAX_SERIES, SeriesTask, data_pools
from backbone.container import OmniModel, part
from backbone.generate import generate
from backbone.masks import build_mask
from backbone.sampling import SamplingParams
from backbone.train import TrainConfig, cli_command, save_trained, train
from backbone.transformer import ModelArgs
from heads.lm import LMHead
from modalities.timeseries import as_series
from modalities.timeseries_bins import BinTokenizer, leading_pad

MAX_SAMPLES = 1000


def lm_batch(ids: Tensor, pad_id: int) -> dict:
    """Token rows (B, L) -> a teacher-forced LM batch over L-1 positions: input_ids, positions and
    mask (B, 1, L-1, L-1) hiding the left padding, targets {"lm": (B, L-1)} with -100 where the
    next token is PAD or the input is still left padding."""
    x, y = ids[:, :-1], ids[:, 1:].clone()                                       # (B, T)
    j = torch.arange(x.shape[1])
    real = j[None, :] >= leading_pad(x, pad_id)[:, None]                         # (B, T) False = left padding
    y[(y == pad_id) | ~real] = -100
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)                       # (B, T) 0 at the first real token
    mask = build_mask(j, j, key_valid=real, q_slots=j)                           # (B, 1, T, T)
    return {"input_ids": x, "positions": positions, "mask": mask, "targets": {"lm": y}}


class BinSeriesTask(SeriesTask):
    """SeriesTask's windows (one point per "segment") as bin tokens: ``context_len`` points of
    context, then ``pred_len`` target points, all scaled by the observed context's mean |x|.
    The loss covers every next token of context and target (decoder-only Chronos), except PAD
    targets and targets predicted from left padding alone. Batch ``step`` is a pure function
    of (seed, step, micro)."""

    def __init__(self, train, val: list[np.ndarray], tokenizer: BinTokenizer, context_len: int, pred_len: int,
                 batch_size: int, eval_batches: int = 8, seed: int = 0, nan_prob: float = 0.2,
                 mix: dict[str, float] | None = None, short_history: bool = False, mixup: float = 0.0):
        super().__init__(train, val, 1, context_len + pred_len - 1, batch_size, eval_batches, seed, nan_prob,
                         context_segments=context_len, mix=mix, short_history=short_history, mixup=mixup)
        self.tok, self.H = tokenizer, pred_len

    def _ids(self, g: np.random.Generator, n: int, pool: list[np.ndarray] | None = None) -> Tensor:
        """(n, C + H) token rows: C context points (with injected gaps), then H target points."""
        C = self.C
        rows = np.empty((n, C + self.H))
        for i in range(n):
            w = self._draw(g, pool)[0]
            while np.isnan(w[:C]).all():  # a gap in a real series covers the context
                w = self._draw(g, pool)[0]
            ctx = w[:C].copy()            # missing values go into the inputs only
            if g.random() < self.nan_prob:  # missing values and a shorter history
                ctx[g.random(C) < g.uniform(0, 0.2)] = np.nan
                ctx[:g.integers(0, C // 2)] = np.nan
                if np.isnan(ctx).all():
                    last = np.flatnonzero(~np.isnan(w[:C]))[-1]
                    ctx[last] = w[last]
            rows[i, :C], rows[i, C:] = ctx, w[C:]
        scale = self.tok.scale_of(rows[:, :C])                                   # (n,)
        return torch.from_numpy(self.tok.tokenize(rows, scale))                  # (n, C + H)

    def _batch(self, g: np.random.Generator, n: int, pool: list[np.ndarray] | None = None) -> dict:
        return lm_batch(self._ids(g, n, pool), self.tok.pad_id)

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        g = np.random.default_rng([self.seed, step, micro])
        return lm_batch(self._ids(g, self.bs)[rows], self.tok.pad_id)


def make_tokenizer(cfg: dict) -> BinTokenizer:
    t = cfg.get("tokenizer", {})
    return BinTokenizer(n_bins=t.get("bins", 1021), low=t.get("low", -15.0), high=t.get("high", 15.0))


def fourier_bin_init(model: OmniModel, tok: BinTokenizer):
    """Bin i's token embedding and LM-head row start as the same Fourier features of its centre
    c_i, [sin(w_k c_i), cos(w_k c_i)] with periods from 4 bins to twice the range, scaled to
    the default init's std 0.02: neighbouring bins start out alike (an ordinal prior) and the
    untrained model already favours repeating the last value. PAD and EOS keep their init."""
    D = model.args.dim
    c = torch.tensor(tok.centres, dtype=torch.float32)[:, None]                  # (n_bins, 1)
    periods = torch.logspace(math.log10(4 * tok.width), math.log10(2 * (tok.high - tok.low)), D // 2)
    phase = c * (2 * math.pi / periods)[None, :]                                 # (n_bins, D/2)
    feats = torch.cat([phase.sin(), phase.cos()], -1) * 0.02 / math.sqrt(0.5)    # (n_bins, D)
    with torch.no_grad():
        model.backbone.tok_embeddings.weight[:tok.n_bins, :feats.shape[1]] = feats
        model.heads["lm"].proj.weight[:, :feats.shape[1]] = feats


def build_model(cfg: dict) -> OmniModel:
    """Backbone over n_bins + 2 token ids, untied LM head over the n_bins bins (``bin_init:
    fourier`` starts both from fourier_bin_init, ``random`` from the default init)."""
    tok, m = make_tokenizer(cfg), cfg["model"]
    C, H = cfg["context_length"], cfg["prediction_length"]
    args = ModelArgs.from_name(m.get("preset", "nano"), vocab_size=tok.vocab_size, **m.get("args", {}))
    if args.block_size < C + H - 1:
        raise ValueError(f"block_size {args.block_size} is shorter than context_length + prediction_length - 1 "
                         f"= {C + H - 1} tokens")
    model = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=tok.n_bins, tie=False)},
                            meta={"task": "forecast_bins", "context_length": C, "prediction_length": H,
                                  "tokenizer": tok.to_config()})
    init = cfg.get("bin_init", "random")
    if init not in ("random", "fourier"):
        raise ValueError(f"bin_init must be 'random' or 'fourier', got {init!r}")
    if init == "fourier":
        fourier_bin_init(model, tok)
    return model


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False,
        command: str | None = None) -> tuple[OmniModel, dict]:
    """Train from a config (see configs/forecast_bins.yaml); ``command`` is recorded in the meta."""
    C, H, data = cfg["context_length"], cfg["prediction_length"], cfg["data"]
    pools, val, _ = data_pools(data, C)
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg)
    if command or cli_command():  # this module's main, or ``omniar train forecast-bins``
        model.config["meta"]["train_command"] = command or cli_command()
    task = BinSeriesTask(pools, val, make_tokenizer(cfg), C, H, tcfg.batch_size,
                         cfg.get("eval", {}).get("batches", 8), tcfg.seed, mix=data.get("mix"),
                         short_history=data.get("short_history", False), mixup=data.get("mixup", 0.0))
    metrics = train(model, task, tcfg, device=device, resume=resume)
    if out:
        save_trained(model, metrics, out)
    return model, metrics


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
        if isinstance(context, (np.ndarray, Tensor)) and np.ndim(context) == 1:
            context = [context]
        if not isinstance(context, (list, tuple)) or not context:
            raise ValueError("context must be a 1-D series or a non-empty list of them")
        if len(context) > MAX_SERIES:
            raise ValueError(f"at most {MAX_SERIES} series per call, got {len(context)}")
        if isinstance(horizon, bool) or not (isinstance(horizon, int) and 1 <= horizon <= MAX_HORIZON):
            raise ValueError(f"horizon must be an integer in [1, {MAX_HORIZON}], got {horizon!r}")
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


def main(argv=None):
    """``python -m apps.forecast.bins --config configs/forecast_bins.yaml [--out DIR]``."""
    from apps.text.recipe import load_config
    ap = argparse.ArgumentParser(description="train a Chronos-style bin-token forecaster")
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", help="the finished checkpoint folder (default: the config's 'out')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config, required=("data", "model", "train", "context_length", "prediction_length"))
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m apps.forecast.bins " + " ".join(shlex.quote(x) for x in argv)
    _, metrics = run(cfg, out=a.out or cfg.get("out"), device=a.device, resume=a.resume, command=command)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()

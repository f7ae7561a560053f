"""Recipe: a Chronos-style bin-token forecaster (Ansari et al. 2024): mean scaling + uniform bins,
an LM head over the bins, teacher-forced next-token training.

    omniar train forecast-bins --config configs/forecast_bins.yaml
    python -m apps.forecast.bins_recipe --config configs/forecast_bins.yaml [--threads 1]

The alternative to the segment forecaster (apps/forecast/recipe.py) on the same backbone and the
same training data: the task subclasses its SeriesTask, so pools, mix weights, short histories,
missing values and TSMixup are shared; only the way a window becomes model input differs. A model
is an OmniModel with an untied ``lm`` head of ``n_bins`` outputs (heads/lm.LMHead) over a token
embedding of ``n_bins + 2`` ids (bins, PAD, EOS; modalities/timeseries_bins.py), so every sampled
token is a bin: PAD and EOS can be read but never predicted. Inference is apps/forecast/bins.py.

Left padding (a short history) is masked out of attention and every row's positions start at its
first observed point, in training exactly as ``backbone.generate`` does for left-padded prompts
(rows packed on the left, ``backbone.sequence.pack``); missing values inside the context stay in
as PAD tokens (the model learns to read them).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys

import numpy as np
import torch

from apps.forecast.recipe import SeriesTask, data_pools
from apps.text.recipe import load_config
from backbone.container import OmniModel, part
from backbone.sequence import Segment, pack
from backbone.train import run_recipe
from backbone.transformer import ModelArgs
from heads.lm import LMHead
from modalities.timeseries_bins import BinTokenizer, bin_segment


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

    def _rows(self, g: np.random.Generator, n: int, pool: list[np.ndarray] | None = None) -> list[list[Segment]]:
        """n token rows of C context points (with injected gaps), then H target points."""
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
        ids = torch.from_numpy(self.tok.tokenize(rows, scale))                   # (n, C + H)
        return [[bin_segment(r, self.tok.pad_id)] for r in ids]

    def _batch(self, rows: list[list[Segment]]) -> dict:
        """Left-padded to the full window and its last token a target only: (B, C + H - 1) inputs."""
        return pack(rows, self.tok.pad_id, side="left", trim_last=True, length=self.C + self.H).batch()


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


def build(cfg: dict, tcfg) -> tuple[OmniModel, BinSeriesTask, None]:
    """``run_recipe``'s task part: the shared data pools, the model and the bin-token task."""
    C, H, data = cfg["context_length"], cfg["prediction_length"], cfg["data"]
    pools, val, _, _ = data_pools(data, C)
    model = build_model(cfg)
    task = BinSeriesTask(pools, val, make_tokenizer(cfg), C, H, tcfg.batch_size,
                         cfg.get("eval", {}).get("batches", 8), tcfg.seed, mix=data.get("mix"),
                         short_history=data.get("short_history", False), mixup=data.get("mixup", 0.0))
    return model, task, None


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False,
        command: str | None = None) -> tuple[OmniModel, dict]:
    """Train from a config (see configs/forecast_bins.yaml); ``command`` is recorded in the meta
    (default: the ``omniar`` command line)."""
    return run_recipe(cfg, build, out, device, resume, command,
                      data_keys={"ett", "kernel_synth", "kernel_synth_length", "public", "mix", "mixup", "short_history"})


def main(argv=None):
    """``python -m apps.forecast.bins_recipe --config configs/forecast_bins.yaml [--out DIR]``."""
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
    command = "python -m apps.forecast.bins_recipe " + " ".join(shlex.quote(x) for x in argv)
    _, metrics = run(cfg, out=a.out or cfg.get("out"), device=a.device, resume=a.resume, command=command)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()

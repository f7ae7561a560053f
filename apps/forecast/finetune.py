"""Fine-tune a forecasting checkpoint on one column of a user's CSV.

    omniar finetune-forecast data.csv --column OT --model assets/forecast-zeroshot -o my-model/

The last ``--val-frac`` of the series is held out: the model is scored on it (pinball loss of
windows that forecast into it) before and after training, and both numbers are printed and
stored in the new checkpoint's config. Training goes through the shared trainer, so
checkpoints are atomic and ``--resume`` continues exactly; the segment windows are drawn the
same way as in pre-training (``apps.forecast.recipe.SeriesTask``, short histories allowed).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from apps.forecast.cli import read_series_csv
from apps.forecast.model import Forecaster
from apps.forecast.recipe import SeriesTask
from backbone.container import OmniModel
from backbone.sequence import pack
from backbone.train import TrainConfig, train
from modalities.timeseries import detect_period, instance_stats, seasonal_lag, segment, series_segment


@torch.no_grad()
def eval_loss(model: OmniModel, task: SeriesTask) -> float:
    """Mean pinball loss of the model on the task's validation windows."""
    model.eval()
    return float(np.mean([model(**b)[0].item() for b in task.eval_batches()]))


def finetune(model: OmniModel, series: np.ndarray, steps: int, out_dir: str, lr: float = 1e-4,
             batch_size: int = 32, val_frac: float = 0.2, seed: int = 0, device: str = "cpu",
             resume: bool = False, season: int | None = None) -> dict:
    """Train ``model`` in place on one series (L,); returns {"val_before", "val_after", ...}.
    ``season``: the period the seasonal-lag channel uses (models that have it); None detects it
    from the training part."""
    Forecaster(model)  # clear error for a non-forecasting checkpoint
    if not (1 <= batch_size <= 4096) or not (1 <= steps <= 1_000_000) or not (0 < lr < 1) or not (0 < val_frac < 1):
        raise ValueError("batch size must be in [1, 4096], steps in [1, 1000000], lr in (0, 1) and "
                         f"the validation fraction in (0, 1); got {batch_size}, {steps}, {lr}, {val_frac}")
    meta = model.config["meta"]
    S, C = meta["seg_len"], meta["context_segments"]
    T = meta.get("train_segments", C)
    n_val = int(len(series) * val_frac)
    if n_val < S or len(series) - n_val < 2 * S:
        raise ValueError(f"the series has {len(series)} points: too short to hold out {val_frac:.0%} and "
                         f"still train on whole segments of {S} (need at least {2 * S + max(S, n_val)})")
    cut = len(series) - n_val
    head, lag = series[:cut], bool(getattr(model.adapters["segment"], "lag", False))
    m = (season or detect_period(head[-C * S:])) if lag else 1
    task = SeriesTask({"user": [head]}, [series], S, T, batch_size, seed=seed, context_segments=C,
                      short_history=True, lag=lag, periods={id(head): m, id(series): m}, period_dropout=0.0)
    task.eval_batches = _held_out_eval(task, cut, m)  # scored only where the target is held out
    cfg = TrainConfig(out_dir=out_dir, max_steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                      warmup_steps=min(20, steps // 5), weight_decay=0.0, eval_every=max(steps // 4, 1),
                      ckpt_every=max(steps // 4, 1), log_every=max(steps // 10, 1), seed=seed)
    before = eval_loss(model, task), rollout_mae(model, series, cut, m)
    metrics = train(model, task, cfg, device=device, resume=resume)
    after = eval_loss(model, task), rollout_mae(model, series, cut, m)
    return {"val_before": before[0], "val_after": after[0], "mae_before": before[1], "mae_after": after[1],
            "season": m,
            "steps": steps, "train_points": cut, "val_points": n_val, "train_time_s": metrics.get("train_time_s")}


def rollout_mae(model: OmniModel, series: np.ndarray, cut: int, season: int = 1) -> float:
    """MAE of the median forecast from the origin ``cut`` over the held-out points (as far as
    the model's context allows), in the series' units."""
    f = Forecaster(model)
    h = min(len(series) - cut, (model.args.block_size - f.T) * f.S)
    pred = f.predict(series[:cut], h, quantiles=[0.5], season=season)[0, :, 0]
    y = series[cut:cut + h]
    ok = ~np.isnan(y)
    return float(np.abs(pred[ok] - y[ok]).mean()) if ok.any() else float("nan")


def _held_out_eval(task: SeriesTask, cut: int, season: int = 1):
    """Eval batches whose targets are only the held-out points: every context ending at or after
    ``cut`` in steps of one segment, targets before ``cut`` masked out (the seasonal-lag channel,
    if the task has it, at ``season``)."""
    S, C, T = task.S, task.C, task.T
    s = task.val[0]

    def batches() -> list[dict]:
        rows = []
        for end in range(cut, len(s), S):
            w = np.full((T + 1) * S, np.nan)
            start = end - C * S
            a, b = max(start, 0), min(start + (T + 1) * S, len(s))
            w[a - start:b - start] = s[a:b]
            tgt = w.copy()
            tgt[:max(cut - start, 0)] = np.nan      # score only the held-out tail
            ctx = w[:T * S]
            mean, std = instance_stats(ctx[:C * S])
            x = segment(ctx, S, mean, std, T)
            if task.lag:
                x = torch.cat([x, seasonal_lag(x[None], season)[0]], -1)
            rows.append([series_segment(x, segment(tgt[S:], S, mean, std, T))])
        return [pack(rows[i:i + 64]).batch() for i in range(0, len(rows), 64)]
    return batches


def main(a):
    out = Path(a.out)
    if out.exists() and any(out.iterdir()) and not a.force:
        raise ValueError(f"{out} exists and is not empty; pass --force to overwrite it")
    if a.steps < 1 or a.steps > 100_000:
        raise ValueError(f"--steps must be in [1, 100000], got {a.steps}")
    if getattr(a, "season", None) is not None and not 1 <= a.season <= 100_000:
        raise ValueError(f"--season must be a whole number of points from 1 to 100000, got {a.season}")
    if not 0.05 <= a.val_frac <= 0.5:
        raise ValueError(f"--val-frac must be in [0.05, 0.5], got {a.val_frac}")
    x = read_series_csv(a.csv, a.column)
    model = OmniModel.from_pretrained(a.model)
    run_dir = a.run_dir or str(Path("runs") / f"finetune-{out.name}")
    r = finetune(model, x, a.steps, run_dir, lr=a.lr, batch_size=a.batch_size, val_frac=a.val_frac,
                 seed=a.seed, device=a.device, resume=a.resume, season=getattr(a, "season", None))
    model.config["meta"]["finetuned"] = {"from": str(a.model), "csv": str(a.csv), "column": a.column, **r,
                                         "command": "omniar " + " ".join(shlex.quote(v) for v in sys.argv[1:])}
    model.cpu().save_pretrained(out)
    print(f"held-out MAE of the median {r['mae_before']:.4g} before, {r['mae_after']:.4g} after; pinball loss "
          f"{r['val_before']:.4f} before, {r['val_after']:.4f} after "
          f"({r['steps']} steps on {r['train_points']} points, {r['val_points']} held out); wrote {out}")

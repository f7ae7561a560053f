"""GenEval-lite and caption accuracy against training time (issue 19): is the text-to-image model
compute-bound? Scores every checkpoint a run kept (``out_dir/ckpt/step_*``; the ``ema/`` model
when the run averaged its weights) on the held-out prompts and renders of
benchmarks/t2i_geneval_lite.py and benchmarks/caption_accuracy.py, at the training seconds each
checkpoint recorded, and plots both curves.

One run gives every point, so a point is the model *at* that time in a run whose learning-rate
schedule was set for the whole budget (mid-schedule weights), not a separate run with that
budget; the EMA makes those mid-run weights fair to sample from.

    python benchmarks/t2i_learning_curve.py RUN[@MINUTES] ... [--point NAME=FOLDER@MINUTES ...]
        [--every K] [--per-task 24] [--captions 300] [--plot benchmarks/results/t2i_learning_curve.png]

``@MINUTES`` shifts a run that started from a trained checkpoint (``model.init_from``) by that
checkpoint's training time; ``--point`` adds a finished model (e.g. that starting checkpoint) to
the curve of the first run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apps.t2i.model import ImageModel  # noqa: E402
from benchmarks.caption_accuracy import score as caption_score  # noqa: E402
from benchmarks.common import print_table, write_result  # noqa: E402
from benchmarks.metrics.image_checks import geneval_lite  # noqa: E402
from modalities.image_shapes import held_out_prompts, make_dataset, task_of  # noqa: E402

TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def evaluate(folder, prompts, renders, truth, kinds, steps: int = 25, cfg: float = 3.0, seed: int = 0) -> dict:
    """One checkpoint folder -> GenEval-lite per task and overall (held-out prompts) and caption
    exact match (held-out renders)."""
    m = ImageModel.from_pretrained(folder)
    images = torch.cat([m.text_to_image(prompts[i:i + 48], steps=steps, cfg=cfg, seed=seed + i)
                        for i in range(0, len(prompts), 48)])
    caps = [c for chunk in renders.split(64) for c in m.caption(chunk)]
    return {**geneval_lite(images, prompts), "caption_exact": caption_score(caps, truth, kinds)["exact_match"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training runs' out_dir[@minutes before it] (ckpt/step_* are scored)")
    ap.add_argument("--point", action="append", default=[], help="NAME=FOLDER@MINUTES: one more model on the "
                    "first run's curve")
    ap.add_argument("--include", action="append", default=[], help="rows of an earlier result JSON of this script "
                    "(another run's curve, scored the same way) to plot and table beside these")
    ap.add_argument("--every", type=int, default=1, help="score every K-th checkpoint of a run (and its last)")
    ap.add_argument("--per-task", type=int, default=24)
    ap.add_argument("--captions", type=int, default=300)
    ap.add_argument("--plot", default="benchmarks/results/t2i_learning_curve.png")
    ap.add_argument("--out", default="t2i_learning_curve", help="result name under benchmarks/results/")
    a = ap.parse_args()
    torch.manual_seed(0)
    prompts = held_out_prompts(0, a.per_task)
    test = make_dataset(a.captions, "test", 0, full_captions=True)
    truth, kinds = [c for c, _, _ in test], [task_of(s) for _, s, _ in test]
    renders = torch.tensor(np.stack([im for _, _, im in test])).permute(0, 3, 1, 2).float() / 255
    rows = [r for f in a.include for r in json.loads(Path(f).read_text())["rows"]]
    for i, spec in enumerate(a.runs):
        run, _, offset = spec.partition("@")
        ckpts = sorted(p for p in (Path(run) / "ckpt").glob("step_*") if not p.name.endswith(".tmp"))
        if not ckpts:
            sys.exit(f"no checkpoints in {run}/ckpt")
        ckpts = [c for j, c in enumerate(ckpts) if (j + 1) % a.every == 0 or j == len(ckpts) - 1]
        points = [(name, Path(f), float(m)) for name, fm in (p.split("=", 1) for p in a.point)
                  for f, m in [fm.rsplit("@", 1)]] if i == 0 else []
        for c in ckpts:
            state = json.loads((c / "trainer_state.json").read_text())
            points.append((f"step {state['step']}", c / "ema" if (c / "ema").is_dir() else c,
                           float(offset or 0) + state.get("elapsed_s", 0.0) / 60))
        for name, folder, minutes in points:
            rows.append({"run": Path(run).name, "model": name, "minutes": round(minutes, 1),
                         "weights": "ema" if folder.name == "ema" else "raw",
                         **evaluate(folder, prompts, renders, truth, kinds)})
            print(rows[-1], flush=True)
    print_table(rows, ["run", "model", "minutes", "weights", *TASKS, "overall", "caption_exact"])
    _plot(rows, a.plot)
    print("wrote", write_result(a.out, {"runs": a.runs, "rows": rows, "plot": a.plot,
                                        "note": "points are checkpoints of one run (mid-schedule weights)"}))


def _plot(rows: list[dict], path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for j, run in enumerate(dict.fromkeys(r["run"] for r in rows)):
        rs = sorted((r for r in rows if r["run"] == run), key=lambda r: r["minutes"])
        x = [r["minutes"] for r in rs]
        ax.plot(x, [r["overall"] for r in rs], "o-", color=f"C{2 * j}", label=f"{run}: GenEval-lite (held-out prompts)")
        ax.plot(x, [r["caption_exact"] for r in rs], "s--", color=f"C{2 * j + 1}",
                label=f"{run}: caption exact match (held-out renders)")
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("text-to-image and captioning against training time", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

"""GenEval-lite for text-to-image on held-out prompts (issue 3).

The six GenEval task types (single object, two objects, counting, colours, position, colour
binding), 24 prompts each, all built from combinations held out of training; each image is
read by the exact checker of benchmarks/metrics/image_checks.py (palette thresholding, connected
components, shape, colour, count, position). Overall = mean over the six tasks. Also seconds
per image on this CPU (batched, classifier-free guidance included).

Reference rows in the same run: the ground-truth renderer (the checker's ceiling, 100%) and
random training images (what ignoring the prompt scores).

Baseline in the same run: a diffusers UNet2DConditionModel DDPM (benchmarks/t2i_unet.py) trained
on the same data for the same wall-clock, sampled with DDIM at the same steps and CFG.

Held-out and seen prompts (combinations training contains) are scored separately; each row is
the mean over ``--sample-seeds`` (default 2) with the spread (max - min) of the overall score.

    python benchmarks/t2i_geneval_lite.py [--model path | name=path ...] [--unet runs/t2i_unet]
        [--steps 25] [--cfg 3] [--passes 16] [--splits held_out seen] [--sample-seeds 0 1]
A model's row is named by its order and head (raster/diffusion, mar/flow, ...) unless given a name.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apps.t2i.model import ImageModel, save_images  # noqa: E402
from benchmarks.common import print_table, write_result  # noqa: E402
from benchmarks.metrics.image_checks import check, geneval_lite  # noqa: E402
from benchmarks.t2i_unet import load_unet  # noqa: E402
from modalities.image_shapes import held_out_prompts, make_dataset, parse_caption, render, seen_prompts  # noqa: E402
from modalities.shape_layout import parse_layout, render_layout  # noqa: E402


def _score(m, prompts, a, seed, sched, kw, rerank=1) -> tuple[dict, float, torch.Tensor]:
    """One model, prompts and sampling seed -> (GenEval-lite scores, s/image, images). A layout
    checkpoint's scores add ``plan``: GenEval-lite of its plans rendered exactly (what the words
    alone get right), and ``drawn``: the share of images that pass among prompts whose plan passes
    (what the drawing keeps of a right plan)."""
    planned = getattr(m, "plan", 0) > 0
    kw = {**kw, **({"rerank": rerank} if rerank > 1 else {}), **({"return_layouts": True} if planned else {}),
          **({"layout_temperature": a.layout_temperature} if planned else {})}
    t = time.time()
    outs = [m.text_to_image(prompts[i:i + a.batch], steps=a.steps, cfg=a.cfg, temperature=a.temperature,
                            seed=seed + i, cfg_schedule=sched, **kw) for i in range(0, len(prompts), a.batch)]
    dt = (time.time() - t) / len(prompts)
    images = torch.cat([o[0] if planned else o for o in outs])
    scores = geneval_lite(images, prompts)
    if planned:
        plans = [render_layout(parse_layout(L)) for o in outs for L in o[1]]
        scores["plan"] = geneval_lite(plans, prompts)["overall"]
        ok = [(check(p, q)[0], check(im, q)[0]) for p, im, q in zip(plans, images, prompts)]
        scores["drawn"] = float(np.mean([d for p, d in ok if p])) if any(p for p, _ in ok) else 0.0
    return scores, dt, images


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="path or name=path (default: assets/t2i-shapes)")
    ap.add_argument("--unet", help="folder of the UNet baseline (python benchmarks/t2i_unet.py --seconds S --out DIR)")
    ap.add_argument("--passes", type=int, nargs="+", default=[16], help="backbone passes of a masked (MAR) order; "
                    "several values give one row each")
    ap.add_argument("--per-task", type=int, default=24)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--layout-temperature", type=float, default=1.0, help="of a layout checkpoint's plan")
    ap.add_argument("--cfg-schedule", nargs="+", default=["constant"], choices=["constant", "linear"],
                    help="one row per schedule: a constant scale, or MAR's linear ramp from 1")
    ap.add_argument("--splits", nargs="+", default=["held_out", "seen"], choices=["held_out", "seen"],
                    help="held_out: prompts of combinations never trained on (the score); seen: combinations "
                    "training contains, scored separately")
    ap.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1],
                    help="sampling seeds: rows give the mean over them and the spread (max - min)")
    ap.add_argument("--rerank", type=int, nargs="+", default=[1], help="best-of-K reranking by the model's own "
                    "captioning (ImageModel.text_to_image(rerank=K)); one row per value (the UNet: 1 only)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0, help="the prompts' seed")
    ap.add_argument("--save-grid", help="write a PNG of the first model's held-out images here")
    ap.add_argument("--out", default="t2i_geneval_lite", help="result name under benchmarks/results/")
    a = ap.parse_args()
    torch.manual_seed(0)
    prompt_sets = {"held_out": held_out_prompts(a.seed, a.per_task), "seen": seen_prompts(a.seed, a.per_task)}
    tasks = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    rows = []

    prompts = prompt_sets["held_out"]
    rng = np.random.default_rng(a.seed)
    truth = [render(parse_caption(p), rng)[0] for p in prompts]
    rows.append({"method": "ground-truth renders (ceiling)", "split": "held_out", **geneval_lite(truth, prompts),
                 "s_per_image": None})
    rand = [im for _, _, im in make_dataset(len(prompts), "train", a.seed)]
    rows.append({"method": "random training images (floor)", "split": "held_out", **geneval_lite(rand, prompts),
                 "s_per_image": None})

    models = []
    for spec in a.model or ["assets/t2i-shapes"]:
        name, path = spec.split("=", 1) if "=" in spec else (None, spec)
        m = ImageModel.from_pretrained(path)
        meta = m.model.config["meta"]
        for kw in ([{"passes": p} for p in a.passes] if m.order == "mar" else [{}]):
            models.append((f"ours {name or meta['order'] + '/' + meta['head']}", path, m, kw))
    if a.unet:
        models.append(("baseline UNet2DConditionModel DDPM", a.unet, load_unet(a.unet), {}))
    for name, path, m, kw in models:
        m.text_to_image(prompt_sets["held_out"][:2], steps=2, cfg=a.cfg, **kw)  # warm-up
        for sched, rerank, split in ((c, r, s) for c in a.cfg_schedule for r in a.rerank for s in a.splits):
            if rerank > 1 and not isinstance(m, ImageModel):
                continue
            runs = [_score(m, prompt_sets[split], a, s, sched, kw, rerank) for s in a.sample_seeds]
            overall = [r[0]["overall"] for r in runs]
            passes = f", {kw['passes']} passes" if kw else ""
            best = f", best of {rerank}" if rerank > 1 else ""
            rows.append({"method": f"{name}{passes}{best}, CFG {a.cfg} {sched} ({path})", "split": split,
                         **{t: float(np.mean([r[0][t] for r in runs])) for t in tasks},
                         "overall": float(np.mean(overall)), "spread": max(overall) - min(overall),
                         **{k: float(np.mean([r[0][k] for r in runs])) for k in ("plan", "drawn") if k in runs[0][0]},
                         "per_seed": overall, "s_per_image": float(np.mean([r[1] for r in runs])), **kw})
            if a.save_grid and split == "held_out" and not any("grid" in r for r in rows):
                save_images(runs[0][2], a.save_grid, nrow=a.per_task)        # one row of images per task
                rows[-1]["grid"] = a.save_grid
            print(rows[-1], flush=True)
    cols = ["method", "split", *tasks, "overall", "spread", "plan", "drawn", "s_per_image"]
    print()
    print_table(rows, cols)
    res = {"rows": rows, "prompts": len(prompts), "steps": a.steps, "cfg": a.cfg, "temperature": a.temperature,
           "layout_temperature": a.layout_temperature,
           "cfg_schedule": a.cfg_schedule, "sample_seeds": a.sample_seeds,
           "targets": {"overall": 0.85, "stretch": 0.95, "each_task": 0.7, "seen_minus_held_out": 0.1,
                       "s_per_image": 0.5, "baseline": "baseline UNet2DConditionModel DDPM"}}
    print("wrote", write_result(a.out, res))


if __name__ == "__main__":
    main()

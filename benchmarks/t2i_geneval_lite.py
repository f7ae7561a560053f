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

    python benchmarks/t2i_geneval_lite.py [--model path | name=path ...] [--unet runs/t2i_unet]
        [--steps 25] [--cfg 3] [--passes 16]
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
from benchmarks.metrics.image_checks import geneval_lite  # noqa: E402
from benchmarks.t2i_unet import load_unet  # noqa: E402
from modalities.image_shapes import held_out_prompts, make_dataset, parse_caption, render  # noqa: E402


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
    ap.add_argument("--cfg-schedule", nargs="+", default=["constant", "linear"], choices=["constant", "linear"],
                    help="one row per schedule: a constant scale, or MAR's linear ramp from 1")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-grid", help="write a PNG of the first model's images here")
    ap.add_argument("--out", default="t2i_geneval_lite", help="result name under benchmarks/results/")
    a = ap.parse_args()
    torch.manual_seed(0)
    prompts = held_out_prompts(a.seed, a.per_task)
    tasks = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    rows = []

    rng = np.random.default_rng(a.seed)
    truth = [render(parse_caption(p), rng)[0] for p in prompts]
    rows.append({"method": "ground-truth renders (ceiling)", **geneval_lite(truth, prompts), "s_per_image": None})
    rand = [im for _, _, im in make_dataset(len(prompts), "train", a.seed)]
    rows.append({"method": "random training images (floor)", **geneval_lite(rand, prompts), "s_per_image": None})

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
        m.text_to_image(prompts[:2], steps=2, cfg=a.cfg, **kw)  # warm-up
        for sched in a.cfg_schedule:
            t = time.time()
            images = torch.cat([m.text_to_image(prompts[i:i + a.batch], steps=a.steps, cfg=a.cfg,
                                                temperature=a.temperature, seed=a.seed + i, cfg_schedule=sched, **kw)
                                for i in range(0, len(prompts), a.batch)])
            s = (time.time() - t) / len(prompts)
            if a.save_grid and len(rows) == 2:
                save_images(images, a.save_grid, nrow=a.per_task)
            passes = f", {kw['passes']} passes" if kw else ""
            rows.append({"method": f"{name}{passes}, CFG {a.cfg} {sched} ({path})", **geneval_lite(images, prompts),
                         "s_per_image": s, **kw})
            print(rows[-1], flush=True)
    cols = ["method", *tasks, "overall", "s_per_image"]
    print()
    print_table(rows, cols)
    res = {"rows": rows, "prompts": len(prompts), "steps": a.steps, "cfg": a.cfg, "temperature": a.temperature,
           "cfg_schedule": a.cfg_schedule,
           "targets": {"overall": 0.95, "s_per_image": 0.5, "ahead_of": "baseline UNet2DConditionModel DDPM"}}
    print("wrote", write_result(a.out, res))


if __name__ == "__main__":
    main()

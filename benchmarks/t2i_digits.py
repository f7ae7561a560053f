"""Digits text-to-image (issue 3): "the digit 7" -> an 8x8 digit, scored by a classifier trained
here on the real digits (benchmarks/metrics/digit_checks.py, seed 0): its accuracy on the generated
samples (was the asked-for digit drawn?) and the KID between generated and real held-out digits
in its feature space (Binkowski et al. 2018; lower is better, 0 = same distribution). Also the
same checkpoint's captioning: exact match of its greedy caption on the real held-out digits,
against the classifier's own accuracy there.

Rows in the same run:
  * real held-out digits (the ceiling: the classifier's own test accuracy; KID of test vs train);
  * baseline "class-conditional Gaussian": per digit, every pixel drawn independently from
    that digit's per-pixel mean and std over the training split (a named cheap generator: it
    gets the class right, not the strokes);
  * random training digits ignoring the prompt (the floor: accuracy ~0.1).

    python benchmarks/t2i_digits.py [--model assets/t2i-digits ...] [--per-digit 50] [--steps 25] [--cfg 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apps.t2i.model import ImageModel  # noqa: E402
from benchmarks.common import print_table, write_result  # noqa: E402
from benchmarks.metrics.digit_checks import kid, score_samples, train_classifier  # noqa: E402
from modalities.digits import caption, load_split, parse_caption, to_tensor  # noqa: E402


def gaussian_baseline(labels: np.ndarray, seed: int) -> torch.Tensor:
    """(N,) labels -> (N, 1, 8, 8) samples of the per-class, per-pixel Gaussian of the train split."""
    x, y = load_split("train")
    x = to_tensor(x)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(len(labels), 1, 8, 8)
    for d in range(10):
        cls = x[torch.from_numpy(y == d)]
        rows = torch.from_numpy(labels == d)
        noise = torch.randn(int(rows.sum()), 1, 8, 8, generator=g)
        out[rows] = (cls.mean(0) + cls.std(0) * noise).clamp(0, 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="checkpoint folder (default: assets/t2i-digits)")
    ap.add_argument("--per-digit", type=int, default=50)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--passes", type=int, default=8, help="backbone passes of a masked (MAR) order")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(0)
    t = time.time()
    clf, clf_acc = train_classifier(seed=0)
    print(f"classifier: test accuracy {clf_acc:.3f} ({time.time() - t:.0f} s)", flush=True)
    xt, yt = load_split("test")
    xr, yr = load_split("train")
    real_test = to_tensor(xt)
    labels = np.repeat(np.arange(10), a.per_digit)
    prompts = [caption(int(d)) for d in labels]
    rows, captioning = [], {}

    def add(method, images, s=None):
        rows.append({"method": method, **score_samples(images, labels[:len(images)], clf, real_test), "s_per_image": s})
        print(rows[-1], flush=True)

    rows.append({"method": "real held-out digits (ceiling)", "accuracy": clf_acc,
                 **dict(zip(("kid_mean", "kid_std"), _kid_real(clf, real_test, to_tensor(xr)))), "s_per_image": None})
    add("baseline class-conditional Gaussian", gaussian_baseline(labels, a.seed))
    rng = np.random.default_rng(a.seed)
    add("random training digits (floor)", to_tensor(xr[rng.integers(len(yr), size=len(labels))]))
    for path in a.model or ["assets/t2i-digits"]:
        m = ImageModel.from_pretrained(path)
        kw = {"passes": min(a.passes, m.tok.n_tokens)} if m.order == "mar" else {}
        m.text_to_image(prompts[:2], steps=2, cfg=a.cfg, **kw)  # warm-up
        t = time.time()
        images = torch.cat([m.text_to_image(prompts[i:i + a.batch], steps=a.steps, cfg=a.cfg, seed=a.seed + i, **kw)
                            for i in range(0, len(prompts), a.batch)])
        add(f"ours {m.order}/{m.model.config['meta']['head']}, CFG {a.cfg} ({path})", images,
            (time.time() - t) / len(prompts))
        caps = sum([m.caption(real_test[i:i + 64]) for i in range(0, len(yt), 64)], [])
        captioning[path] = float(np.mean([_read(c) == int(y) for c, y in zip(caps, yt)]))
        print(f"captioning exact match on {len(yt)} real held-out digits: {captioning[path]:.3f}", flush=True)
    print()
    print_table(rows, ["method", "accuracy", "kid_mean", "kid_std", "s_per_image"])
    res = {"rows": rows, "samples": len(labels), "steps": a.steps, "cfg": a.cfg, "passes": a.passes,
           "classifier_test_accuracy": clf_acc, "captioning_exact_match": captioning, "targets": {"accuracy": 0.95}}
    print("wrote", write_result("t2i_digits", res))


def _read(caption: str) -> int | None:
    try:
        return parse_caption(caption)
    except ValueError:
        return None


def _kid_real(clf, real_test, real_train) -> tuple[float, float]:
    with torch.no_grad():
        return kid(clf.features(real_test), clf.features(real_train))


if __name__ == "__main__":
    main()

"""The shipped text-to-image + captioning checkpoint on held-out combinations (fixed seeds).

Measured (benchmarks/t2i_geneval_lite.py, benchmarks/caption_accuracy.py): GenEval-lite 0.306 on
144 held-out prompts and 0.37 exact-match captions on 300 held-out renders; these thresholds sit
below the numbers measured on the subsets used here, and far above what ignoring the input scores."""
import numpy as np
import torch

from apps.t2i.model import ImageModel
from benchmarks.caption_accuracy import score
from benchmarks.metrics.image_checks import geneval_lite
from modalities.image_shapes import held_out_prompts, make_dataset, task_of

MODEL = "assets/t2i-shapes"


def test_text_to_image_geneval_lite_on_held_out_prompts():
    m = ImageModel.from_pretrained(MODEL)
    prompts = held_out_prompts(0, per_task=8)
    images = m.text_to_image(prompts, steps=25, cfg=3.0, seed=0)
    r = geneval_lite(images, prompts)
    assert r["overall"] >= 0.15, r                                   # measured 0.29 here
    assert r["single_object"] >= 0.375 and r["colors"] >= 0.5, r  # measured 0.75 and 0.875 here


def test_captions_of_held_out_renders():
    m = ImageModel.from_pretrained(MODEL)
    test = make_dataset(96, "test", 0, full_captions=True)
    images = torch.tensor(np.stack([im for _, _, im in test])).permute(0, 3, 1, 2).float() / 255
    r = score(m.caption(images), [c for c, _, _ in test], [task_of(s) for _, s, _ in test])
    assert r["exact_match"] >= 0.25, r                               # measured 0.34 here


def test_mar_checkpoint_follows_prompts_above_the_floor():
    """assets/t2i-shapes-mar (MAR order, same data and time): weaker than raster here (0.13-0.15 on
    all 144 prompts), but well above ignoring the prompt (random training images: 0.035)."""
    m = ImageModel.from_pretrained("assets/t2i-shapes-mar")
    prompts = held_out_prompts(0, per_task=8)
    r = geneval_lite(m.text_to_image(prompts, steps=25, cfg=3.0, seed=0, passes=16), prompts)
    assert r["overall"] >= 0.08 and r["single_object"] >= 0.25, r     # measured 0.167 and 0.375 here

"""The shipped text-to-image + captioning checkpoints on held-out combinations (fixed seeds).

Measured (benchmarks/t2i_geneval_lite.py, benchmarks/caption_accuracy.py; README, issue 19): the
default assets/t2i-shapes-flow-long scores GenEval-lite 0.465 on 144 held-out prompts (2 sampling
seeds) and 0.700 exact-match captions on 300 held-out renders. The thresholds below sit just under
what these smaller subsets measured, and far above what ignoring the input scores (0.035)."""
import numpy as np
import torch

from apps.t2i import DEFAULT_CHECKPOINT
from apps.t2i.model import ImageModel
from benchmarks.caption_accuracy import score
from benchmarks.metrics.image_checks import geneval_lite
from modalities.image_shapes import held_out_prompts, make_dataset, seen_prompts, task_of

MODEL = DEFAULT_CHECKPOINT


def _renders(n: int):
    test = make_dataset(n, "test", 0, full_captions=True)
    images = torch.tensor(np.stack([im for _, _, im in test])).permute(0, 3, 1, 2).float() / 255
    return images, [c for c, _, _ in test], [task_of(s) for _, s, _ in test]


def test_default_checkpoint_geneval_lite_on_held_out_and_seen_prompts():
    m = ImageModel.from_pretrained(MODEL)
    held, seen = held_out_prompts(0, per_task=8), seen_prompts(0, per_task=8)
    r = geneval_lite(torch.cat([m.text_to_image(held[i:i + 24], steps=25, cfg=3.0, seed=i) for i in (0, 24)]), held)
    s = geneval_lite(torch.cat([m.text_to_image(seen[i:i + 24], steps=25, cfg=3.0, seed=i) for i in (0, 24)]), seen)
    assert r["overall"] >= 0.45, r                       # measured 0.52 here
    assert r["single_object"] >= 0.8 and r["colors"] >= 0.8, r  # measured 1.0 and 1.0 here
    assert s["overall"] >= 0.55, s                       # measured 0.65 here


def test_default_checkpoint_captions_held_out_renders():
    m = ImageModel.from_pretrained(MODEL)
    images, truth, kinds = _renders(96)
    r = score(m.caption(images), truth, kinds)
    assert r["exact_match"] >= 0.55, r                     # measured 0.625 here


def test_own_captioning_tells_the_right_prompt_from_a_wrong_one():
    """The reranking score (caption_logprob): on held-out renders, the true caption is likelier
    than another render's caption nearly always."""
    m = ImageModel.from_pretrained(MODEL)
    images, truth, _ = _renders(64)
    right, wrong = m.caption_logprob(images, truth), m.caption_logprob(images, truth[1:] + truth[:1])
    assert float((right > wrong).float().mean()) >= 0.9         # measured 0.97 here


def test_issue3_raster_checkpoint_stays_above_the_floor():
    """assets/t2i-shapes (issue 3's 25-min diffusion model), still shipped: measured 0.29 here."""
    m = ImageModel.from_pretrained("assets/t2i-shapes")
    prompts = held_out_prompts(0, per_task=8)
    r = geneval_lite(m.text_to_image(prompts, steps=25, cfg=3.0, seed=0), prompts)
    assert r["overall"] >= 0.15 and r["single_object"] >= 0.375 and r["colors"] >= 0.5, r


def test_mar_checkpoint_follows_prompts_above_the_floor():
    """assets/t2i-shapes-mar (MAR order, same data and time): weaker than raster here (0.13-0.15 on
    all 144 prompts), but well above ignoring the prompt (random training images: 0.035)."""
    m = ImageModel.from_pretrained("assets/t2i-shapes-mar")
    prompts = held_out_prompts(0, per_task=8)
    r = geneval_lite(m.text_to_image(prompts, steps=25, cfg=3.0, seed=0, passes=16), prompts)
    assert r["overall"] >= 0.08 and r["single_object"] >= 0.25, r     # measured 0.167 and 0.375 here

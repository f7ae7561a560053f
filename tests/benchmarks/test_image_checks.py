"""The exact GenEval-lite checker (benchmarks/metrics/image_checks.py): 100% on ground truth, catches errors."""
import numpy as np
import pytest

from benchmarks.metrics.image_checks import check, classify_shape, detect, geneval_lite
from modalities.image_shapes import PALETTE, SHAPES, TASKS, held_out_prompts, make_dataset, parse_caption, render, shape_mask


def test_every_shape_and_size_is_recognised():
    for s in SHAPES:
        for size in range(10, 15):
            m = shape_mask(s, size)
            ys, xs = np.nonzero(m)
            assert classify_shape(m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]) == s


@pytest.mark.parametrize("split", ["train", "test"])
def test_ground_truth_scores_100_percent(split):
    data = make_dataset(300, split, seed=2)
    scores = geneval_lite([im for *_, im in data], [c for c, *_ in data])
    assert scores == {**{t: 1.0 for t in TASKS}, "overall": 1.0}


def test_eval_prompts_rendered_score_100_percent():
    prompts = held_out_prompts(seed=0)
    rng = np.random.default_rng(0)
    assert geneval_lite([render(parse_caption(p), rng)[0] for p in prompts], prompts)["overall"] == 1.0


def _render(text, seed=0):
    return render(parse_caption(text), np.random.default_rng(seed))[0]


def test_checker_catches_errors():
    img = _render("a red circle and a blue square")
    assert check(img, "a red circle and a blue square") == (True, [])
    ok, why = check(img, "a blue circle and a red square")                 # colours bound wrongly
    assert not ok and "expected 1 blue circle, found 0" in why
    recoloured = img.copy()
    recoloured[(img == PALETTE["red"]).all(-1)] = PALETTE["green"]        # wrong colour
    assert not check(recoloured, "a red circle and a blue square")[0]
    assert not check(img, "a red circle")[0]                               # extra object
    three = _render("three green triangles")
    assert check(three, "three green triangles")[0]
    ok, why = check(three, "two green triangles")                          # wrong count
    assert not ok and "found 3" in why[0]
    assert not check(three, "four green triangles")[0]
    assert not check(three, "three green squares")[0]                      # wrong shape
    left = _render("a red circle to the left of a blue square")
    assert check(left, "a red circle to the left of a blue square")[0]
    assert check(left, "a blue square to the right of a red circle")[0]
    ok, why = check(left, "a red circle to the right of a blue square")   # swapped relation
    assert not ok and "relation" in why[0]
    blank = np.full((32, 32, 3), 255, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for bad in (blank, noise, np.zeros((32, 32, 3), np.uint8)):
        for text in ("a circle", "a circle and a square", "two crosses", "a red square",
                     "a red circle above a blue square", "a red circle and a blue square"):
            assert not check(bad, text)[0]


def test_geneval_lite_scores_per_task():
    prompts = ["a circle", "a circle", "a yellow square", "two crosses"]
    images = [_render("a circle"), _render("a square"), _render("a yellow square"), _render("two crosses")]
    assert geneval_lite(images, prompts) == {"single_object": 0.5, "counting": 1.0, "colors": 1.0,
                                             "overall": pytest.approx(2.5 / 3)}
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        geneval_lite(images[:2], prompts[:1])


def test_float_images_and_detections():
    img = _render("a purple triangle")
    d = detect(img.astype(np.float32).transpose(2, 0, 1) / 255)
    assert [(x.colour, x.shape) for x in d] == [("purple", "triangle")]
    with pytest.raises(ValueError, match="32x32"):
        check(np.zeros((16, 16, 3), np.uint8), "a circle")

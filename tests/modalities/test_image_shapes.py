"""Synthetic GenEval-style shapes (modalities/image_shapes.py): captions, rendering, held-out splits."""
import numpy as np
import pytest
import torch

from benchmarks.metrics.image_checks import detect
from modalities.image_shapes import (AXIS, HELD_OUT_PAIRS, HELD_OUT_RELATIONS, PALETTE, TASKS, Obj, Spec,
                                     caption, held_out_prompts, make_dataset, parse_caption, render, shapes_data,
                                     task_of)

EXAMPLES = {
    "a circle": "single_object", "a circle and a square": "two_object",
    "three green triangles": "counting", "two crosses": "counting", "a yellow square": "colors",
    "an orange circle": "colors", "a red circle to the left of a blue square": "position",
    "a triangle above a cross": "position", "a red circle below a blue circle": "position",
    "a purple cross to the right of an orange triangle": "position",
    "a red circle and a blue square": "color_attr",
}


@pytest.fixture(scope="module")
def train():
    return make_dataset(2000, "train", seed=0)


def test_caption_round_trip():
    for text, task in EXAMPLES.items():
        spec = parse_caption(text)
        assert caption(spec) == text and task_of(spec) == task
    assert parse_caption("A Red Circle.") == Spec((Obj("circle", "red"),))
    assert parse_caption("two blue squares") == Spec((Obj("square", "blue", 2),))
    for text, spec, _ in make_dataset(200, "test", seed=1):
        assert parse_caption(text) == spec and caption(spec) == text


@pytest.mark.parametrize("text, msg", [
    ("a red hexagon", "unknown word 'hexagon'; known shapes: circle, square, triangle, cross; colours: red"),
    ("a pink circle", "unknown word 'pink'"), ("three circle", "number mismatch"),
    ("a red", "cannot parse"), ("a circle and a square and a cross", "at most two"),
    ("two circles to the left of a square", "two single objects"),
    ("a circle and a circle", "distinguishable"), ("three circles and two squares", "at most 4")])
def test_bad_captions_are_named(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_caption(text)


def test_render_is_exact_and_deterministic():
    spec = parse_caption("a red circle to the left of a blue square")
    a, la = render(spec, np.random.default_rng(3))
    b, _ = render(spec, np.random.default_rng(3))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert colours == {(255, 255, 255), PALETTE["red"], PALETTE["blue"]}     # no antialiasing
    assert la[0]["cx"] + 6 <= la[1]["cx"]
    d1 = make_dataset(50, "train", seed=5)
    d2 = make_dataset(50, "train", seed=5)
    assert all(x[0] == y[0] and np.array_equal(x[2], y[2]) for x, y in zip(d1, d2))
    assert {task_of(s) for _, s, _ in d1} == set(TASKS)


def _pairs_and_relations(spec, image):
    """Colour-shape pairs in the caption and the image; (colour pair, axis) for position."""
    dets = detect(image)
    pairs = {(o.colour, o.shape) for o in spec.objects} | {(d.colour, d.shape) for d in dets}
    rel = (frozenset(d.colour for d in dets), AXIS[spec.relation]) if spec.relation else None
    return pairs, rel


def test_held_out_combinations_never_in_train(train):
    for _, spec, image in train:
        pairs, rel = _pairs_and_relations(spec, image)
        assert not pairs & HELD_OUT_PAIRS
        assert rel not in HELD_OUT_RELATIONS
    for _, spec, image in make_dataset(300, "test", seed=0):            # every test sample has one
        pairs, rel = _pairs_and_relations(spec, image)
        assert (rel in HELD_OUT_RELATIONS) if spec.relation else (pairs & HELD_OUT_PAIRS)


def test_eval_prompts_cover_tasks_with_held_out_combinations():
    prompts = held_out_prompts(seed=0)
    assert prompts == held_out_prompts(seed=0) and len(prompts) == 6 * 24
    specs = [parse_caption(p) for p in prompts]
    assert [task_of(s) for s in specs] == [t for t in TASKS for _ in range(24)]
    for s in specs:
        task = task_of(s)
        pairs = {(o.colour, o.shape) for o in s.objects}
        if task == "position":
            assert (frozenset(o.colour for o in s.objects), AXIS[s.relation]) in HELD_OUT_RELATIONS
        elif task in ("counting", "colors", "color_attr"):
            assert pairs & HELD_OUT_PAIRS
    assert len(set(prompts[4 * 24:5 * 24])) == 24 and len(set(prompts[5 * 24:])) == 24


def test_shapes_data_is_model_input():
    images, prompts, captions = shapes_data(4, "train", seed=2)
    assert images.shape == (4, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) == 1.0
    scenes = make_dataset(4, "train", 2, full_captions=True)
    assert captions == [c for c, _, _ in scenes] and all(parse_caption(p) for p in prompts)
    assert torch.equal(images[0], torch.tensor(scenes[0][2]).permute(2, 0, 1).float() / 255)

"""Scene layouts as words (modalities/shape_layout.py): exact round trip to the render, the
grammar's errors, the data source with the same scenes as shapes_data."""
import numpy as np
import pytest
import torch

from modalities.image_shapes import make_scenes, shapes_data
from modalities.shape_layout import (LAYOUT_LEN, LAYOUT_WORDS, NONE, describe, layout_data, layout_words, parse_layout,
                                     render_layout)


def test_layout_words_render_the_scene_exactly():
    scenes = make_scenes(60, "train", seed=4, with_layout=True)
    for shown, scene, image, objects in scenes:
        words = layout_words(objects)
        assert len(words) == LAYOUT_LEN and set(words) <= set(LAYOUT_WORDS) | {o["colour"] for o in objects} | \
            {o["shape"] for o in objects}
        assert np.array_equal(render_layout(parse_layout(words)), image)
        n = sum(o.count for o in scene.objects)
        assert words[5 * n:] == [NONE] * (LAYOUT_LEN - 5 * n)
        assert [w for w in words[0::5] if w != NONE] == [o["colour"] for o in objects]


def test_with_layout_keeps_the_same_scenes():
    plain = make_scenes(20, "test", seed=1)
    both = make_scenes(20, "test", seed=1, with_layout=True)
    assert all(a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2]) for a, b in zip(plain, both))
    images, prompts, captions, plans = layout_data(8, "train", 3)
    ref = shapes_data(8, "train", 3)
    assert torch.equal(images, ref[0]) and prompts == ref[1] and captions == ref[2] and len(plans) == 8


@pytest.mark.parametrize("words,msg", [
    (["red"] * 3, "has 20 words"),
    (["red", "circle", "s12", "x3", "y4", NONE, NONE, NONE, NONE, NONE,
      "blue", "square", "s10", "x1", "y1"] + [NONE] * 5, "after 'none'"),
    (["red", "circle", "x3", "s12", "y4"] + [NONE] * 15, "word 2: 'x3'"),
    (["red", "circle", "s14", "x20", "y4"] + [NONE] * 15, "leaves the 32 px image"),
    (["pink", "circle", "s14", "x2", "y4"] + [NONE] * 15, "word 0: 'pink'"),
])
def test_parse_layout_names_the_word_out_of_place(words, msg):
    with pytest.raises(ValueError, match=msg):
        parse_layout(words)


def test_describe():
    words = ["red", "circle", "s12", "x3", "y17", "blue", "square", "s10", "x20", "y15"] + [NONE] * 10
    assert describe(words) == "red circle 12 px at (3, 17); blue square 10 px at (20, 15)"
    assert describe([]) == "" and describe([NONE] * LAYOUT_LEN) == "no objects"

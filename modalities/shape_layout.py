"""Scene layouts as words: the plan a text-to-image model writes before it draws (issue 19).

A layout lists the objects of a shapes scene (modalities/image_shapes.py) in a fixed-length,
fixed-grammar string of ``LAYOUT_LEN`` words: ``MAX_OBJECTS`` entries of five words each,

    entry := colour shape s<size> x<left> y<top>      e.g.  red circle s12 x3 y17
    empty := none none none none none                 (after the last object)

so a 2-object scene reads ``red circle s12 x3 y17 blue square s10 x20 y15 none none ... none``.
Sizes and corners are the renderer's own (px, top-left of the bounding box), so a layout fixes
the image exactly: ``render_layout(parse_layout(layout_words(objs)))`` is the scene's render.

Why: the text-to-image model first writes this plan with its LM head, then draws it patch by
patch (apps/t2i/layout.py). Counting, positions and colour binding become choices of discrete
words under a cross-entropy loss, and drawing becomes local. In the spirit of LayoutGPT (Feng
et al. 2023) and LLM-grounded diffusion (Lian et al. 2023), which plan boxes with a separate LLM
and draw with a layout-conditioned diffusion model; here one autoregressive model does both,
as RALL-E's chain-of-prosody writes its prosody tokens before the speech tokens. Captioning runs
the chain the other way: image -> layout -> caption. Entries follow the caption's object order
(objects[0] first); a counting phrase's objects come in the renderer's placement order.
"""
from __future__ import annotations

import numpy as np
import torch

from modalities.image_shapes import (BACKGROUND, COLOURS, MAX_OBJECTS, OBJECT_SIZE, PALETTE, SHAPES, SIZE, caption,
                                     make_scenes, shape_mask)

ENTRY = 5                                         # words per object
LAYOUT_LEN = MAX_OBJECTS * ENTRY                  # 20 words, always
MARK = "<layout>"                                 # opens the plan (follows the caption, or the image)
NONE = "none"
SIZES = tuple(f"s{s}" for s in range(OBJECT_SIZE[0], OBJECT_SIZE[1] + 1))
XS = tuple(f"x{i}" for i in range(SIZE))
YS = tuple(f"y{i}" for i in range(SIZE))
LAYOUT_WORDS = (MARK, NONE) + SIZES + XS + YS     # the words a layout adds to the caption vocabulary
SLOTS = (COLOURS, SHAPES, SIZES, XS, YS)          # an entry's word classes, in order


def layout_words(objects: list[dict]) -> list[str]:
    """Render layout (``image_shapes.render``'s dicts: colour, shape, size, x0, y0) -> its
    ``LAYOUT_LEN`` words (without ``MARK``)."""
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"a layout has at most {MAX_OBJECTS} objects, got {len(objects)}")
    words = []
    for o in objects:
        words += [o["colour"], o["shape"], f"s{o['size']}", f"x{o['x0']}", f"y{o['y0']}"]
    return words + [NONE] * (LAYOUT_LEN - len(words))


def parse_layout(words: list[str]) -> list[dict]:
    """``LAYOUT_LEN`` layout words -> object dicts (colour, shape, size, x0, y0); ValueError naming
    the first word out of place. Boxes must lie inside the image; overlaps are allowed here."""
    if len(words) != LAYOUT_LEN:
        raise ValueError(f"a layout has {LAYOUT_LEN} words, got {len(words)}")
    objects = []
    for e in range(MAX_OBJECTS):
        entry = words[e * ENTRY:(e + 1) * ENTRY]
        if entry[0] == NONE:
            if any(w != NONE for w in words[e * ENTRY:]):
                raise ValueError(f"layout entry {e}: words after 'none' must all be 'none', got {entry}")
            break
        for k, (w, allowed) in enumerate(zip(entry, SLOTS)):
            if w not in allowed:
                raise ValueError(f"layout entry {e}, word {k}: {w!r} is not one of {allowed[0]}..{allowed[-1]}")
        size, x0, y0 = int(entry[2][1:]), int(entry[3][1:]), int(entry[4][1:])
        if x0 + size > SIZE or y0 + size > SIZE:
            raise ValueError(f"layout entry {e}: a {size} px box at ({x0}, {y0}) leaves the {SIZE} px image")
        objects.append(dict(colour=entry[0], shape=entry[1], size=size, x0=x0, y0=y0))
    return objects


def render_layout(objects: list[dict]) -> np.ndarray:
    """Object dicts -> image uint8 (32, 32, 3), drawn as ``image_shapes.render`` draws them."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    for q in objects:
        s = q["size"]
        img[q["y0"]:q["y0"] + s, q["x0"]:q["x0"] + s][shape_mask(q["shape"], s)] = PALETTE[q["colour"]]
    return img


def layout_data(n: int, split: str, seed: int) -> tuple[torch.Tensor, list[str], list[str], list[list[str]]]:
    """``image_shapes.shapes_data`` with each scene's layout words -> (images (n, 3, 32, 32) in
    [0, 1], prompts, full captions, layouts (n lists of ``LAYOUT_LEN`` words)); the same scenes."""
    scenes = make_scenes(n, split, seed, with_layout=True)
    images = torch.tensor(np.stack([s[2] for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return (images, [caption(s[0]) for s in scenes], [caption(s[1]) for s in scenes],
            [layout_words(s[3]) for s in scenes])


def describe(words: list[str]) -> str:
    """Layout words -> a line for people: "red circle 12 px at (3, 17); blue square 10 px at (20, 15)"
    (top-left corners, px); "" for no words (a checkpoint without a plan)."""
    if not words:
        return ""
    return "; ".join(f"{o['colour']} {o['shape']} {o['size']} px at ({o['x0']}, {o['y0']})"
                     for o in parse_layout(list(words))) or "no objects"

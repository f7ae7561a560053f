"""Synthetic compositional images in the style of GenEval (Ghosh et al. 2023): flat-colour shapes
on a white background, 32x32 RGB, with captions for GenEval's six task types and a test split
made of combinations that never occur in training.

World. Six palette colours, far apart in RGB (the closest pair, orange/yellow, is 100 apart), on
white (255, 255, 255); four shapes (circle, square, triangle pointing up, cross), 10-14 px wide
(10-12 px when 3-4 objects share the image), drawn by pixel-centre tests without antialiasing,
so every pixel is exactly a palette colour or the background. Objects never touch: bounding
boxes are at least ``GAP`` px apart, so each is its own connected component.

Grammar (a colour is optional; "any colour" when absent, as in GenEval's colourless prompts)::

    caption  := phrase | phrase " and " phrase | phrase " " relation " " phrase
    phrase   := ("a" | "an" | "two" | "three" | "four") [colour] shape["s"]
    relation := "to the left of" | "to the right of" | "above" | "below"

Task types (GenEval names), read off the spec by :func:`task_of`:
  single_object "a circle"                 two_object "a circle and a square"
  counting      "three green triangles"    colors     "a yellow square"
  position      "a red circle to the left of a blue square"
  color_attr    "a red circle and a blue square" (two coloured objects: colours must bind)
single_object and two_object are colourless, as in GenEval; otherwise "a red circle" (colors)
could not be told apart from a single-object prompt.

Held out (never in a train caption or a train image; every test sample contains one):
  * colour-shape pairs ``HELD_OUT_PAIRS`` (one per colour, so each colour and shape is still
    seen in training with other partners);
  * (unordered colour pair, axis) ``HELD_OUT_RELATIONS`` in position scenes, e.g. no train
    position sample puts red and blue side by side (left of / right of), whatever the caption.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

SIZE = 32                                    # image side, px
BACKGROUND = (255, 255, 255)                 # white
PALETTE = {                                  # RGB; min pairwise distance 100 (orange-yellow)
    "red": (220, 20, 30),
    "orange": (240, 120, 0),
    "yellow": (240, 220, 0),
    "green": (20, 160, 40),
    "blue": (30, 60, 220),
    "purple": (140, 40, 170),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
MAX_OBJECTS = 4
OBJECT_SIZE = (10, 14)      # px, inclusive; (10, 12) with 3-4 objects
GAP = 2                     # px of background between any two bounding boxes (and 1 px to the border)
REL_GAP = 6                 # px: a rendered relation's centre offset along its axis, at least

HELD_OUT_PAIRS = frozenset({("purple", "triangle"), ("orange", "circle"), ("green", "square"),
                            ("blue", "cross"), ("red", "cross"), ("yellow", "triangle")})
HELD_OUT_RELATIONS = frozenset({(frozenset({"red", "blue"}), "horizontal"),
                                (frozenset({"yellow", "orange"}), "horizontal"),
                                (frozenset({"green", "purple"}), "vertical"),
                                (frozenset({"blue", "green"}), "vertical")})


@dataclass(frozen=True)
class Obj:
    """``count`` objects of one shape; ``colour`` None means any (one) palette colour."""
    shape: str
    colour: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Spec:
    """One or two object phrases; ``relation`` (a key of RELATIONS) puts objects[0] relative to objects[1]."""
    objects: tuple[Obj, ...]
    relation: str | None = None


def validate(spec: Spec) -> Spec:
    """``spec`` itself, or ValueError naming what is wrong."""
    if not 1 <= len(spec.objects) <= 2:
        raise ValueError(f"a spec has 1 or 2 object phrases, got {len(spec.objects)}")
    for o in spec.objects:
        if o.shape not in SHAPES:
            raise ValueError(f"unknown shape {o.shape!r}; known shapes: {', '.join(SHAPES)}")
        if o.colour is not None and o.colour not in PALETTE:
            raise ValueError(f"unknown colour {o.colour!r}; known colours: {', '.join(COLOURS)}")
        if o.count not in NUMBERS:
            raise ValueError(f"count must be 1-4, got {o.count}")
    if sum(o.count for o in spec.objects) > MAX_OBJECTS:
        raise ValueError(f"at most {MAX_OBJECTS} objects in an image")
    if len(spec.objects) == 2:
        a, b = spec.objects
        if a.shape == b.shape and (a.colour is None or b.colour is None or a.colour == b.colour):
            raise ValueError(f"the two phrases must be distinguishable, got {a} and {b}")
    if spec.relation is not None:
        if spec.relation not in RELATIONS:
            raise ValueError(f"unknown relation {spec.relation!r}; known: {', '.join(RELATIONS)}")
        if len(spec.objects) != 2 or any(o.count != 1 for o in spec.objects):
            raise ValueError("a relation needs exactly two single objects")
    return spec


def task_of(spec: Spec) -> str:
    """The GenEval task type a (valid) spec belongs to."""
    if spec.relation is not None:
        return "position"
    if len(spec.objects) == 2:
        return "color_attr" if all(o.colour for o in spec.objects) else "two_object"
    o = spec.objects[0]
    return "counting" if o.count > 1 else "colors" if o.colour else "single_object"


# ---- captions -----------------------------------------------------------------------------------
def _phrase(o: Obj) -> str:
    words = ([o.colour] if o.colour else []) + [PLURALS[o.shape] if o.count > 1 else o.shape]
    num = NUMBERS[o.count]
    if o.count == 1 and words[0][0] in "aeiou":
        num = "an"
    return " ".join([num] + words)


def caption(spec: Spec) -> str:
    """Spec -> its canonical caption, e.g. "an orange circle to the left of two ..." (lower case)."""
    validate(spec)
    first = _phrase(spec.objects[0])
    if len(spec.objects) == 1:
        return first
    joint = RELATIONS[spec.relation] if spec.relation else "and"
    return f"{first} {joint} {_phrase(spec.objects[1])}"


_WORD_NUMBERS = {w: n for n, w in NUMBERS.items()} | {"an": 1}
_NOUNS = {s: (s, 1) for s in SHAPES} | {p: (s, 2) for s, p in PLURALS.items()}
_JOINTS = {("and",): None} | {tuple(v.split()): k for k, v in RELATIONS.items()}
_VOCAB = set(_WORD_NUMBERS) | set(PALETTE) | set(_NOUNS) | {w for j in _JOINTS for w in j}


def _parse_phrase(words: list[str], text: str) -> Obj:
    bad = ValueError(f"cannot parse {' '.join(words)!r} in {text!r}: expected "
                     "'<a|an|two|three|four> [colour] <shape>'")
    if len(words) not in (2, 3) or words[0] not in _WORD_NUMBERS or words[-1] not in _NOUNS:
        raise bad
    colour = words[1] if len(words) == 3 else None
    if colour is not None and colour not in PALETTE:
        raise bad
    count = _WORD_NUMBERS[words[0]]
    shape, plural = _NOUNS[words[-1]]
    if (count > 1) != (plural > 1):
        raise ValueError(f"number mismatch in {' '.join(words)!r}")
    return Obj(shape, colour, count)


def parse_caption(text: str) -> Spec:
    """Caption -> Spec; ValueError naming the first unknown word, or what does not parse.
    Case and a trailing full stop are ignored; ``caption(parse_caption(t)) == t`` for captions
    made by :func:`caption`."""
    if not isinstance(text, str):
        raise ValueError(f"a caption is a string, got {type(text).__name__}")
    words = text.strip().lower().removesuffix(".").split()
    for w in words:
        if w not in _VOCAB:
            raise ValueError(f"unknown word {w!r}; known shapes: {', '.join(SHAPES)}; "
                             f"colours: {', '.join(COLOURS)}; numbers: {', '.join(_WORD_NUMBERS)}; "
                             f"relations: and, {', '.join(RELATIONS.values())}")
    cuts = [(i, j) for i in range(len(words)) for j in _JOINTS if tuple(words[i:i + len(j)]) == j]
    if len(cuts) > 1:
        raise ValueError(f"cannot parse {text!r}: at most two object phrases")
    if not cuts:
        return validate(Spec((_parse_phrase(words, text),)))
    i, joint = cuts[0]
    a, b = _parse_phrase(words[:i], text), _parse_phrase(words[i + len(joint):], text)
    return validate(Spec((a, b), _JOINTS[joint]))


# ---- rendering ----------------------------------------------------------------------------------
def shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool mask, by pixel-centre tests (no antialiasing)."""
    c = (np.arange(size) + 0.5) - size / 2          # pixel centres relative to the box centre
    y, x = c[:, None], c[None, :]
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return x ** 2 + y ** 2 <= (size / 2) ** 2
    if shape == "triangle":                          # apex up, base = height = size
        return np.abs(x) <= (y + size / 2) / 2
    if shape == "cross":                             # arms one third of the size, even-width
        half = max(1, round(size / 6))
        return (np.abs(x) < half) | (np.abs(y) < half)
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def _relation_ok(a: dict, b: dict, relation: str) -> bool:
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]     # image y grows downwards
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along >= REL_GAP and abs(across) <= along


def render(spec: Spec, rng: np.random.Generator, tries: int = 200) -> tuple[np.ndarray, list[dict]]:
    """Spec -> (image uint8 (32, 32, 3), layout): one dict per drawn object with colour, shape,
    size, x0, y0 (top-left) and cx, cy (mask centroid, px). A phrase without a colour is drawn
    in one random palette colour. Objects are placed by rejection sampling: in the image with a
    1 px border, ``GAP`` px apart, and satisfying the relation (``REL_GAP`` px along its axis,
    and more along it than across)."""
    validate(spec)
    items = []
    for o in spec.objects:
        colour = o.colour or COLOURS[rng.integers(len(COLOURS))]
        items += [(colour, o.shape)] * o.count
    hi = OBJECT_SIZE[1] if len(items) <= 2 else 12
    for _ in range(tries):
        layout = []
        for colour, shape in items:
            s = int(rng.integers(OBJECT_SIZE[0], hi + 1))
            for _ in range(50):
                x0, y0 = (int(v) for v in rng.integers(1, SIZE - s, size=2))
                if all(x0 >= q["x0"] + q["size"] + GAP or q["x0"] >= x0 + s + GAP or
                       y0 >= q["y0"] + q["size"] + GAP or q["y0"] >= y0 + s + GAP for q in layout):
                    break
            else:
                break
            ys, xs = np.nonzero(shape_mask(shape, s))
            layout.append(dict(colour=colour, shape=shape, size=s, x0=x0, y0=y0,
                               cx=x0 + xs.mean() + 0.5, cy=y0 + ys.mean() + 0.5))
        if len(layout) == len(items) and (spec.relation is None or
                                          _relation_ok(layout[0], layout[1], spec.relation)):
            break
    else:
        raise RuntimeError(f"could not place {caption(spec)!r} in {tries} tries")
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    for q in layout:
        s = q["size"]
        img[q["y0"]:q["y0"] + s, q["x0"]:q["x0"] + s][shape_mask(q["shape"], s)] = PALETTE[q["colour"]]
    return img, layout


# ---- data set -----------------------------------------------------------------------------------
def held_out_in(scene: Spec) -> bool:
    """Whether a fully coloured scene contains a held-out pair or held-out (colour pair, axis)."""
    if any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects):
        return True
    if scene.relation is None:
        return False
    return (frozenset(o.colour for o in scene.objects), AXIS[scene.relation]) in HELD_OUT_RELATIONS


def _sample(task: str, rng: np.random.Generator, drop_colour: float) -> tuple[Spec, Spec]:
    """(caption spec, fully coloured scene spec) of one random sample of ``task``."""
    def obj(count=1, exclude=()):
        shape = str(rng.choice([s for s in SHAPES if s not in exclude]))
        return Obj(shape, str(rng.choice(COLOURS)), count)

    if task in ("single_object", "colors"):
        scene = Spec((obj(),))
    elif task == "counting":
        scene = Spec((obj(int(rng.integers(2, 5))),))
    elif task in ("two_object", "color_attr"):                # different shapes (GenEval: classes)
        a = obj()
        b = obj(exclude=(a.shape,))
        if task == "color_attr":                              # ... and different colours
            b = Obj(b.shape, str(rng.choice([c for c in COLOURS if c != a.colour])))
        scene = Spec((a, b))
    elif task == "position":
        a = obj()
        b = obj(exclude=(a.shape,)) if rng.random() < 0.5 else Obj(a.shape, str(rng.choice(
            [c for c in COLOURS if c != a.colour])))
        scene = Spec((a, b), str(rng.choice(list(RELATIONS))))
    else:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    keep = task in ("colors", "color_attr") or (task in ("counting", "position") and rng.random() >= drop_colour)
    if task == "position" and scene.objects[0].shape == scene.objects[1].shape:
        keep = True                                           # same shape: colours tell them apart
    shown = scene if keep else Spec(tuple(Obj(o.shape, None, o.count) for o in scene.objects), scene.relation)
    return shown, scene


def _split_rng(split: str, seed: int) -> np.random.Generator:
    if split not in ("train", "test"):
        raise ValueError(f"split is 'train' or 'test', got {split!r}")
    return np.random.default_rng([seed, ("train", "test").index(split)])


def grammar_words() -> list[str]:
    """Every word a caption may use (the text-to-image model's vocabulary)."""
    return sorted(_VOCAB)


def make_scenes(n: int, split: str = "train", seed: int = 0, tasks: tuple[str, ...] = TASKS,
                with_layout: bool = False) -> list[tuple]:
    """``n`` samples (caption spec, full scene spec, image uint8 (32, 32, 3)[, the render's
    layout with ``with_layout``: its object dicts, in the spec's order]), tasks drawn
    uniformly; the same (n, split, seed) gives the same list. Train never contains a held-out
    combination (in the caption or the image); every test sample contains one (position: a
    held-out colour pair on its axis; the other tasks: a held-out colour-shape pair). Train
    drops the colour from counting and position captions half the time, test never does; the
    scene spec always names every colour (captioning targets)."""
    rng = _split_rng(split, seed)
    out = []
    while len(out) < n:
        task = tasks[rng.integers(len(tasks))]
        shown, scene = _sample(task, rng, drop_colour=0.5 if split == "train" else 0.0)
        if split == "test":
            held = (held_out_in(scene) if task != "position" else
                    (frozenset(o.colour for o in scene.objects), AXIS[scene.relation]) in HELD_OUT_RELATIONS)
            if not held:
                continue
        elif held_out_in(scene):
            continue
        image, objects = render(scene, rng)
        out.append((shown, scene, image, objects) if with_layout else (shown, scene, image))
    return out


def shapes_data(n: int, split: str, seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """n fresh scenes as model data -> (images (n, 3, 32, 32) float in [0, 1], prompts, full
    captions). Captioning targets name every colour; prompts are written as users write them."""
    scenes = make_scenes(n, split, seed)
    images = torch.tensor(np.stack([im for _, _, im in scenes])).permute(0, 3, 1, 2).float() / 255
    return images, [caption(shown) for shown, _, _ in scenes], [caption(scene) for _, scene, _ in scenes]


def make_dataset(n: int, split: str = "train", seed: int = 0, tasks: tuple[str, ...] = TASKS,
                 full_captions: bool = False) -> list[tuple[str, Spec, np.ndarray]]:
    """``make_scenes`` as (caption, spec, image): the caption as a user would write it, or with
    ``full_captions`` the scene's complete caption and spec."""
    return [(caption(scene if full_captions else shown), scene if full_captions else shown, image)
            for shown, scene, image in make_scenes(n, split, seed, tasks)]


def held_out_prompts(seed: int = 0, per_task: int = 24) -> list[str]:
    """The evaluation prompts: ``per_task`` captions for each of the six tasks, in TASKS order,
    each built from held-out combinations (colour-shape pairs; position: colour pair on an axis).
    Colourless tasks have few distinct prompts ("a circle", "a circle and a square", ...): they
    cycle, and their images are only held out on the generator's side. Fixed by ``seed``."""
    return _eval_prompts(seed, per_task, held_out=True)


def seen_prompts(seed: int = 0, per_task: int = 24) -> list[str]:
    """Like :func:`held_out_prompts`, built only from combinations that training does contain
    (no held-out colour-shape pair, no held-out colour pair on a relation's axis): the seen score
    that the held-out score is compared with (issue 19). The colourless tasks are the same prompts."""
    return _eval_prompts(seed, per_task, held_out=False)


def _eval_prompts(seed: int, per_task: int, held_out: bool) -> list[str]:
    rng = np.random.default_rng([seed, 2] if held_out else [seed, 3])
    objs = list(itertools.product(COLOURS, SHAPES))
    pairs = sorted(HELD_OUT_PAIRS) if held_out else [o for o in objs if o not in HELD_OUT_PAIRS]
    held_rel = lambda a, b, r: (frozenset((a[0], b[0])), AXIS[r]) in HELD_OUT_RELATIONS  # noqa: E731
    pairs2 = [(a, b) for a, b in itertools.permutations(objs, 2)
              if a[0] != b[0] and a[1] != b[1] and (a in HELD_OUT_PAIRS or b in HELD_OUT_PAIRS) == held_out]
    rel = [(a, b, r) for a, b in itertools.permutations(objs, 2) for r in RELATIONS if (a[1] != b[1] or a[0] != b[0])
           and (held_rel(a, b, r) if held_out else
                not held_rel(a, b, r) and a not in HELD_OUT_PAIRS and b not in HELD_OUT_PAIRS)]
    cands = {
        "single_object": [Spec((Obj(s),)) for s in SHAPES],
        "two_object": [Spec((Obj(a), Obj(b))) for a, b in itertools.combinations(SHAPES, 2)],
        "counting": [Spec((Obj(s, c, k),)) for c, s in pairs for k in (2, 3, 4)],
        "colors": [Spec((Obj(s, c),)) for c, s in pairs],
        "position": [Spec((Obj(a[1], a[0]), Obj(b[1], b[0])), r) for a, b, r in rel],
        "color_attr": [Spec((Obj(a[1], a[0]), Obj(b[1], b[0]))) for a, b in pairs2],
    }
    out = []
    for task in TASKS:
        c = cands[task]
        order = rng.permutation(len(c))
        out += [caption(c[order[i % len(c)]]) for i in range(per_task)]
    return out

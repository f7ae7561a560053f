"""An exact, detector-free GenEval (Ghosh et al. 2023) for the synthetic shapes world of
modalities/image_shapes.py: images are read by palette thresholding and connected components
instead of an object detector, so ground-truth renders score 100% by construction.

1. Every pixel goes to the nearest of the palette colours and the white background; a pixel
   farther than ``THRESHOLD`` (RGB distance; half the closest palette pair's distance) from all
   of them is "unknown" and belongs to nothing.
2. Per colour, 8-connected components; components under ``MIN_AREA`` pixels are noise and dropped.
3. Each component's shape is the nearest prototype in a small geometric feature space, taken
   from its bounding box: fill ratio (square 1.0, circle ~0.79, triangle and cross ~0.5),
   fill of the four corner cells (cross 0, circle ~1/3), and bottom-minus-top half fill
   (triangle ~0.5, others 0). Too far from every prototype, or a bounding box with aspect
   ratio outside ``ASPECT``, gives shape "unknown".

A spec is satisfied (GenEval's rules, made strict) when every phrase finds exactly its count of
objects of its shape and colour (any colour when the phrase has none), no other object is
present (an extra or unrecognised component fails: we decide "no extra objects"), and a
relation holds between the two objects' centroids by at least ``POS_MARGIN`` px along its axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from modalities.image_shapes import BACKGROUND, COLOURS, PALETTE, SIZE, TASKS, Spec, parse_caption, task_of, validate

THRESHOLD = 50.0     # RGB distance; PALETTE's closest pair (orange, yellow) is 100 apart
MIN_AREA = 20        # px; the smallest rendered object (a 10 px cross) has 64
ASPECT = (0.7, 1.43)  # bounding-box height / width of a recognisable shape
MAX_FEATURE_DIST = 0.3
POS_MARGIN = 3.0     # px between centroids along a relation's axis (renders use 6)
# (fill, corner fill, bottom - top half fill), measured on the 10-14 px renders
PROTOTYPES = {"square": (1.0, 1.0, 0.0), "circle": (0.79, 0.33, 0.0),
              "triangle": (0.53, 0.39, 0.52), "cross": (0.51, 0.0, 0.0)}

_REFS = np.array([BACKGROUND] + [PALETTE[c] for c in COLOURS], dtype=np.float64)  # (7, 3)


@dataclass
class Detection:
    """One connected component: colour, shape ("unknown" if unrecognised), centroid (px), area."""
    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    bbox: tuple[int, int, int, int]   # y0, x0, y1, x1 (exclusive)


def as_uint8_image(image) -> np.ndarray:
    """uint8 (H, W, 3), or float (H, W, 3) / (3, H, W) in [0, 1] (numpy or torch) -> uint8 (32, 32, 3)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.shape != (SIZE, SIZE, 3):
        raise ValueError(f"expected a {SIZE}x{SIZE} RGB image (H, W, 3) or (3, H, W), got {a.shape}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected uint8 or float pixels, got {a.dtype}")
    if np.isnan(a).any():
        raise ValueError("image contains NaN")
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def palette_map(image) -> np.ndarray:
    """(H, W) int: -1 unknown, 0 background, 1 + i for COLOURS[i]."""
    a = as_uint8_image(image).astype(np.float64)
    d = np.linalg.norm(a[:, :, None, :] - _REFS[None, None], axis=-1)      # (H, W, 7)
    idx = d.argmin(-1)
    return np.where(d.min(-1) <= THRESHOLD, idx, -1)


def shape_features(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(fill, corner fill, bottom - top half fill, aspect h/w) of a component cropped to its box."""
    h, w = mask.shape
    k = max(1, round(min(h, w) / 4))
    corner = np.mean([mask[:k, :k].mean(), mask[:k, -k:].mean(), mask[-k:, :k].mean(), mask[-k:, -k:].mean()])
    asym = mask[h - h // 2:].mean() - mask[: h // 2].mean() if h > 1 else 0.0
    return float(mask.mean()), float(corner), float(asym), h / w


def classify_shape(mask: np.ndarray) -> str:
    """Shape name of a bool mask cropped to its bounding box, or "unknown"."""
    fill, corner, asym, aspect = shape_features(mask)
    if not ASPECT[0] <= aspect <= ASPECT[1]:
        return "unknown"
    f = np.array([fill, corner, asym])
    name, dist = min(((s, float(np.linalg.norm(f - p))) for s, p in PROTOTYPES.items()), key=lambda t: t[1])
    return name if dist <= MAX_FEATURE_DIST else "unknown"


def detect(image) -> list[Detection]:
    """The objects in an image: per palette colour, 8-connected components of >= MIN_AREA px."""
    labels = palette_map(image)
    out = []
    for i, colour in enumerate(COLOURS, start=1):
        comp, n = ndimage.label(labels == i, structure=np.ones((3, 3)))
        for j, sl in enumerate(ndimage.find_objects(comp), start=1):
            mask = comp[sl] == j
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(mask)
            out.append(Detection(colour, classify_shape(mask), float(sl[1].start + xs.mean() + 0.5),
                                 float(sl[0].start + ys.mean() + 0.5), area,
                                 (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)))
    return out


def _holds(a: Detection, b: Detection, relation: str) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy                   # image y grows downwards
    return {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation] >= POS_MARGIN


def check(image, spec: Spec | str) -> tuple[bool, list[str]]:
    """(ok, reasons): whether the image shows exactly the spec; each failure gives one reason."""
    spec = validate(parse_caption(spec) if isinstance(spec, str) else spec)
    dets = detect(image)
    reasons, claimed, found = [], set(), []
    for o in spec.objects:
        hits = [i for i, d in enumerate(dets) if d.shape == o.shape and (o.colour is None or d.colour == o.colour)]
        claimed.update(hits)
        found.append(hits)
        if len(hits) != o.count:
            what = f"{o.colour + ' ' if o.colour else ''}{o.shape}"
            reasons.append(f"expected {o.count} {what}, found {len(hits)}")
    for i, d in enumerate(dets):
        if i not in claimed:
            reasons.append(f"extra object: {d.colour} {d.shape} at ({d.cx:.1f}, {d.cy:.1f})")
    if spec.relation and not reasons:
        a, b = dets[found[0][0]], dets[found[1][0]]
        if not _holds(a, b, spec.relation):
            reasons.append(f"relation '{spec.relation}' fails: centroids ({a.cx:.1f}, {a.cy:.1f}) "
                           f"and ({b.cx:.1f}, {b.cy:.1f})")
    return not reasons, reasons


def geneval_lite(images, prompts) -> dict[str, float]:
    """Per-task accuracy over (image, prompt) pairs, and "overall": the mean over the tasks
    present (GenEval's score: the six tasks weigh equally). Prompts are captions or Specs."""
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    hits: dict[str, list[bool]] = {}
    for im, p in zip(images, prompts):
        spec = parse_caption(p) if isinstance(p, str) else validate(p)
        hits.setdefault(task_of(spec), []).append(check(im, spec)[0])
    out = {t: float(np.mean(hits[t])) for t in TASKS if t in hits}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out

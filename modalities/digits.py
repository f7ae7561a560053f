"""Handwritten digits for text-to-image: scikit-learn's ``load_digits`` (the UCI optical
recognition of handwritten digits set, Alpaydin & Kaynak 1998), 1797 grayscale 8x8 images with
integer pixels 0..16, one label 0..9 each. The data ships inside scikit-learn (no download).

Split. A fixed, seeded, label-stratified split: per digit class, ``TEST_FRACTION`` of its
images (rounded) go to "test", the rest to "train" (1528 / 269 images). The same on every
machine and every run (numpy's PCG64 with ``SPLIT_SEED``).

Captions (one grammar, digit characters as words)::

    caption := "the digit " d        d := "0" | "1" | ... | "9"
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SIZE = 8                       # image side, px
MAX_VALUE = 16                 # load_digits pixel range is 0..16
TEST_FRACTION = 0.15
SPLIT_SEED = 0
SPLITS = ("train", "test")
DIGITS = tuple(str(d) for d in range(10))
_PREFIX = ("the", "digit")


@lru_cache(maxsize=1)
def _all() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as uint8 (N, 8, 8) in 0..255 and labels int64 (N,)."""
    from sklearn.datasets import load_digits   # local: only this modality needs scikit-learn
    d = load_digits()
    images = np.rint(d.images.astype(np.float64) * 255.0 / MAX_VALUE).astype(np.uint8)
    return images, d.target.astype(np.int64)


def split_indices() -> dict[str, np.ndarray]:
    """{"train": int64 (N,), "test": int64 (M,)}: sorted indices into load_digits' order, disjoint,
    together all 1797, stratified by label."""
    return {k: v.copy() for k, v in _split_indices().items()}


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    _, labels = _all()
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        test.append(rng.permutation(idx)[:int(round(TEST_FRACTION * len(idx)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``split`` in ("train", "test") -> (images uint8 (N, 8, 8) in 0..255, labels int64 (N,)).

    Pixels are load_digits' 0..16 scaled to 0..255 (rounded). Returns copies."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    images, labels = _all()
    idx = _split_indices()[split]
    return images[idx].copy(), labels[idx].copy()


def caption(label: int) -> str:
    """0..9 -> "the digit 7"."""
    try:
        ok = not isinstance(label, bool) and int(label) == label and 0 <= int(label) <= 9
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"a digit label is an integer 0..9, got {label!r}")
    return f"the digit {int(label)}"


def parse_caption(text: str) -> int:
    """"the digit 7" -> 7 (case-sensitive; surrounding whitespace and runs of spaces are tolerated).

    Raises ValueError naming what is wrong for anything outside the grammar."""
    if not isinstance(text, str):
        raise ValueError(f"a caption is a string, got {type(text).__name__}")
    words = text.split()
    if len(words) != 3 or tuple(words[:2]) != _PREFIX:
        raise ValueError(f"expected a caption 'the digit D' with D in 0..9, got {text!r}")
    if words[2] not in DIGITS:
        raise ValueError(f"unknown digit word {words[2]!r} in {text!r}; expected one of {' '.join(DIGITS)}")
    return int(words[2])


def grammar_words() -> list[str]:
    """Every word a caption uses: ["the", "digit", "0", ..., "9"]."""
    return [*_PREFIX, *DIGITS]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 8, 8) in 0..255 -> float32 (N, 1, 8, 8) in [0, 1]."""
    a = np.asarray(images)
    if a.ndim != 3 or a.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected images of shape (N, {SIZE}, {SIZE}), got {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {a.dtype}")
    return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)


def digits_data(n: int, split: str, seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """n digits drawn (with replacement) from a split -> (images (n, 1, 8, 8) in [0, 1], prompts,
    captions), both "the digit 7"."""
    images, labels = load_split(split)
    idx = np.random.default_rng(seed).integers(len(labels), size=n)
    caps = [caption(int(y)) for y in labels[idx]]
    return to_tensor(images[idx]), caps, caps

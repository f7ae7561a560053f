"""The load_digits modality (modalities/digits.py): a fixed stratified split, captions, tensors."""
import numpy as np
import pytest
import torch

from modalities.digits import (SPLITS, caption, digits_data, grammar_words, load_split, parse_caption,
                               split_indices, to_tensor)


def test_split_sizes_dtypes_and_pixel_range():
    sizes = {}
    for split in SPLITS:
        images, labels = load_split(split)
        assert images.dtype == np.uint8 and images.shape == (len(labels), 8, 8)
        assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
        assert images.min() == 0 and images.max() == 255
        sizes[split] = len(labels)
    assert sizes == {"train": 1528, "test": 269}
    assert 0.14 < sizes["test"] / 1797 < 0.16


def test_split_is_disjoint_complete_and_fixed():
    idx = split_indices()
    train, test = idx["train"], idx["test"]
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    again = load_split("test")
    assert all(np.array_equal(a, b) for a, b in zip(load_split("test"), again))
    kept = test.copy()
    test[:] = 0                                               # callers get copies
    assert np.array_equal(split_indices()["test"], kept)


def test_split_is_stratified():
    _, train = load_split("train")
    _, test = load_split("test")
    for d in range(10):
        n_test, n_all = (test == d).sum(), (train == d).sum() + (test == d).sum()
        assert n_test == round(0.15 * n_all), d
    assert np.bincount(test).max() - np.bincount(test).min() <= 1


def test_pixels_are_scaled_from_0_16():
    images, _ = load_split("train")
    levels = np.unique(images)
    assert np.array_equal(levels, np.unique(np.rint(np.arange(17) * 255 / 16).astype(np.uint8)))


def test_unknown_split_raises():
    for bad in ("val", "Train", ""):
        with pytest.raises(ValueError, match="unknown split"):
            load_split(bad)


def test_caption_round_trip_and_grammar_words():
    words = grammar_words()
    assert words == ["the", "digit", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    for d in range(10):
        text = caption(d)
        assert text == f"the digit {d}"
        assert parse_caption(text) == d
        assert set(text.split()) <= set(words)
    assert caption(np.int64(7)) == "the digit 7"
    assert parse_caption("  the  digit 3 ") == 3


@pytest.mark.parametrize("text, match", [
    ("the digit seven", "unknown digit word 'seven'"),
    ("the digit 10", "unknown digit word '10'"),
    ("the digit -1", "unknown digit word"),
    ("a digit 7", "expected a caption"),
    ("The digit 7", "expected a caption"),
    ("the digit", "expected a caption"),
    ("the digit 7 8", "expected a caption"),
    ("", "expected a caption"),
])
def test_bad_captions_raise(text, match):
    with pytest.raises(ValueError, match=match):
        parse_caption(text)


def test_caption_rejects_non_digits():
    for bad in (10, -1, 2.5, True, "7", None):
        with pytest.raises(ValueError, match="0..9"):
            caption(bad)
    with pytest.raises(ValueError):
        parse_caption(7)


def test_to_tensor():
    images, _ = load_split("test")
    x = to_tensor(images)
    assert x.shape == (len(images), 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.allclose(x[:, 0] * 255, torch.from_numpy(images).float())
    with pytest.raises(ValueError, match="shape"):
        to_tensor(images[:, :4])
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(images.astype(np.float32))


def test_digits_data_draws_captioned_images():
    images, prompts, captions = digits_data(5, "test", seed=1)
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.float32 and prompts == captions
    assert all(parse_caption(c) in range(10) for c in captions)
    again = digits_data(5, "test", seed=1)
    assert torch.equal(images, again[0]) and captions == again[2]

"""Every CLI command gives the output it gave before the one-engine refactor (issue 17), for a
fixed seed: text and CIFs identical, pixels and audio within float tolerance. The goldens were
recorded on the pre-refactor tree by ``python -m tests.golden.record`` (see cases.py), the Python
API cases below by the same code through the old module paths."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.golden.cases import CASES, DATA, NEXT_CELL, NEXT_SCALE, load, run_case

PIXEL_TOL = 2          # uint8 levels: rounding of a value that moved by float noise
AUDIO_TOL = 2e-3       # PCM16 is 3e-5 a step; a codec decoder of reordered sums stays far below this


def assert_same(name: str, got, want):
    if CASES.get(name, ("", ""))[1] == "csv":  # forecasts: numbers within float noise (the BLAS
        g, w = (np.loadtxt(x.splitlines(), delimiter=",", skiprows=1) for x in (got, want))  # thread split)
        assert got.splitlines()[0] == want.splitlines()[0]
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=name)
        return
    if isinstance(want, str):
        assert got == want, f"{name}: output changed"
        return
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    tol = PIXEL_TOL if want.dtype == np.uint8 else AUDIO_TOL
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert diff.max() <= tol, f"{name}: max difference {diff.max()} > {tol}"


@pytest.mark.parametrize("name", list(CASES))
def test_cli_matches_golden(name, tmp_path):
    assert_same(name, run_case(name, tmp_path), load(name))


IMAGE_MODELS = {"shapes": "assets/t2i-shapes", "mar": "assets/t2i-shapes-mar",
                "next_scale": NEXT_SCALE, "next_cell": NEXT_CELL}


@pytest.mark.parametrize("name", list(IMAGE_MODELS))
def test_interleaved_generation_matches_golden(name):
    from apps.t2i.model import ImageModel
    m = ImageModel.from_pretrained(IMAGE_MODELS[name])
    for i, prompt in enumerate(["", "a red circle"]):
        segs = m.generate(prompt, steps=5, seed=i)
        want = ast.literal_eval((DATA / f"api_interleaved_{name}_{i}.txt").read_text())
        assert [s if isinstance(s, str) else "<image>" for s in segs] == want
        imgs = [s for s in segs if not isinstance(s, str)]
        if imgs:
            got = (imgs[0].numpy() * 255).round()
            ref = (np.load(DATA / f"api_interleaved_{name}_{i}.npy") * 255).round()
            assert np.abs(got - ref).max() <= PIXEL_TOL


@pytest.mark.parametrize("name", ["next_scale", "next_cell"])
def test_block_order_caption_matches_golden(name):
    from apps.t2i.model import ImageModel, read_image
    m = ImageModel.from_pretrained(IMAGE_MODELS[name])
    want = ast.literal_eval((DATA / f"api_caption_{name}.txt").read_text())
    assert m.caption(read_image(DATA / "scene.png", m.tok)) == want


def test_tts_all_codebooks_matches_golden():
    """The NAR levels (the CLI's default decodes codebook 0 alone)."""
    from apps.tts.model import SpeechModel
    r = SpeechModel.from_pretrained("assets/speech-tts").synthesize("Hello there.", seed=0, n_levels=6)
    assert_same("tts_6levels", r.wav.astype(np.float32), np.load(DATA / "api_tts_6levels.npy"))

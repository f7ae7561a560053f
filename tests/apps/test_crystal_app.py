"""The crystal app: handlers on a tiny random model, the CIF upload checker, and the launcher with the
shipped checkpoints as a real loopback server driven by headless Chromium (playwright)."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from modalities.crystal import CIFTokenizer

REPO = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((REPO / "tests" / "modalities" / "data" / "crystals_test_sample.json").read_text())
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
GOOD = dict(composition="SrTiO3", spacegroup="", n=2, temperature=1.0, top_k=10, seed=0)


@pytest.fixture(scope="module")
def gen(make_tiny_lm):
    from apps.crystal.model import CrystalGenerator
    tok = CIFTokenizer()
    return CrystalGenerator(make_tiny_lm(tok.vocab_size, block_size=256), tok)


def test_handler_returns_table_gallery_files(gen):
    from apps.crystal.app import make_generate_fn
    html, images, files, best = make_generate_fn(gen)(*GOOD.values())
    assert "of 2 candidates valid" in html and "reasons" in html
    assert any(f.endswith("summary.csv") for f in files) and sum(f.endswith(".cif") for f in files) == 2
    assert best.startswith("data_Sr1Ti1O3")
    assert isinstance(images, list)


@pytest.mark.parametrize("bad, message", [
    (dict(composition="Xx2"), "unknown element 'Xx'"),
    (dict(composition="Sr(TiO3"), "malformed composition"),
    (dict(composition=""), "composition is empty"),
    (dict(composition="C900"), "this model handles at most"),
    (dict(spacegroup="Pm-3q"), "unknown space group"),
    (dict(n=0), "number of candidates must be a whole number from 1 to 64"),
    (dict(n=float("nan")), "number of candidates must be"),
    (dict(temperature="hot"), "temperature"),
    (dict(temperature=float("inf")), "temperature must be between 0 and 5"),
    (dict(seed=1.5), "seed must be a whole number"),
])
def test_handler_bad_input_is_a_clear_error(gen, bad, message):
    import gradio as gr
    from apps.crystal.app import make_generate_fn
    with pytest.raises(gr.Error) as e:
        make_generate_fn(gen)(*{**GOOD, **bad}.values())
    assert message in e.value.message and "Traceback" not in e.value.message


def test_render_cell_is_an_image():
    from apps.crystal.app import render_cell
    from pymatgen.core import Lattice, Structure
    img = render_cell(Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0]]))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 0


def test_check_upload(tmp_path):
    import gradio as gr
    from apps.crystal.app import MAX_UPLOAD_BYTES, make_check_fn
    check = make_check_fn()
    good = tmp_path / "good.cif"
    good.write_text(SAMPLE["perov_5"][0])
    verdict, pics = check(str(good))
    assert ">valid<" in verdict and len(pics) == 1
    cases = {"bad.cif": ("data_x\n_cell_length_a 3\nloop_\n_atom_site_label\nfoo bar\n", "malformed CIF"),
             "notcif.txt": ("hello world", "not a CIF"), "empty.cif": ("", "not a CIF")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(gr.Error, match=message):
            check(str(tmp_path / name))
    (tmp_path / "bin.cif").write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(gr.Error, match="not text"):
        check(str(tmp_path / "bin.cif"))
    (tmp_path / "huge.cif").write_text("x" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(gr.Error, match="the limit is"):
        check(str(tmp_path / "huge.cif"))
    with pytest.raises(gr.Error, match="no file uploaded"):
        check(None)


def test_missing_checkpoint_names_the_training_command(tmp_path):
    from apps.crystal.app import load_app
    with pytest.raises(FileNotFoundError, match="omniar train crystal --config configs/crystal_cif.yaml"):
        load_app(tmp_path / "nope")


# ---- the launcher with the shipped checkpoints, in a browser ------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app_server import running_launcher  # tests/apps/app_server.py
    with running_launcher([], tmp_path_factory.mktemp("server") / "launcher.log", threads=2) as url:
        yield url


@pytest.fixture
def page(server):
    from app_server import browser_tab
    with browser_tab(server, "Crystals") as pg:
        yield pg


def test_browser_generates_structures_with_pictures(page):
    from playwright.sync_api import expect
    page.locator("#crystal-composition textarea").fill("SrTiO3")
    page.get_by_role("button", name="Generate structures").click()
    expect(page.locator("#crystal-results .crystal-summary")).to_contain_text("candidates valid", timeout=90_000)
    expect(page.locator("#crystal-gallery img").first).to_be_visible(timeout=30_000)
    assert "Traceback" not in page.content()


def test_browser_bad_composition_shows_the_reason(page):
    from playwright.sync_api import expect
    page.locator("#crystal-composition textarea").fill("SrXx3")
    page.get_by_role("button", name="Generate structures").click()
    expect(page.get_by_text("unknown element 'Xx'").first).to_be_visible(timeout=30_000)
    assert "Traceback" not in page.content()

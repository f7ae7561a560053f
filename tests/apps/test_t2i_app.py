"""The images app: handlers on a tiny trained model, and the launcher with the shipped checkpoint
as a real loopback server driven by headless Chromium (playwright)."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import numpy as np
import pytest

GOOD = dict(prompt="a red circle", n=2, steps=2, cfg=3.0, temperature=1.0, seed=0, choice="model (raster/diffusion, shapes)")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from test_t2i import tiny_cfg  # tests/apps/test_t2i.py
    from apps.t2i import recipe
    from apps.t2i.model import ImageModel
    out = tmp_path_factory.mktemp("t2i_app")
    recipe.run(tiny_cfg(out), out=str(out / "model"))
    return ImageModel.from_pretrained(out / "model")


def test_generate_returns_a_gallery(model):
    from apps.t2i.app import make_generate_fn
    gallery = make_generate_fn(model)(*GOOD.values())
    assert len(gallery) == 2
    im, label = gallery[0]
    assert im.dtype == np.uint8 and im.shape == (192, 192, 3) and label == "a red circle #1"


@pytest.mark.parametrize("bad, message", [
    (dict(prompt=""), "the prompt is empty"),
    (dict(prompt="a red hexagon"), "unknown word(s) 'hexagon'"),
    (dict(n=0), "number of images must be a whole number from 1 to 16"),
    (dict(steps=float("nan")), "steps must be"),
    (dict(cfg="strong"), "CFG scale must be a number"),
    (dict(choice="t2i-nope"), "no loaded checkpoint is called 't2i-nope'; loaded: model (raster/diffusion, shapes)"),
])
def test_bad_input_is_a_clear_error(model, bad, message):
    import gradio as gr
    from apps.t2i.app import make_generate_fn
    with pytest.raises(gr.Error) as e:
        make_generate_fn(model)(*{**GOOD, **bad}.values())
    assert message in e.value.message and "Traceback" not in e.value.message


def test_caption_upload(model, tmp_path):
    import gradio as gr
    from PIL import Image
    from apps.t2i.app import make_caption_fn
    cap = make_caption_fn(model)
    png = tmp_path / "scene.png"
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(png)
    text, seen = cap(str(png))
    assert isinstance(text, str) and seen.shape == (192, 192, 3)
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(gr.Error, match="not a readable image") as e:
        cap(str(tmp_path / "fake.png"))
    assert str(tmp_path) not in str(e.value) and "fake.png" in str(e.value)   # the user's name, no server path
    with pytest.raises(gr.Error, match="no image uploaded"):
        cap(None)


def test_model_menu_examples_and_caption_examples(model):
    """One menu entry per checkpoint (so the digits model is selectable beside the shapes ones),
    example prompts of every task, and example images for the Caption tab."""
    from apps.t2i.app import EXAMPLES, build_demo, caption_examples, make_generate_fn
    menu = {"a (raster/diffusion, shapes)": model, "b (raster/diffusion, digits)": model}
    assert len(make_generate_fn(menu)(*{**GOOD, "choice": "b (raster/diffusion, digits)"}.values())) == 2
    assert {"single object", "two objects", "counting", "colour", "position", "colour binding"} <= set(EXAMPLES)
    assert all(len(v) >= 2 for v in EXAMPLES.values())
    from modalities.image_shapes import parse_caption
    for task, prompts in EXAMPLES.items():
        for p in prompts if task != "digits" else ():
            parse_caption(p)                     # every shapes example is in the grammar
    shots = caption_examples()
    assert len(shots) >= 3
    build_demo(menu)


def test_missing_checkpoint_names_the_training_command(tmp_path):
    from apps.t2i.app import load_app
    with pytest.raises(FileNotFoundError, match="omniar train t2i --config configs/t2i_shapes_layout.yaml"):
        load_app(tmp_path / "nope")


# ---- the launcher with the shipped checkpoints, in a browser ------------------------------------
@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from app_server import browser_tab, running_launcher  # tests/apps/app_server.py
    with running_launcher([], tmp_path_factory.mktemp("server") / "launcher.log", threads=2) as url:
        with browser_tab(url, "Images") as pg:
            yield pg


def test_browser_prompt_to_images(page):
    from playwright.sync_api import expect
    page.locator("#t2i-prompt textarea").fill("two blue squares")
    page.get_by_role("button", name="Generate images").click()
    expect(page.locator("#t2i-gallery img").first).to_be_visible(timeout=90_000)
    assert page.locator("#t2i-gallery img").count() >= 1
    assert "Traceback" not in page.content()


def test_browser_unknown_word_shows_the_reason(page):
    from playwright.sync_api import expect
    page.locator("#t2i-prompt textarea").fill("a purple dragon")
    page.get_by_role("button", name="Generate images").click()
    expect(page.get_by_text("unknown word(s) 'dragon'").first).to_be_visible(timeout=30_000)

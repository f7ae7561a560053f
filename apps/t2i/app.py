"""Images app: text-to-image (a gallery) and captioning (upload an image, get a caption) on one
checkpoint.

    python -m apps.t2i.app --model assets/t2i-shapes[,assets/t2i-shapes-flow,...] [--host 127.0.0.1] [--port 7860]

Several checkpoints (comma-separated) fill the order and head menus: a generation order and a
head are properties of a trained checkpoint, so picking them picks the checkpoint.

``build_demo(model)`` does no work until an event fires. Bad input (an empty prompt, words the
grammar does not know, a non-image upload, a huge image, out-of-range settings) ends as a
``gr.Error`` with a plain message, never a traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import sys
from pathlib import Path

import gradio as gr
import numpy as np

from apps.serving import check_checkpoint, in_range, serve, user_errors
from apps.t2i.model import ImageModel, read_image

DEFAULT_MODEL = "assets/t2i-shapes,assets/t2i-shapes-flow,assets/t2i-shapes-mar"  # the first: default pair, captions
TRAIN_COMMAND = "omniar train t2i --config configs/t2i_shapes.yaml"
MAX_UPLOAD_BYTES = 10 << 20
SHOW_PX = 192  # generated 32x32 images are shown enlarged (nearest neighbour: crisp pixels)


def _show(images) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> enlarged uint8 (H', W', 3) arrays for the gallery."""
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    k = max(1, SHOW_PX // arr.shape[1])
    return [im.repeat(k, 0).repeat(k, 1) for im in arr]


def _kind(model) -> tuple[str, str]:
    meta = model.model.config["meta"]
    return meta.get("order", "raster"), meta.get("head", "diffusion")


def _by_kind(models) -> dict:
    models = models if isinstance(models, (list, tuple)) else [models]
    return {_kind(m): m for m in models}


def make_generate_fn(models):
    """models: an ImageModel or a list of them (one per order x head)."""
    table = _by_kind(models)

    @user_errors("Cannot generate", "generation")
    def generate(prompt, n, steps, cfg, temperature, seed, order, head, passes=16):
        model = table.get((order, head))
        if model is None:
            have = ", ".join(f"{o}/{h}" for o, h in table)
            raise ValueError(f"no loaded checkpoint generates in {order!r} order with a {head!r} head "
                             f"(loaded: {have}); that pair needs a checkpoint trained for it")
        n = in_range("number of images", n, 1, 16)
        kw = {"passes": in_range("passes", passes, 1, model.tok.n_tokens)} if order == "mar" else {}
        images = model.text_to_image([prompt] * n, steps=in_range("steps", steps, 1, 100),
                                     cfg=in_range("CFG scale", cfg, 0, 20, whole=False),
                                     temperature=in_range("temperature", temperature, 0, 2, whole=False),
                                     seed=in_range("seed", seed, 0, 2**62), **kw)
        return [(im, f"{prompt} #{i + 1}") for i, im in enumerate(_show(images))]
    return generate


def make_caption_fn(model):
    @user_errors("Cannot caption", "captioning")
    def caption(path):
        if not path:
            raise ValueError("no image uploaded; choose a PNG or JPEG")
        if Path(path).stat().st_size > MAX_UPLOAD_BYTES:
            raise ValueError(f"the file is {Path(path).stat().st_size} bytes; the limit is {MAX_UPLOAD_BYTES}")
        image = read_image(path, model.tok, name=Path(path).name)   # never the server's temp folder
        return model.caption(image)[0] or "(no caption)", _show(image)[0]
    return caption


def build_demo(models, title: str = "OmniAR images") -> gr.Blocks:
    """The images app as a Blocks (not launched). ``models``: an apps.t2i.model.ImageModel or a list of
    them; the first is the default and does the captioning."""
    table = _by_kind(models)
    model = next(iter(table.values()))
    meta = model.model.config["meta"]
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"### Text to image and captioning, one model\nA {model.model.num_params() / 1e6:.1f}M-parameter "
                    f"backbone with an LM head and a {meta.get('head', 'diffusion')} head over continuous "
                    f"{model.tok.patch}x{model.tok.patch} pixel patches ({meta.get('order', 'raster')} order). "
                    "Prompts use the shapes grammar: e.g. *a red circle to the left of a blue square*, "
                    "*three green triangles*.")
        with gr.Tab("Text to image"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", value="a red circle to the left of a blue square",
                                        elem_id="t2i-prompt", max_length=300)
                    go = gr.Button("Generate images", variant="primary")
                with gr.Column(scale=1):
                    n = gr.Slider(1, 16, value=4, step=1, label="Images")
                    steps = gr.Slider(1, 100, value=25, step=1, label="Denoising steps")
                    cfg = gr.Slider(0.0, 10.0, value=3.0, step=0.5, label="CFG scale", info="1 = off")
                    temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
                    seed = gr.Number(value=0, label="Seed")
                    order = gr.Dropdown(sorted({o for o, _ in table}), value=meta.get("order", "raster"), label="Order")
                    head = gr.Dropdown(sorted({h for _, h in table}), value=meta.get("head", "diffusion"), label="Head")
                    passes = gr.Slider(1, model.tok.n_tokens, value=16, step=1, label="Passes (masked order)")
            gallery = gr.Gallery(label="Images", columns=4, height=420, elem_id="t2i-gallery")
            go.click(make_generate_fn(list(table.values())), [prompt, n, steps, cfg, temperature, seed, order, head,
                                                              passes], [gallery],
                     api_name="t2i", concurrency_limit=4, concurrency_id="omniar-image-model")
        with gr.Tab("Caption"):
            with gr.Row():
                upload = gr.File(label="Image (PNG or JPEG)", file_types=["image"], type="filepath",
                                 elem_id="caption-upload")
                seen = gr.Image(label="What the model sees (32x32)", interactive=False)
            cap_btn = gr.Button("Caption", variant="primary")
            text = gr.Textbox(label="Caption", elem_id="caption-text", interactive=False)
            cap_btn.click(make_caption_fn(model), [upload], [text, seen], api_name="caption",
                          concurrency_limit=4, concurrency_id="omniar-image-model")
    return demo


def load_app(folders: str | os.PathLike, device: str = "cpu") -> gr.Blocks:
    """Checkpoint folder(s), comma-separated -> images app Blocks (FileNotFoundError with the
    training command)."""
    models = []
    for folder in str(folders).split(","):
        folder = check_checkpoint(folder.strip(), "text-to-image", TRAIN_COMMAND,
                                  files=("config.json", "model.safetensors", "vocab.json"))
        models.append(ImageModel.from_pretrained(str(folder), device=device))
    return build_demo(models)


def main(argv=None) -> int:
    return serve("python -m apps.t2i.app", "OmniAR images app", DEFAULT_MODEL, load_app, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Images app: text-to-image (a gallery) and captioning (upload an image, get a caption) on one
checkpoint.

    python -m apps.t2i.app --model assets/t2i-shapes-layout[,assets/t2i-digits,...] [--host 127.0.0.1] [--port 7860]

Several checkpoints (comma-separated) fill the Model menu (named by folder, order, head and data);
the first is the default and does the captioning.

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
from apps.t2i import DEFAULT_CHECKPOINT
from apps.t2i.model import MAX_RERANK, ImageModel, read_image
from modalities.shape_layout import describe

# the Model menu, the first (the best on GenEval-lite) the default and the captioner
DEFAULT_MODEL = ",".join([DEFAULT_CHECKPOINT, "assets/t2i-shapes-flow-long", "assets/t2i-shapes-flow",
                          "assets/t2i-shapes", "assets/t2i-shapes-mar", "assets/t2i-digits"])
TRAIN_COMMAND = "omniar train t2i --config configs/t2i_shapes_layout.yaml"
MAX_UPLOAD_BYTES = 10 << 20
SHOW_PX = 192  # generated 32x32 images are shown enlarged (nearest neighbour: crisp pixels)


def _show(images) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> enlarged uint8 (H', W', 3) arrays for the gallery."""
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    k = max(1, SHOW_PX // arr.shape[1])
    return [im.repeat(k, 0).repeat(k, 1) for im in arr]


def label(model, folder=None) -> str:
    """A checkpoint's name in the Model menu: its folder, order, head and data, e.g.
    "t2i-shapes (raster/diffusion, shapes)"."""
    meta = model.model.config["meta"]
    name = Path(folder).name if folder else "model"
    return f"{name} ({meta.get('order', 'raster')}/{meta.get('head', 'diffusion')}, {meta.get('data', 'shapes')})"


def _menu(models) -> dict:
    """An ImageModel, a list of them, or {label: ImageModel} -> {label: ImageModel}, in order."""
    if isinstance(models, dict):
        return dict(models)
    models = models if isinstance(models, (list, tuple)) else [models]
    out = {}
    for i, m in enumerate(models):
        name = label(m)
        out[name if name not in out else f"{name} #{i + 1}"] = m
    return out


def make_generate_fn(models):
    """models: an ImageModel, a list of them or {menu label: ImageModel} (one per checkpoint)."""
    table = _menu(models)

    @user_errors("Cannot generate", "generation")
    def generate(prompt, n, steps, cfg, temperature, seed, choice=None, passes=16, rerank=1):
        model = table.get(choice or next(iter(table)))
        if model is None:
            raise ValueError(f"no loaded checkpoint is called {choice!r}; loaded: {', '.join(table)}")
        n = in_range("number of images", n, 1, 16)
        kw = {"passes": in_range("passes", passes, 1, model.tok.n_tokens)} if model.order == "mar" else {}
        images, plans = model.text_to_image([prompt] * n, steps=in_range("steps", steps, 1, 100),
                                            cfg=in_range("CFG scale", cfg, 0, 20, whole=False),
                                            temperature=in_range("temperature", temperature, 0, 2, whole=False),
                                            seed=in_range("seed", seed, 0, 2**62),
                                            rerank=in_range("best of", rerank, 1, MAX_RERANK), return_layouts=True,
                                            **kw)
        return [(im, f"{prompt} #{i + 1}" + (f" | plan: {describe(p)}" if p else ""))   # a layout model's plan
                for i, (im, p) in enumerate(zip(_show(images), plans))]
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


# gr.Examples of the Text to image tab: several prompts of each GenEval-lite task (shapes grammar),
# and of the digits grammar for the digits checkpoint
EXAMPLES = {
    "single object": ["a circle", "a triangle"],
    "two objects": ["a square and a cross", "a circle and a triangle"],
    "counting": ["three green triangles", "two blue squares", "four red circles"],
    "colour": ["a yellow square", "a purple circle", "an orange cross"],
    "position": ["a red circle to the left of a blue square", "a green cross above a yellow circle",
                 "a purple square below an orange triangle"],
    "colour binding": ["a red circle and a blue square", "a yellow cross and a green triangle"],
    "digits": ["the digit 3", "the digit 7"],
}
CAPTION_EXAMPLES = "assets/examples"   # small renders of the shapes world (held-out scenes among them)


def caption_examples(folder=CAPTION_EXAMPLES) -> list[str]:
    """The example images of the Caption tab (PNG paths), [] when the folder is absent."""
    folder = Path(folder)
    return [str(p) for p in sorted(folder.glob("shapes_*.png"))] if folder.is_dir() else []


def build_demo(models, title: str = "OmniAR images") -> gr.Blocks:
    """The images app as a Blocks (not launched). ``models``: an apps.t2i.model.ImageModel, a list
    of them or {menu label: ImageModel}; the first is the default and does the captioning."""
    table = _menu(models)
    first = next(iter(table))
    model = table[first]
    meta = model.model.config["meta"]
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"### Text to image and captioning, one model\nA {model.model.num_params() / 1e6:.1f}M-parameter "
                    f"backbone with an LM head and a {meta.get('head', 'diffusion')} head over continuous "
                    f"{model.tok.patch}x{model.tok.patch} pixel patches ({meta.get('order', 'raster')} order). "
                    "Prompts use the shapes grammar: e.g. *a red circle to the left of a blue square*, "
                    "*three green triangles*; the digits checkpoint takes *the digit 3*.")
        with gr.Tab("Text to image"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", value="a red circle to the left of a blue square",
                                        elem_id="t2i-prompt", max_length=300)
                    choice = gr.Dropdown(list(table), value=first, label="Model", elem_id="t2i-model",
                                         info="the first is the best-scoring checkpoint on GenEval-lite")
                    go = gr.Button("Generate images", variant="primary")
                    gr.Examples([[p] for ps in EXAMPLES.values() for p in ps], [prompt], label="Example prompts "
                                "(single object, two objects, counting, colour, position, colour binding, digits)",
                                examples_per_page=20)
                with gr.Column(scale=1):
                    n = gr.Slider(1, 16, value=4, step=1, label="Images")
                    steps = gr.Slider(1, 100, value=25, step=1, label="Denoising steps")
                    cfg = gr.Slider(0.0, 10.0, value=3.0, step=0.5, label="CFG scale", info="1 = off")
                    temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
                    seed = gr.Number(value=0, label="Seed")
                    passes = gr.Slider(1, model.tok.n_tokens, value=16, step=1, label="Passes (masked order)")
                    rerank = gr.Slider(1, 8, value=1, step=1, label="Best of", info="draw this many per image; "
                                       "the model's own captioning keeps the one that fits the prompt best")
            gallery = gr.Gallery(label="Images", columns=4, height=420, elem_id="t2i-gallery")
            go.click(make_generate_fn(table), [prompt, n, steps, cfg, temperature, seed, choice, passes, rerank],
                     [gallery],
                     api_name="t2i", concurrency_limit=4, concurrency_id="omniar-image-model")
        with gr.Tab("Caption"):
            with gr.Row():
                upload = gr.File(label="Image (PNG or JPEG)", file_types=["image"], type="filepath",
                                 elem_id="caption-upload")
                seen = gr.Image(label="What the model sees (32x32)", interactive=False)
            cap_btn = gr.Button("Caption", variant="primary")
            text = gr.Textbox(label="Caption", elem_id="caption-text", interactive=False)
            shots = caption_examples()
            if shots:
                gr.Examples(shots, [upload], label="Example images")
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
        m = ImageModel.from_pretrained(str(folder), device=device)
        models.append((label(m, folder), m))
    return build_demo(dict(models))


def main(argv=None) -> int:
    return serve("python -m apps.t2i.app", "OmniAR images app", DEFAULT_MODEL, load_app, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Crystal generation app: composition (+ optional space group) in, ranked CIFs with validity
badges, unit-cell pictures and downloads out; plus a checker for an uploaded CIF.

    python -m apps.crystal.app --model assets/crystal-cif [--host 127.0.0.1] [--port 7860]

``build_demo(generator)`` does no work until an event fires. Bad input (unknown element,
malformed composition, too many atoms for the context, unknown space group, a malformed or
non-CIF upload) ends as a ``gr.Error`` with a plain message, never a traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import html
import sys
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from apps.crystal.model import CrystalGenerator, write_candidates
from apps.serving import check_checkpoint, in_range, serve, user_errors as _user_errors
from modalities.crystal import preprocess_cif
from modalities.crystal_checks import check_cif


DEFAULT_MODEL = "assets/crystal-cif"
TRAIN_COMMAND = "omniar train crystal --config configs/crystal_cif.yaml"
MAX_UPLOAD_BYTES = 1 << 20


def render_cell(structure, title: str = "") -> np.ndarray:
    """pymatgen Structure -> RGB image (H, W, 3) uint8: cell edges and atoms, one colour per element."""
    import matplotlib  # only to draw: not loaded until the first picture
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(3.2, 3.2), dpi=80)
    ax = fig.add_subplot(projection="3d")
    m = structure.lattice.matrix
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    for a in range(8):
        for b in range(a + 1, 8):
            if np.abs(corners[a] - corners[b]).sum() == 1:  # the 12 edges
                seg = corners[[a, b]] @ m
                ax.plot(*seg.T, color="0.4", lw=0.8)
    cmap = plt.get_cmap("tab10")
    for n, el in enumerate(sorted({s.specie.symbol for s in structure})):
        xyz = np.array([s.coords for s in structure if s.specie.symbol == el])
        ax.scatter(*xyz.T, s=60, color=cmap(n % 10), label=el, depthshade=False, edgecolors="k")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def _badge(ok: bool) -> str:
    colour, word = ("#1a7f37", "valid") if ok else ("#cf222e", "invalid")
    return f'<span style="background:{colour};color:white;padding:1px 6px;border-radius:4px">{word}</span>'


def results_html(cands) -> str:
    rows = []
    for rank, c in enumerate(cands, 1):
        s = c.validity.structure
        cell = f"{s.lattice.a:.3f}, {s.lattice.b:.3f}, {s.lattice.c:.3f}" if s is not None else "-"
        reasons = "<br>".join(html.escape(r) for r in c.reasons) or "all checks pass"
        rows.append(f"<tr><td>{rank}</td><td>{_badge(c.valid)}</td><td>{html.escape(c.validity.spacegroup or '-')}"
                    f"</td><td>{cell}</td><td>{c.logprob:.3f}</td><td>{reasons}</td></tr>")
    n_valid = sum(c.valid for c in cands)
    return (f"<p class='crystal-summary'>{n_valid} of {len(cands)} candidates valid</p>"
            "<table><tr><th>rank</th><th>validity</th><th>space group</th><th>a, b, c (Å)</th>"
            "<th>log-lik/token</th><th>reasons</th></tr>" + "".join(rows) + "</table>")


def make_generate_fn(generator):
    @_user_errors("Cannot generate", "generation")
    def generate(composition, spacegroup, n, temperature, top_k, seed):
        n = in_range("number of candidates", n, 1, 64)
        top_k = in_range("top-k", top_k, 0, generator.tok.vocab_size)
        seed = in_range("seed", seed, -1, 2**62)
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            raise ValueError(f"temperature must be a number, got {temperature!r}") from None
        if not np.isfinite(t) or not 0 <= t <= 5:
            raise ValueError(f"temperature must be between 0 and 5, got {temperature!r}")
        cands = generator.generate(composition, n=n, spacegroup=(spacegroup or "").strip() or None,
                                   temperature=t, top_k=top_k or None, seed=None if seed < 0 else seed)
        out = tempfile.mkdtemp(prefix="omniar-crystal-")
        summary = write_candidates(cands, composition.strip(), out)
        files = [str(summary)] + sorted(str(p) for p in Path(out).glob("*.cif"))
        images = [(render_cell(c.validity.structure, f"#{r} {c.validity.spacegroup or ''}"), f"#{r}")
                  for r, c in enumerate(cands, 1) if c.validity.structure is not None]
        return results_html(cands), images, files, cands[0].full_cif()

    return generate


def check_upload(path) -> tuple[str, list]:
    """An uploaded CIF -> (verdict HTML, [picture]); ValueError for empty, huge or malformed files."""
    if not path:
        raise ValueError("no file uploaded; choose a .cif file")
    p = Path(path)
    if p.stat().st_size > MAX_UPLOAD_BYTES:
        raise ValueError(f"the file is {p.stat().st_size} bytes; the limit is {MAX_UPLOAD_BYTES}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("the file is not text; upload a CIF") from None
    if "_cell_length_a" not in text or "data_" not in text:
        raise ValueError("this is not a CIF (no data_ block with _cell_length_a)")
    v = check_cif(preprocess_cif(text))
    reasons = "<br>".join(html.escape(r) for r in v.reasons) or "all checks pass"
    s = v.structure
    head = f"{s.composition.formula}, {v.spacegroup}" if s is not None else "unparsed"
    return f"<p>{_badge(v.valid)} {html.escape(head)}</p><p>{reasons}</p>", (
        [(render_cell(s, head), head)] if s is not None else [])


def make_check_fn():
    return _user_errors("Cannot check this file", "check")(check_upload)


def build_demo(generator, title: str = "OmniAR crystals") -> gr.Blocks:
    """The crystal app as a Blocks (not launched)."""
    m = generator.model
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"### Crystal structures (CrystaLLM)\nA {m.num_params() / 1e6:.2f}M-parameter CIF "
                    f"language model, context {m.args.block_size} tokens, cells up to "
                    f"{generator.max_atoms} atoms. Candidates are ranked: valid first, then by likelihood.")
        with gr.Row():
            with gr.Column(scale=2):
                comp = gr.Textbox(label="Composition", placeholder="SrTiO3 or C8", elem_id="crystal-composition",
                                  max_length=200)
                sg = gr.Textbox(label="Space group (optional)", placeholder="Pm-3m", max_length=20)
                go = gr.Button("Generate structures", variant="primary")
            with gr.Column(scale=1):
                n = gr.Slider(1, 64, value=8, step=1, label="Candidates")
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", info="0 = greedy")
                top_k = gr.Number(value=10, label="Top-k", info="0 = off")
                seed = gr.Number(value=0, label="Seed", info="-1 = random")
        results = gr.HTML(elem_id="crystal-results")
        gallery = gr.Gallery(label="Unit cells", columns=4, height=300, elem_id="crystal-gallery")
        with gr.Row():
            files = gr.File(label="CIF files and summary", file_count="multiple")
            best = gr.Code(label="Top candidate (CIF)", language=None)
        ev_inputs = [comp, sg, n, temperature, top_k, seed]
        go.click(make_generate_fn(generator), ev_inputs, [results, gallery, files, best], api_name="crystal",
                 preprocess=False, concurrency_limit=4, concurrency_id="omniar-crystal-model")
        with gr.Accordion("Check a CIF file", open=False):
            upload = gr.File(label="CIF file", file_types=[".cif", ".txt"], type="filepath")
            check_btn = gr.Button("Check CIF")
            verdict = gr.HTML(elem_id="crystal-verdict")
            picture = gr.Gallery(label="Unit cell", columns=1, height=260)
            check_btn.click(make_check_fn(), [upload], [verdict, picture], api_name="check_cif")
    return demo


def load_app(folder: str | os.PathLike, device: str = "cpu") -> gr.Blocks:
    """Checkpoint folder -> crystal app Blocks (FileNotFoundError/ValueError with a clear message)."""
    folder = check_checkpoint(folder, "crystal", TRAIN_COMMAND)
    return build_demo(CrystalGenerator.from_pretrained(str(folder), device=device))


def main(argv=None) -> int:
    return serve("python -m apps.crystal.app", "OmniAR crystal app", DEFAULT_MODEL, load_app, argv)


if __name__ == "__main__":
    sys.exit(main())

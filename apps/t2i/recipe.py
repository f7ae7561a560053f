"""The text-to-image + captioning training recipe (Orthus / MMAR) on the shared backbone.

A sequence interleaves caption words and continuous image patches (never vector-quantised):

    text-to-image:  <bos> a red circle ... <boi> p1 ... p64 <eoi> <eos>
    captioning:     <bos> <boi> p1 ... p64 <eoi> a red circle ... <eos>

The LM head predicts the words and the special tokens; the hidden state before each patch (the
one at ``<boi>`` for p1) conditions the diffusion (or flow) head, which denoises the patch
(MAR, Li et al. 2024). Captioning sequences start their image with no caption, so they also
train the unconditional image model that classifier-free guidance subtracts; text-to-image
sequences drop their caption with probability ``caption_drop`` for the same reason. The
training loss is ``lm_weight * LM + image_weight * diffusion`` (MMAR balances the two).
``order`` picks how the image slots are laid out and predicted: raster (apps/t2i/data.py), mar
(apps/t2i/mar.py), next_scale or next_cell (apps/t2i/blocks.py).

    omniar train t2i --config configs/t2i_shapes.yaml
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from apps.t2i import blocks, mar
from apps.t2i.data import DATA, WordVocab, build_batch, grammar_words, make_tokenizer, raster_rows, tokenizer_config
from backbone.container import OmniModel, part
from backbone.train import run_recipe
from backbone.transformer import ModelArgs
from heads.diffusion import DiffusionHead
from heads.flow import FlowHead
from heads.lm import LMHead
from modalities.image import PatchTokenizer
from modalities.image_embed import PatchEmbed
from modalities.shape_layout import LAYOUT_LEN, LAYOUT_WORDS, layout_data

ROWS = {"raster": raster_rows, "mar": mar.masked_rows, **blocks.ROWS}   # order -> its training rows
ORDERS = tuple(ROWS)
HEADS = {"diffusion": DiffusionHead, "flow": FlowHead}


def build_model(cfg: dict, vocab: WordVocab, tok: PatchTokenizer) -> OmniModel:
    m, h, order = cfg["model"], cfg.get("head", {}), cfg.get("order", "raster")
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    args = ModelArgs.from_name(m.get("preset", "nano"), vocab_size=vocab.vocab_size, **m.get("args", {}))
    kind = h.get("kind", "diffusion")
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose 'diffusion' or 'flow'")
    head_kw = {k: v for k, v in h.items() if k != "kind"}
    if order in blocks.BLOCK_ORDERS:  # one patch index per slot, a learned start
        adapter_kw, order_kw = blocks.adapter_kwargs(order, tok.n_side), blocks.order_options(order, cfg.get("order_kw"))
    else:
        adapter_kw, order_kw = {"n_patches": tok.n_tokens, **({"mask_token": True} if order == "mar" else {})}, {}
    model = OmniModel.build(
        args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=vocab.vocab_size),
                     "image": part(HEADS[kind], dim=args.dim, token_dim=tok.token_dim, **head_kw)},
        adapters={"image": part(PatchEmbed, token_dim=tok.token_dim, dim=args.dim, **adapter_kw)},
        meta={"task": "t2i", "order": order, "head": kind, "image": tokenizer_config(tok),
              "data": cfg.get("data", {}).get("kind", "shapes"), "layout": bool(vocab.layout),
              **({"order_kw": order_kw} if order_kw else {})})
    if m.get("init_from"):
        init_weights(model, vocab, m["init_from"])
    return model


GROWABLE = ("vocab_size", "block_size")   # what init_from may change: new words (a layout), a longer context


def init_weights(model: OmniModel, vocab: WordVocab, folder):
    """``model.init_from``: start from a trained checkpoint's weights (to train it longer, on a
    new schedule). The config must build the same architecture, except that the vocabulary may
    grow (every old word kept: its embedding and LM-head rows are copied by word, new words keep
    their fresh init) and the context may grow (RoPE has no position table); ValueError if not."""
    src = OmniModel.from_pretrained(folder)
    old = WordVocab.load(folder).itos
    if not set(old) <= set(vocab.itos):
        raise ValueError(f"model.init_from {folder}: its vocabulary has words the recipe's lacks")
    for part_ in ("backbone", "heads", "adapters"):
        a, b = src.config[part_], model.config[part_]
        if _fixed(a) != _fixed(b) or (part_ == "backbone" and a.get("pos") != "rope" and a != b):
            raise ValueError(f"model.init_from {folder}: its {part_} config differs from this config's; "
                             "copy the model:, head: and image: settings of the config that trained it")
    rows = torch.tensor([vocab.stoi[w] for w in old])                 # old id -> new id
    state = model.state_dict()
    for k, v in src.state_dict().items():
        if v.shape != state[k].shape and v.shape[0] == len(old):      # embedding / LM head rows
            state[k][rows] = v
        else:
            state[k].copy_(v)
    model.load_state_dict(state, strict=True)
    model.config["meta"]["init_from"] = str(folder)


def _fixed(c):
    """A config without its GROWABLE settings, at any depth."""
    return {k: _fixed(v) for k, v in c.items() if k not in GROWABLE} if isinstance(c, dict) else c


class ShapesT2ITask:
    """Batches of text-image pairs from a ``DATA`` source (fresh shape renders, or digits), made
    from (seed, step, micro): a resumed run sees exactly the batches it would have seen."""

    def __init__(self, vocab: WordVocab, tok: PatchTokenizer, batch_size: int, caption_frac: float = 0.3,
                 caption_drop: float = 0.1, seed: int = 0, eval_batches: int = 4, weights: dict | None = None,
                 order: str = "raster", data: str = "shapes", order_kw: dict | None = None):
        if data not in DATA:
            raise ValueError(f"unknown data {data!r}; choose one of {', '.join(DATA)}")
        self.vocab, self.tok, self.batch_size, self.seed = vocab, tok, batch_size, seed
        self.caption_frac, self.caption_drop, self.weights = caption_frac, caption_drop, weights or {}
        self.data = DATA[data]
        self.plan = bool(vocab.layout)               # the model writes a layout (modalities/shape_layout.py)
        if self.plan:
            if data != "shapes":
                raise ValueError("data.layout needs data.kind 'shapes' (digits have no layout)")
            self.data = layout_data
        kw = dict(order_kw or {})                    # next_scale / next_cell options (apps/t2i/blocks.py)
        if order == "next_scale":
            kw["patch"] = tok.patch                  # the scale pyramid is built in the tokenizer's patches
        self.rows = partial(ROWS[order], **kw)
        self._eval = [self._batch(np.random.default_rng([seed, 99, i]), "test") for i in range(eval_batches)]

    def _batch(self, g: np.random.Generator, split: str) -> dict:
        images, prompts, captions, *plans = self.data(self.batch_size, split, int(g.integers(2**31)))
        modes = ["cap" if g.random() < self.caption_frac else "gen" for _ in prompts]
        caps = [self.vocab.encode(c) if m == "cap" else ([] if g.random() < self.caption_drop else self.vocab.encode(p))
                for p, c, m in zip(prompts, captions, modes)]
        if self.plan:   # text-to-image: caption, then its layout; captioning: layout, then caption
            plan = [[self.vocab.mark] + [self.vocab.stoi[w] for w in L] for L in plans[0]]
            caps = [c if not c else c + p if m == "gen" else p + c for c, p, m in zip(caps, plan, modes)]
        gen = torch.Generator().manual_seed(int(g.integers(2**31)))          # masks, context noise
        return {**build_batch(self.rows(caps, self.tok.encode(images), modes, gen)), "loss_weights": self.weights}

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        full = self._batch(np.random.default_rng([self.seed, step, micro]), "train")
        return _rows(full, rows)

    def eval_batches(self) -> list[dict]:
        return self._eval


def _rows(batch: dict, rows: slice) -> dict:
    """A rank's rows of a global batch; the flat (M, d) image targets keep the selected rows' patches."""
    sel, tgt = batch["targets"]["image"]
    owner = sel.nonzero()[:, 0]                                      # the row of each flat target
    keep = torch.zeros(sel.shape[0], dtype=torch.bool)
    keep[rows] = True
    out = {"input_ids": batch["input_ids"][rows], "embed_mask": batch["embed_mask"][rows],
           "adapter_inputs": {"image": tuple(t[rows] for t in batch["adapter_inputs"]["image"])},
           "loss_weights": batch.get("loss_weights"),
           "targets": {"lm": batch["targets"]["lm"][rows], "image": (sel[rows], tgt[keep[owner]])}}
    if "mask" in batch:
        out["mask"] = batch["mask"][rows]
    return out


def build(cfg: dict, tcfg, tok) -> tuple:
    """The recipe's part of ``run_recipe``: vocabulary, model and task -> (model, task, vocab)."""
    d = cfg.get("data", {})
    vocab = WordVocab(grammar_words(d.get("kind", "shapes")), *((LAYOUT_WORDS, LAYOUT_LEN) if d.get("layout") else ()))
    model = build_model(cfg, vocab, tok)
    task = ShapesT2ITask(vocab, tok, tcfg.batch_size, d.get("caption_frac", 0.3), d.get("caption_drop", 0.1),
                         tcfg.seed, cfg.get("eval", {}).get("batches", 4), cfg.get("loss_weights"),
                         cfg.get("order", "raster"), d.get("kind", "shapes"), model.config["meta"].get("order_kw"))
    return model, task, vocab


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    tok = make_tokenizer(cfg.get("image"), device=device)
    model, metrics = run_recipe(cfg, partial(build, tok=tok), out, device, resume,
                                data_keys={"kind", "caption_frac", "caption_drop", "layout"})
    if out and hasattr(tok, "vae"):  # a latent model carries its VAE (vae/) next to its weights
        tok.save_pretrained(Path(out) / "vae")
    return model, metrics

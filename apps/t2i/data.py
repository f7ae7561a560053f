"""Sequences and batches of the text-to-image recipe (apps/t2i/model.py): the word vocabulary, the
interleaved layout, the data sources (shape renders, digits) and the trainer's task.

    text-to-image:  <bos> a red circle ... <boi> p1 ... p64 <eoi> <eos>
    captioning:     <bos> <boi> p1 ... p64 <eoi> a red circle ... <eos>
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from backbone.container import atomic_write_text
from modalities.image import PatchTokenizer

SPECIALS = ["<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<img>"]  # <img>: placeholder id at patch slots
PAD, BOS, EOS, BOI, EOI, IMG = range(len(SPECIALS))


class WordVocab:
    """Whole-word tokenizer over a small grammar's words; unknown words are named in the error."""
    kind = "words"

    def __init__(self, words: list[str]):
        self.itos = SPECIALS + sorted(set(words) - set(SPECIALS))
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def words(self, text: str) -> list[str]:
        return text.lower().replace(",", " ").strip().rstrip(".").split()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the prompt is empty; describe the image, e.g. 'a red circle to the left of a blue square'")
        words = self.words(text)
        unknown = sorted({w for w in words if w not in self.stoi or w in SPECIALS})
        if unknown:
            known = ", ".join(w for w in self.itos if w not in SPECIALS)
            raise ValueError(f"unknown word(s) {', '.join(repr(w) for w in unknown)}; the model knows: {known}")
        return [self.stoi[w] for w in words]

    def decode(self, ids) -> str:
        return " ".join(self.itos[int(i)] for i in ids if int(i) >= len(SPECIALS))

    def save(self, folder: str | Path):
        atomic_write_text(Path(folder) / "vocab.json", json.dumps({"kind": self.kind, "words": self.itos}))

    @classmethod
    def load(cls, folder: str | Path) -> "WordVocab":
        f = Path(folder) / "vocab.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: not a text-to-image checkpoint")
        return cls(json.loads(f.read_text())["words"])


MAX_PROMPTS = 64


def encode_prompts(vocab: WordVocab, prompts, steps: int, cfg: float, temperature: float) -> list[list[int]]:
    """Check a text-to-image request and encode its prompts (a str or a list of 1-64 str) ->
    word-id lists; ValueError naming the problem (count, range, unknown words)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
    if not (1 <= steps <= 1000) or not (cfg >= 0) or not (temperature >= 0):
        raise ValueError("steps must be in [1, 1000], cfg >= 0 and temperature >= 0")
    return [vocab.encode(p) for p in prompts]


# ---- sequences -----------------------------------------------------------------------------------
def build_batch(captions: list[list[int]], patches: Tensor, modes: list[str]) -> dict:
    """Pack (caption ids, image patches (B, N, d)) pairs as t2i ("gen") or captioning ("cap")
    sequences, right-padded. Returns the trainer's batch: input_ids (B, T), the image adapter's
    (patches (B, T, d), index (B, T)), embed_mask (B, T), and targets: "lm" (B, T) with -100 where
    nothing is scored, "image" (select (B, T), patches (M, d)) at the positions before each patch."""
    B, N, d = patches.shape
    seqs = []
    for cap, mode in zip(captions, modes):
        img = [IMG] * N
        seqs.append([BOS, *cap, BOI, *img, EOI, EOS] if mode == "gen" else [BOS, BOI, *img, EOI, *cap, EOS])
    T = max(len(s) for s in seqs) - 1
    ids = torch.full((B, T), PAD, dtype=torch.long)
    y = torch.full((B, T), -100, dtype=torch.long)
    for b, s in enumerate(seqs):
        s = torch.tensor(s)
        ids[b, :len(s) - 1], y[b, :len(s) - 1] = s[:-1], s[1:]
    is_patch = ids == IMG
    index = torch.where(is_patch, is_patch.long().cumsum(1) - 1, torch.full_like(ids, -1))  # (B, T)
    seq_patches = torch.zeros(B, T, d)
    seq_patches[is_patch] = patches.reshape(-1, d)
    select = y == IMG                                  # the position before each patch predicts it
    y = y.masked_fill(select, -100)
    return {"input_ids": ids, "adapter_inputs": {"image": (seq_patches, index)}, "embed_mask": is_patch,
            "targets": {"lm": y, "image": (select, patches.reshape(-1, d))}}


def shapes_data(n: int, split: str, seed: int) -> tuple[Tensor, list[str], list[str]]:
    """n fresh shape scenes -> (images (n, 3, 32, 32) in [0, 1], prompts, full captions).
    Captioning targets name every colour; prompts are written as users write them."""
    from modalities.image_shapes import caption, make_scenes
    scenes = make_scenes(n, split, seed)
    images = torch.tensor(np.stack([im for _, _, im in scenes])).permute(0, 3, 1, 2).float() / 255
    return images, [caption(shown) for shown, _, _ in scenes], [caption(scene) for _, scene, _ in scenes]


def digits_data(n: int, split: str, seed: int) -> tuple[Tensor, list[str], list[str]]:
    """n digits drawn (with replacement) from scikit-learn's load_digits split -> (images
    (n, 1, 8, 8) in [0, 1], prompts, captions), both "the digit 7"."""
    from modalities.digits import caption, load_split, to_tensor
    images, labels = load_split(split)
    idx = np.random.default_rng(seed).integers(len(labels), size=n)
    caps = [caption(int(y)) for y in labels[idx]]
    return to_tensor(images[idx]), caps, caps


DATA = {"shapes": shapes_data, "digits": digits_data}


class ShapesT2ITask:
    """Batches of text-image pairs from a ``DATA`` source (fresh shape renders, or digits), made
    from (seed, step, micro): a resumed run sees exactly the batches it would have seen."""

    def __init__(self, vocab: WordVocab, tok: PatchTokenizer, batch_size: int, caption_frac: float = 0.3,
                 caption_drop: float = 0.1, seed: int = 0, eval_batches: int = 4, weights: dict | None = None,
                 order: str = "raster", data: str = "shapes", order_kw: dict | None = None):
        if data not in DATA:
            raise ValueError(f"unknown data {data!r}; choose one of {', '.join(DATA)}")
        self.vocab, self.tok, self.batch_size, self.seed, self.order = vocab, tok, batch_size, seed, order
        self.caption_frac, self.caption_drop, self.weights = caption_frac, caption_drop, weights or {}
        self.data = DATA[data]
        self.order_kw = order_kw or {}                    # next_scale / next_cell options (apps/t2i/blocks.py)
        self._eval = [self._batch(np.random.default_rng([seed, 99, i]), "test") for i in range(eval_batches)]

    def _batch(self, g: np.random.Generator, split: str) -> dict:
        images, prompts, captions = self.data(self.batch_size, split, int(g.integers(2**31)))
        modes = ["cap" if g.random() < self.caption_frac else "gen" for _ in prompts]
        caps = [self.vocab.encode(c) if m == "cap" else ([] if g.random() < self.caption_drop else self.vocab.encode(p))
                for p, c, m in zip(prompts, captions, modes)]
        batch = build_batch(caps, self.tok.encode(images), modes)
        if self.order == "mar":
            from apps.t2i.mar import mask_image_rows
            gen = torch.Generator().manual_seed(int(g.integers(2**31)))
            batch = mask_image_rows(batch, torch.tensor([m == "gen" for m in modes]), gen)
        elif self.order in ("next_scale", "next_cell"):
            from apps.t2i.blocks import BATCHES
            gen = torch.Generator().manual_seed(int(g.integers(2**31)))
            batch = BATCHES[self.order](batch, torch.tensor([m == "gen" for m in modes]), gen, patch=self.tok.patch,
                                        **self.order_kw)
        batch["loss_weights"] = self.weights
        return batch

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


# ---- the recipe ----------------------------------------------------------------------------------
def grammar_words(data: str = "shapes") -> list[str]:
    if data == "digits":
        from modalities.digits import grammar_words as words
    else:
        from modalities.image_shapes import grammar_words as words
    return words()

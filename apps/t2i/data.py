"""Sequences of the text-to-image recipe (apps/t2i/recipe.py): the word vocabulary, the image
tokenizer of a config, the interleaved layout as segments (backbone/sequence.py) and the data
sources (shape renders, digits).

    text-to-image:  <bos> a red circle ... <boi> p1 ... p64 <eoi> <eos>
    captioning:     <bos> <boi> p1 ... p64 <eoi> a red circle ... <eos>

Every order packs these two rows with ``pack`` (the one packer); orders differ only in the image
slots: raster patches predicted one by one from the position before (here), a masked block
(apps/t2i/mar.py), or a chain of scale / cell blocks (apps/t2i/blocks.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from backbone.container import atomic_write_text
from backbone.sequence import Segment, pack
from modalities import digits, image_shapes
from modalities.image import PatchTokenizer
from modalities.image_latent import LatentTokenizer

SPECIALS = ["<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<img>"]  # <img>: placeholder id at patch slots
PAD, BOS, EOS, BOI, EOI, IMG = range(len(SPECIALS))


class WordVocab:
    """Whole-word tokenizer over a small grammar's words; unknown words are named in the error.

    ``layout``: words of a plan the model writes itself (modalities/shape_layout.py), appended
    after the grammar's words. A prompt may not use them; ``decode`` drops a plan (its opening
    word, the first of ``layout``, and the ``layout_len`` words after it)."""
    kind = "words"

    def __init__(self, words: list[str], layout: list[str] | tuple = (), layout_len: int = 0):
        self.layout, self.layout_len = list(layout), layout_len
        self.itos = SPECIALS + sorted(set(words) - set(SPECIALS) - set(self.layout)) + self.layout
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.reserved = set(SPECIALS) | set(self.layout)
        self.mark = self.stoi[self.layout[0]] if self.layout else None

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def words(self, text: str) -> list[str]:
        return text.lower().replace(",", " ").strip().rstrip(".").split()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the prompt is empty; describe the image, e.g. 'a red circle to the left of a blue square'")
        words = self.words(text)
        unknown = sorted({w for w in words if w not in self.stoi or w in self.reserved})
        if unknown:
            known = ", ".join(w for w in self.itos if w not in self.reserved)
            raise ValueError(f"unknown word(s) {', '.join(repr(w) for w in unknown)}; the model knows: {known}")
        return [self.stoi[w] for w in words]

    def split_layout(self, ids) -> tuple[list[int], list[int]]:
        """Token ids -> (the plan's ``layout_len`` word ids, or [] if there is none; the other ids)."""
        ids = [int(i) for i in ids]
        if self.mark is None or self.mark not in ids:
            return [], ids
        i = ids.index(self.mark)
        return ids[i + 1:i + 1 + self.layout_len], ids[:i] + ids[i + 1 + self.layout_len:]

    def decode(self, ids) -> str:
        return " ".join(self.itos[i] for i in self.split_layout(ids)[1] if self.itos[i] not in self.reserved)

    def save(self, folder: str | Path):
        extra = {"layout": self.layout, "layout_len": self.layout_len} if self.layout else {}
        atomic_write_text(Path(folder) / "vocab.json", json.dumps({"kind": self.kind, "words": self.itos, **extra}))

    @classmethod
    def load(cls, folder: str | Path) -> "WordVocab":
        f = Path(folder) / "vocab.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: not a text-to-image checkpoint")
        d = json.loads(f.read_text())
        return cls(d["words"], d.get("layout", ()), d.get("layout_len", 0))


MAX_PROMPTS = 64


def encode_prompts(vocab: WordVocab, prompts, steps: int, cfg: float, temperature: float) -> list[list[int]]:
    """Check a text-to-image request and encode its prompts (a str or a list of 1-64 str) ->
    word-id lists; ValueError naming the problem (count, range, unknown words)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
    if not (1 <= steps <= 1000) or not (0 <= cfg <= 100) or not (0 <= temperature <= 10):
        raise ValueError("steps must be in [1, 1000], cfg in [0, 100] and temperature in [0, 10]")
    return [vocab.encode(p) for p in prompts]


# ---- the image tokenizer of a config -------------------------------------------------------------
def make_tokenizer(image: dict | None, base=None, device=None):
    """The ``image:`` config -> a PatchTokenizer (pixel patches, the default) or, with ``tokenizer:
    latent`` and ``folder`` (a local diffusers AutoencoderKL folder, relative to ``base``), a
    LatentTokenizer (modalities/image_latent.py: latent patches, for larger images and GPUs)."""
    c = dict(image or {})
    kind = c.pop("tokenizer", "patch")
    if kind == "patch":
        return PatchTokenizer(**c)
    if kind != "latent":
        raise ValueError(f"unknown image tokenizer {kind!r}; choose 'patch' or 'latent'")
    folder = c.pop("folder", None)
    if not folder:
        raise ValueError("image.tokenizer 'latent' needs image.folder (a local diffusers AutoencoderKL folder)")
    c.pop("channels", None)
    c.pop("scale", None)                                   # both come from the VAE
    return LatentTokenizer.from_pretrained(Path(base or ".") / folder, device=device, **c)


def tokenizer_config(tok) -> dict:
    if hasattr(tok, "vae"):   # a latent model carries its VAE inside the checkpoint folder (vae/)
        return {"tokenizer": "latent", "folder": "vae", **tok.config()}
    return {"size": tok.size, "patch": tok.patch, "channels": tok.channels, "scale": tok.scale}


# ---- sequences -----------------------------------------------------------------------------------
def image_slots(x: Tensor, index: Tensor, masked: Tensor | None = None, blocks: Tensor | None = None,
                target: Tensor | None = None, scored: Tensor | bool = True) -> Segment:
    """An image's S slots for the image adapter: inputs x (S, d) at patch places index (S,) (the
    adapter's learned position), ``masked`` (S,) bool: the adapter's mask vector instead of x.
    ``blocks`` (S,): attention blocks (None: causal, the raster order). ``target`` (S, d): what the
    image head predicts, from the position before each slot when causal, at the slot itself in
    a block; ``scored`` (S,) bool or bool: which targets count."""
    values, fills = (x, index), (0.0, -1)
    if masked is not None:
        values, fills = (x, index, masked), (0.0, -1, False)
    return Segment([IMG] * len(x), kind="image", adapter="image", values=values, fills=fills, blocks=blocks,
                   head=None if target is None else "image", target=target, scored=scored,
                   shift=1 if blocks is None else 0)


def layout(cap: list[int], image: Segment, mode: str) -> list[Segment]:
    """One training row around its image slots: text-to-image ("gen") or captioning ("cap"). The LM
    head predicts every token after <bos>, except the <eoi> after a block image: there it follows
    by rule (the block's last slot predicts a token of its own)."""
    eoi = image.blocks is None
    if mode == "gen":
        return [Segment([BOS, *cap, BOI], head="lm"), image, Segment([EOI, EOS], head="lm", scored=torch.tensor([eoi, True]))]
    return [Segment([BOS, BOI], head="lm"), image,
            Segment([EOI, *cap, EOS], head="lm", scored=torch.tensor([eoi] + [True] * (len(cap) + 1)))]


def raster_rows(captions: list[list[int]], patches: Tensor, modes: list[str], generator=None) -> list[list]:
    """(caption ids, image patches (B, N, d)) pairs as t2i ("gen") or captioning ("cap") rows in
    the raster order: each patch predicted from the position before it (<boi> predicts p1), in
    both modes (captioning rows train the unconditional image). ``generator``: unused."""
    N = patches.shape[1]
    return [layout(cap, image_slots(x, torch.arange(N), target=x), mode)
            for cap, x, mode in zip(captions, patches, modes)]


def build_batch(rows: list[list[Segment]]) -> dict:
    """Rows of segments -> the trainer's batch, right-padded, the final <eos> a target only:
    input_ids (B, T), embed_mask (B, T), adapter_inputs {"image": (patches (B, T, d), index (B, T)
    [, masked (B, T)])}, mask (B, 1, T, T) for block orders, targets "lm" (B, T) (-100 where
    nothing is scored) and "image" (select (B, T), targets (M, d))."""
    return pack(rows, PAD, trim_last=True).batch()


# ---- data sources --------------------------------------------------------------------------------
DATA = {"shapes": image_shapes.shapes_data, "digits": digits.digits_data}
GRAMMARS = {"shapes": image_shapes.grammar_words, "digits": digits.grammar_words}


def grammar_words(data: str = "shapes") -> list[str]:
    if data not in GRAMMARS:
        raise ValueError(f"unknown data {data!r}; choose one of {', '.join(GRAMMARS)}")
    return GRAMMARS[data]()

"""The plan before the picture (issue 19): a checkpoint trained with ``data.layout`` first writes
the scene's layout with its LM head, then draws it (modalities/shape_layout.py has the grammar):

    text-to-image:  <bos> a red circle above a cube <layout> red circle s12 x3 y4 ... <boi> p1 ... p64 <eoi>
    captioning:     <bos> <boi> p1 ... p64 <eoi> <layout> red circle s12 x3 y4 ... a red circle ... <eos>

``LayoutSchedule`` writes the plan of B prompts on the one generation loop (backbone/generate.py),
constrained to the layout grammar: at each of the ``LAYOUT_LEN`` slots the LM head may only draw
a word of that slot's class (colour, shape, size, x, y, or 'none' once the objects end), and a
box must fit in the image. The constraint is the grammar alone: which objects, how many and
where stay the model's choice (nothing here reads the prompt).
"""
from __future__ import annotations

import torch
from torch import Tensor

from apps.t2i.data import BOS, PAD, WordVocab
from backbone.generate import Feed, Prompt, Schedule, Step
from backbone.sampling import SamplingParams
from backbone.sequence import Segment, pack
from modalities.image_shapes import SIZE
from modalities.shape_layout import ENTRY, LAYOUT_LEN, NONE, SLOTS


class LayoutGrammar:
    """Per-slot allowed ids of a layout vocabulary: ``allowed(slot, rows)`` -> (B, V) bool."""

    def __init__(self, vocab: WordVocab, device=None):
        if not vocab.layout:
            raise ValueError("this checkpoint writes no layout (it was trained without data.layout)")
        V = vocab.vocab_size
        self.none = vocab.stoi[NONE]
        self.classes = []                                      # (V,) bool per word class of an entry
        for words in SLOTS:
            m = torch.zeros(V, dtype=torch.bool, device=device)
            m[[vocab.stoi[w] for w in words]] = True
            self.classes.append(m)
        self.size_of = {vocab.stoi[w]: int(w[1:]) for w in SLOTS[2]}
        self.coord = torch.arange(SIZE, device=device)         # x<i> / y<i> ids are consecutive in SLOTS
        self.first_coord = [vocab.stoi[SLOTS[3][0]], vocab.stoi[SLOTS[4][0]]]

    def allowed(self, rows: list[list[int]]) -> Tensor:
        """rows: each row's plan so far (same length j < LAYOUT_LEN) -> (B, V) bool, the ids slot j may take."""
        j = len(rows[0])
        e, k = divmod(j, ENTRY)
        out = self.classes[k].expand(len(rows), -1).clone()
        for b, r in enumerate(rows):
            if self.none in r:                        # the objects ended: 'none' to the end
                out[b] = False
                out[b, self.none] = True
            elif k == 0 and e > 0:                              # another object, or the end
                out[b, self.none] = True
            elif k in (3, 4):                                   # the box stays inside the image (1 px border)
                size = self.size_of[r[e * ENTRY + 2]]
                ok = (self.coord >= 1) & (self.coord <= SIZE - 1 - size)
                first = self.first_coord[k - 3]
                out[b] = False
                out[b, first:first + SIZE] = ok
        return out


class LayoutSchedule(Schedule):
    """Write the layout of B prompts: prefill ``<bos> caption <layout>`` (left-packed), then
    ``LAYOUT_LEN`` grammar-constrained LM steps. ``result()``: (B, LAYOUT_LEN) word-id lists."""

    def __init__(self, model, vocab: WordVocab, captions: list[list[int]], params: SamplingParams,
                 generator: torch.Generator | None):
        self.device = next(model.parameters()).device
        self.grammar = LayoutGrammar(vocab, self.device)
        seq = pack([[Segment([BOS, *c, vocab.mark])] for c in captions], PAD, side="left")
        self._prompt = seq.prompt(model, seq.ids.shape[1] + LAYOUT_LEN)
        self.params, self.generator = params, generator
        self.plans = [[] for _ in captions]

    def prompt(self) -> Prompt:
        return self._prompt

    def next(self, h: Tensor) -> Step | None:
        return Step("lm", h[:, -1], {"params": self.params, "generator": self.generator,
                                     "allowed": self.grammar.allowed(self.plans)})

    def feed(self, tok: Tensor) -> Feed | None:
        for plan, t in zip(self.plans, tok.tolist()):
            plan.append(int(t))
        return None if len(self.plans[0]) == LAYOUT_LEN else Feed(ids=tok[:, None])

    def result(self) -> list[list[int]]:
        return self.plans

"""Text-to-image schedules over the one generation loop (backbone/generate.py): an image in the
raster order, captions, and interleaved text and images. The other orders are schedules of the
same kind: MAR in apps/t2i/mar.py, next-scale and next-cell in apps/t2i/blocks.py.

Rows. A text-to-image request decodes B cond rows (``<bos> caption <boi>``) and, with classifier-
free guidance, B null rows (``<bos> <boi>``) together: every image step samples from the cond
rows' hidden states, guided by the null rows' (``z_null``), and feeds the sample back to both.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from apps.t2i.data import BOI, BOS, EOI, EOS, IMG, PAD
from backbone.generate import Feed, Prompt, Schedule, Step
from backbone.sampling import SamplingParams
from backbone.sequence import Sequence


class ImageSchedule(Schedule):
    """One image from the image head (diffusion or flow). The subclass says which slots each step
    fills and what it feeds back; samples are (B * n, d) tokens for n slots a row.

    head_kw: the head's sampling options (steps, temperature). ``guidance(progress)``: the CFG
    scale when progress (in [0, 1]) of the image is done; None = no guidance (B rows, no null rows).
    ``prompt``: what to prefill (None when the image follows text in an InterleavedSchedule).
    ``commit``: feed the finished image into the cache too, so that text can follow it.
    ``finished`` turns True with the last sample; ``result()``: tokens (B, N, d), raster order."""

    def __init__(self, model, B: int, head_kw: dict, generator: torch.Generator | None,
                 guidance: Callable[[float], float] | None = None, prompt: Prompt | None = None,
                 commit: bool = False):
        self.B, self.head_kw, self.generator = B, head_kw, generator
        self.guidance, self._prompt, self.commit = guidance, prompt, commit
        self.rows = B * (2 if guidance else 1)
        self.adapter = model.adapters["image"]
        self.device = next(model.parameters()).device
        self.finished = False

    def prompt(self) -> Prompt:
        return self._prompt

    def _step(self, h: Tensor, progress: float) -> Step:
        """h (rows, n, D): the states that condition n tokens per row -> the image head's step."""
        B, n = self.B, h.shape[1]
        z_null = h[B:].reshape(B * n, -1) if self.guidance else None
        cfg = self.guidance(progress) if self.guidance else 1.0
        return Step("image", h[:B].reshape(B * n, -1),
                    {**self.head_kw, "cfg": cfg, "generator": self.generator, "z_null": z_null})

    def _embed(self, x: Tensor, index: Tensor, masked: Tensor | None = None) -> Tensor:
        """x (B, n, d) tokens at patch places index (n,)[, masked (B, n) bool] -> the next
        inputs of every row (rows, n, D): cond and null rows get the same tokens."""
        r = self.rows // self.B
        raw = (x.repeat(r, 1, 1), index.to(self.device).expand(self.rows, -1))
        return self.adapter(raw if masked is None else (*raw, masked.repeat(r, 1)))


class RasterSchedule(ImageSchedule):
    """The raster order (Orthus, MMAR): one patch a step, conditioned on the state before it (the
    one at <boi> for the first patch), fed back as the next input."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.N, self.out = self.adapter.n_patches, []

    def next(self, h: Tensor) -> Step | None:
        if self.finished:                                 # the last patch is in the cache (commit)
            return None
        return self._step(h[:, -1:], len(self.out) / max(1, self.N - 1))

    def feed(self, x: Tensor) -> Feed | None:
        self.out.append(x)                                                   # (B, d)
        i = len(self.out)
        self.finished = i == self.N
        if self.finished and not self.commit:
            return None
        return Feed(embeds=self._embed(x[:, None], torch.tensor([i - 1])))

    def result(self) -> Tensor:
        return torch.stack(self.out, 1)


class CaptionSchedule(Schedule):
    """Greedy captions from the LM head after a packed image prompt ``<bos> <boi> p1..pN <eoi>``
    (``seq``, packed on the left; one bidirectional image block in the block orders), until <eos>
    or ``max_words`` tokens. ``result()``: the word ids of each row."""

    def __init__(self, model, seq: Sequence, max_words: int):
        B = seq.ids.shape[0]
        self._prompt = seq.prompt(model, seq.ids.shape[1] + max_words)
        self.max_words, self.n = max_words, 0
        self.params = SamplingParams(temperature=0)
        self.words, self.done = [[] for _ in range(B)], [False] * B

    def prompt(self) -> Prompt:
        return self._prompt

    def next(self, h: Tensor) -> Step | None:
        return Step("lm", h[:, -1], {"params": self.params}) if self.max_words > 0 else None

    def feed(self, tok: Tensor) -> Feed | None:
        for b, t in enumerate(tok.tolist()):
            if not self.done[b]:
                self.done[b] = t == EOS
                if not self.done[b]:
                    self.words[b].append(t)
        self.n += 1
        return None if self.n >= self.max_words or all(self.done) else Feed(ids=tok[:, None])

    def result(self) -> list[list[int]]:
        return self.words


class InterleavedSchedule(Schedule):
    """Interleaved generation (Orthus, MMAR) of one sequence: the LM head writes words; when it
    samples <boi>, an image schedule (``new_image()``, committing) takes over for the image's
    slots, then <eoi> follows by rule and hands back to the LM head, until <eos> or ``max_words``
    words. One image per sequence, as in training. ``result()``: segments in order, word-id lists
    (text) or tokens (1, N, d) (an image)."""
    STOP = (EOS, PAD, IMG, EOI, BOS)  # only <eos> is expected; the others end the sequence too

    def __init__(self, model, ids: list[int], max_words: int, params: SamplingParams,
                 generator: torch.Generator | None, new_image: Callable[[], ImageSchedule], max_seq: int):
        self.device = next(model.parameters()).device
        self.ids, self.max_words, self.params, self.generator = ids, max_words, params, generator
        self.new_image, self.max_seq = new_image, max_seq
        self.segments, self.words, self.n_words = [], list(ids[1:]), 0
        self.image: ImageSchedule | None = None
        self.images, self.eoi = 0, False

    def prompt(self) -> Prompt:
        x = torch.tensor([self.ids], device=self.device)
        return Prompt(x, torch.ones_like(x), self.max_seq)

    def next(self, h: Tensor) -> Step | Feed | None:
        if self.eoi:                                         # the image is in the cache: <eoi> follows
            self.eoi = False
            return Feed(ids=torch.tensor([[EOI]], device=self.device))
        if self.image is not None:
            return self.image.next(h)
        if self.n_words >= self.max_words:
            return None
        return Step("lm", h[:, -1], {"params": self.params, "generator": self.generator})

    def feed(self, x: Tensor) -> Feed | None:
        if self.image is not None:                                            # image tokens
            f = self.image.feed(x)
            if not self.image.finished:
                return f
            self.segments.append(self.image.result())
            self.image, self.images = None, self.images + 1
            if f is None:                                   # nothing left to feed: <eoi> right away
                return Feed(ids=torch.tensor([[EOI]], device=self.device))
            self.eoi = True
            return f
        t = int(x[0])                                                         # a token
        if t in self.STOP:
            return None
        if t != BOI:
            self.words.append(t)
            self.n_words += 1
            return Feed(ids=x[:, None])
        if self.words:
            self.segments.append(self.words)
            self.words = []
        if self.images:
            return None
        self.image = self.new_image()
        return Feed(ids=x[:, None])

    def result(self) -> list:
        return self.segments + ([self.words] if self.words else [])

"""The MAR order for text-to-image: random-order masked generation, bidirectional over the image.

MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization") predicts a
random subset of patches at a time from all the patches known so far. On the shared backbone
that is one sequence with the layout of apps/t2i/data.py,

    <bos> a red circle <boi> [x1 .. x64] <eoi> <eos>

where the 64 image slots form one attention block (bidirectional inside, causal to the caption:
``Segment(blocks=...)``), unknown slots hold the adapter's learned mask vector, and the hidden
state *at* each masked slot conditions the diffusion/flow head for that slot's patch (shift 0).

Training masks a fraction r = cos(pi/2 * u), u ~ U(0, 1) of each text-to-image row's patches
(MaskGIT's cosine schedule, Chang et al. 2022, which MAR uses at inference) and scores only those.
Captioning rows keep every patch known, so the same checkpoint still reads images.
Sampling (``MaskedSchedule``) starts fully masked and reveals patches in a random order over K
passes, leaving floor(N cos(pi/2 k/K)) masked after pass k; the prompt sits in the KV cache and
each pass rewrites only the image block (an uncommitted block ``Feed``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from apps.t2i.data import image_slots, layout
from apps.t2i.schedules import ImageSchedule
from backbone.generate import Feed, Step


def mask_draw(B: int, N: int, gen_rows: Tensor, generator: torch.Generator) -> Tensor:
    """Which patches a batch masks -> (B, N) bool. gen_rows (B,) bool: text-to-image rows, which
    get a cosine-distributed share of masked patches (at least one) in a random order per row;
    captioning rows mask none."""
    u = torch.rand(B, generator=generator)
    n_mask = torch.ceil(N * torch.cos(math.pi / 2 * u)).clamp(1, N).long() * gen_rows.long()   # (B,)
    rank = torch.rand(B, N, generator=generator).argsort(1).argsort(1)        # a random order per row
    return rank < n_mask[:, None]


def masked_rows(captions: list[list[int]], patches: Tensor, modes: list[str],
                generator: torch.Generator) -> list[list]:
    """(caption ids, patches (B, N, d)) pairs -> rows (apps/t2i/data.py ``layout``) with the image
    as one bidirectional block: masked slots (``mask_draw``) enter as the mask vector and predict
    their own patch; captioning rows see every patch and predict none."""
    B, N, _ = patches.shape
    masked = mask_draw(B, N, torch.tensor([m == "gen" for m in modes]), generator)
    return [layout(cap, image_slots(x, torch.arange(N), m, torch.zeros(N, dtype=torch.long), target=x, scored=m),
                   mode) for cap, x, m, mode in zip(captions, patches, masked, modes)]


def masked_schedule(N: int, K: int) -> list[int]:
    """How many patches stay masked after each of K passes (cosine, MaskGIT/MAR): each pass
    reveals at least one patch and the last reveals the rest. -> K non-increasing ints ending in 0."""
    if not 1 <= K <= N:
        raise ValueError(f"a masked order takes 1 to {N} passes for {N} patches, got {K}")
    left, out = N, []
    for k in range(K):
        nxt = 0 if k == K - 1 else max(K - k - 1, min(left - 1, math.floor(N * math.cos(math.pi / 2 * (k + 1) / K))))
        out.append(nxt)
        left = nxt
    return out


class MaskedSchedule(ImageSchedule):
    """The image as one block of N slots, run ``passes`` times uncommitted (each pass rewrites the
    same cache slots): pass k samples the patches its reveal order names from the states at their
    slots, and feeds the block again with them known. The reveal order is drawn at construction.
    ``guidance(progress)``: progress = the share of patches revealed after the pass (MAR)."""

    def __init__(self, *args, passes: int = 16, **kw):
        super().__init__(*args, **kw)
        B, N, d = self.B, self.adapter.n_patches, self.adapter.token_dim
        self.N, self.plan, self.k, self.left = N, masked_schedule(N, passes), 0, N    # left: still masked
        self.tokens = torch.zeros(B, N, d, device=self.device)
        self.known = torch.zeros(B, N, dtype=torch.bool, device=self.device)
        self.order = torch.rand(B, N, generator=self.generator, device=self.device).argsort(1)   # reveal order
        self.pick: Tensor | None = None                                       # (B, m) revealed now

    def _pass(self, commit: bool = False) -> Feed:
        return Feed(embeds=self._embed(self.tokens, torch.arange(self.N), ~self.known), commit=commit)

    def next(self, h: Tensor) -> Step | Feed | None:
        if self.finished:                                 # the finished block is in the cache (commit)
            return None
        if self.pick is None:                            # the block's first pass, fully masked
            self.pick = self.order[:, :0]
            return self._pass()
        nxt = self.plan[self.k]
        self.pick = self.order[:, self.N - self.left:self.N - nxt]
        z = h.gather(1, self.pick.repeat(self.rows // self.B, 1)[..., None].expand(-1, -1, h.shape[-1]))
        return self._step(z, (self.N - nxt) / self.N)                        # z (rows, m, D)

    def feed(self, x: Tensor) -> Feed | None:
        B, m = self.pick.shape
        d = self.tokens.shape[-1]
        self.tokens.scatter_(1, self.pick[..., None].expand(-1, -1, d), x.view(B, m, d))
        self.known.scatter_(1, self.pick, True)
        self.left, self.k = self.plan[self.k], self.k + 1
        if self.k < len(self.plan):
            return self._pass()
        self.finished = True
        return self._pass(commit=True) if self.commit else None

    def result(self) -> Tensor:
        return self.tokens

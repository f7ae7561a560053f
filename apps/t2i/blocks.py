"""Two block-causal orders for text-to-image: next-scale (after VAR / FlowAR) and next-cell (after xAR).
The orders only: the head is the config's (diffusion by default; FlowAR and xAR use flow matching,
``head: {kind: flow}``).

Both keep the caption causal and make the image a chain of attention blocks, bidirectional
inside a block and causal across blocks (``Segment(blocks=...)``); the hidden state at every
slot of a block conditions the diffusion/flow head for one token, and sampling writes one block
per backbone pass into the KV cache (a committed block ``Feed``: ``NextScaleSchedule``,
``NextCellSchedule``).

next-scale (VAR, Tian et al. 2024, "Visual Autoregressive Modeling: ... Next-Scale Prediction";
FlowAR, Ren et al. 2024, "Scale-wise Autoregressive Image Generation Meets Flow Matching"): the
image at sides 1, 2, 4, 8 patches (4, 8, 16, 32 px for 32x32 with 4 px patches,
area-downsampled; for a latent tokenizer, the latent grid), 1 + 4 + 16 + 64 = 85 slots::

    <bos> a red circle <boi> [m] [up(s0)] x4 [up(s1)] x16 [up(s2)] x64 <eoi> <eos>

Block k holds the scale k-1 image upsampled to scale k (block 0: the adapter's mask vector as a
learned start) and each slot predicts the scale-k token at its place. Patch index = the slot
(0..84), so the image adapter needs ``n_patches = 85``.

next-cell (xAR, Ren et al. 2025, "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation"): cells of 2x2 patches in raster order (16 cells of 4 tokens), tokens cell-major::

    <bos> a red circle <boi> [m m m m] [cell 0] [cell 1] ... [cell 14] <eoi> <eos>

Block k holds cell k-1 (block 0: a start block of mask vectors) and predicts cell k, shifted by
one cell like raster's next token. Patch index = the raster place of the slot's *target* token
(n_patches = 64). Noisy context learning (xAR): in training each context cell enters as
x_in = (1 - t) x + t eps, t ~ U(0, t_max) per cell; targets stay clean, inference context is clean.

Captioning rows (both orders) keep the raster layout ``<bos> <boi> p1..p64 <eoi> words`` of
apps/t2i/data.py with the image as one bidirectional block, no masked slots and no image targets
(as in the MAR order); patch index = ``n_patches - 64 + raster`` (the finest scale's slots for
next-scale, the raster place for next-cell). Unconditional images for guidance come from
caption-dropped rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from apps.t2i.data import image_slots, layout
from apps.t2i.schedules import ImageSchedule
from backbone.generate import Feed, Step

BLOCK_ORDERS = ("next_scale", "next_cell")
OPTIONS = {"next_scale": {"up": "bilinear"}, "next_cell": {"cell": 2, "t_max": 0.5}}
UPSAMPLING = ("nearest", "bilinear")


def order_options(order: str, kw: dict | None = None) -> dict:
    """The order's options (config ``order_kw``) over its defaults; unknown keys are an error."""
    bad = sorted(set(kw or {}) - set(OPTIONS[order]))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for order {order!r}; it takes {sorted(OPTIONS[order])}")
    return {**OPTIONS[order], **(kw or {})}


def scale_sides(n_side: int) -> list[int]:
    """Patches per side of each scale, coarse to fine: 8 -> [1, 2, 4, 8] (halving, VAR/FlowAR)."""
    if n_side < 1 or n_side & (n_side - 1):
        raise ValueError(f"next-scale needs a power-of-two grid side, got {n_side}")
    return [n_side >> k for k in range(n_side.bit_length() - 1, -1, -1)]


def n_slots(order: str, n_side: int) -> int:
    """Image slots of a generation row = the adapter's ``n_patches``: 85 (next-scale), 64 (next-cell)."""
    return sum(s * s for s in scale_sides(n_side)) if order == "next_scale" else n_side * n_side


def adapter_kwargs(order: str, n_side: int) -> dict:
    """PatchEmbed sizing for a block order: one index per slot, and the mask vector as the start."""
    return {"n_patches": n_slots(order, n_side), "mask_token": True}


def _to_image(tokens: Tensor, patch: int) -> Tensor:
    """(B, s*s, C*p*p) raster tokens -> (B, C, s*p, s*p) in token units (affine in pixels, no clamp)."""
    B, N, d = tokens.shape
    s, C = int(round(N ** 0.5)), d // (patch * patch)
    x = tokens.reshape(B, s, s, C, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, s * patch, s * patch)


def _to_tokens(img: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)^2, C*p*p) raster tokens; the inverse of ``_to_image``."""
    B, C, H, _ = img.shape
    s = H // patch
    x = img.reshape(B, C, s, patch, s, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, s * s, C * patch * patch)


def pyramid(tokens: Tensor, patch: int) -> list[Tensor]:
    """(B, N, d) finest tokens -> per scale (B, s_k^2, d), coarse to fine, area-downsampled. Tokens
    are affine in pixels and area pooling is linear and keeps constants, so this equals tokenizing
    the downsampled image."""
    img, sides = _to_image(tokens, patch), scale_sides(int(round(tokens.shape[1] ** 0.5)))
    return [_to_tokens(F.interpolate(img, size=s * patch, mode="area"), patch) for s in sides[:-1]] + [tokens]


def upsample(tokens: Tensor, patch: int, up: str = "bilinear") -> Tensor:
    """(B, s^2, d) scale tokens -> (B, (2s)^2, d): the next scale's block input (FlowAR upsamples the
    previous scale to the next one's resolution)."""
    if up not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {up!r}; choose one of {UPSAMPLING}")
    img = _to_image(tokens, patch)
    kw = {"align_corners": False} if up == "bilinear" else {}
    return _to_tokens(F.interpolate(img, size=2 * img.shape[-1], mode=up, **kw), patch)


def cell_order(n_side: int, cell: int = 2) -> Tensor:
    """(N,) raster index of each slot in cell-major order: cells of cell x cell patches in raster
    order, raster inside a cell (xAR's "cell" entity). 8, 2 -> [0, 1, 8, 9, 2, 3, 10, 11, ...]."""
    if n_side % cell:
        raise ValueError(f"a {n_side}x{n_side} grid does not split into {cell}x{cell} cells")
    n = n_side // cell
    c, j = torch.arange(n * n).repeat_interleave(cell * cell), torch.arange(cell * cell).repeat(n * n)
    return (c // n * cell + j // cell) * n_side + c % n * cell + j % cell


# ---- training rows -------------------------------------------------------------------------------
def _caption_image(x: Tensor, offset: int):
    """A captioning row's image: the raster patches (N, d) as one clean bidirectional block at
    places offset.., nothing predicted."""
    N = x.shape[0]
    return image_slots(x, offset + torch.arange(N), torch.zeros(N, dtype=torch.bool), torch.zeros(N, dtype=torch.long),
                       target=x, scored=False)


def next_scale_rows(captions: list[list[int]], patches: Tensor, modes: list[str],
                    generator: torch.Generator | None = None, patch: int = 4, up: str = "bilinear") -> list[list]:
    """(caption ids, patches (B, N, d)) pairs -> next-scale rows (FlowAR/VAR): text-to-image rows
    get the 85-slot pyramid (block k: scale k-1 upsampled, or the start; each slot predicts its
    scale-k token), captioning rows the raster image. ``generator`` is unused (deterministic)."""
    B, N, d = patches.shape
    sides = scale_sides(int(round(N ** 0.5)))
    sizes = torch.tensor([s * s for s in sides])
    scales = pyramid(patches, patch)
    inputs = torch.cat([patches.new_zeros(B, 1, d)] + [upsample(s, patch, up) for s in scales[:-1]], 1)  # (B, 85, d)
    targets = torch.cat(scales, 1)                                                 # (B, 85, d)
    S = int(sizes.sum())
    start, local = torch.arange(S) < 1, torch.repeat_interleave(torch.arange(len(sides)), sizes)
    return [layout(cap, image_slots(inputs[b], torch.arange(S), start, local, target=targets[b]) if mode == "gen"
                   else _caption_image(patches[b], S - N), mode) for b, (cap, mode) in enumerate(zip(captions, modes))]


def next_cell_rows(captions: list[list[int]], patches: Tensor, modes: list[str],
                   generator: torch.Generator | None = None, cell: int = 2, t_max: float = 0.5) -> list[list]:
    """(caption ids, patches (B, N, d)) pairs -> next-cell rows (xAR): text-to-image rows get N
    cell-major slots, block k = cell k-1 (block 0: mask vectors) predicting cell k (clean targets);
    context cells are noised with t ~ U(0, t_max) per cell (noisy context learning; ``t_max=0``
    gives the clean rows that inference sees). Captioning rows: the raster image."""
    if not 0.0 <= t_max <= 1.0:
        raise ValueError(f"t_max is a noise level in [0, 1], got {t_max}")
    B, N, d = patches.shape
    perm, c2 = cell_order(int(round(N ** 0.5)), cell), cell * cell
    xc = patches[:, perm]                                                         # (B, N, d) cell-major
    t = (torch.rand(B, N // c2 - 1, generator=generator) * t_max).repeat_interleave(c2, 1)[..., None]
    eps = torch.randn(B, N - c2, d, generator=generator)
    ctx = (1 - t) * xc[:, :N - c2] + t * eps                                      # (B, N - c2, d)
    inputs = torch.cat([patches.new_zeros(B, c2, d), ctx], 1)
    start, local = torch.arange(N) < c2, torch.arange(N) // c2
    return [layout(cap, image_slots(inputs[b], perm, start, local, target=xc[b]) if mode == "gen"
                   else _caption_image(patches[b], 0), mode) for b, (cap, mode) in enumerate(zip(captions, modes))]


# ---- sampling ------------------------------------------------------------------------------------
class NextScaleSchedule(ImageSchedule):
    """Scale by scale, one committed block each: the start block (the mask vector), then scale k-1
    upsampled; the states of block k condition the scale-k tokens. ``guidance(progress)``: the
    CFG scale at stage k, progress = k / (K - 1) (VAR's linear ramp). ``result()``: the finest
    scale (B, N, d), raster."""

    def __init__(self, *args, patch: int = 4, up: str = "bilinear", **kw):
        super().__init__(*args, **kw)
        self.patch, self.up, self.sides, total = patch, up, [], 0
        while total < self.adapter.n_patches:
            self.sides.append(1 << len(self.sides))
            total += self.sides[-1] ** 2
        if total != self.adapter.n_patches:
            raise ValueError("this image adapter is not sized for the next-scale order")
        self.k, self.off = 0, 0
        self.x = torch.zeros(self.B, 1, self.adapter.token_dim, device=self.device)   # the current scale
        self.started = False

    def _block(self) -> Feed:
        """Block k: the previous scale upsampled (block 0: the start) at its slots' places."""
        n = self.sides[self.k] ** 2
        x = upsample(self.x, self.patch, self.up) if self.k else self.x
        start = torch.full((self.B, n), self.k == 0, dtype=torch.bool, device=self.device)
        return Feed(embeds=self._embed(x, self.off + torch.arange(n), start))

    def next(self, h: Tensor) -> Step | Feed:
        if not self.started:
            self.started = True
            return self._block()
        return self._step(h, self.k / max(1, len(self.sides) - 1))

    def feed(self, x: Tensor) -> Feed | None:
        n = self.sides[self.k] ** 2
        self.x, self.off, self.k = x.view(self.B, n, -1), self.off + n, self.k + 1
        if self.k == len(self.sides):               # the finest scale is never an input: nothing to commit
            self.finished = True
            return None
        return self._block()

    def result(self) -> Tensor:
        return self.x


class NextCellSchedule(ImageSchedule):
    """Cell by cell, one committed block each: block c holds the clean cell c-1 (no context noise
    at inference, xAR; block 0: mask vectors) and its states condition cell c. ``guidance(progress)``:
    progress = c / (cells - 1). ``result()``: tokens (B, N, d), raster."""

    def __init__(self, *args, cell: int = 2, **kw):
        super().__init__(*args, **kw)
        N = self.adapter.n_patches
        self.perm, self.c2 = cell_order(int(round(N ** 0.5)), cell).to(self.device), cell * cell
        self.out = torch.zeros(self.B, N, self.adapter.token_dim, device=self.device)     # cell-major
        self.n_cells, self.c, self.started = N // self.c2, 0, False

    def _block(self) -> Feed:
        c, c2 = self.c, self.c2
        x = self.out[:, (c - 1) * c2:c * c2] if c else self.out[:, :c2]          # block 0: mask vectors
        start = torch.full((self.B, c2), c == 0, dtype=torch.bool, device=self.device)
        return Feed(embeds=self._embed(x, self.perm[c * c2:(c + 1) * c2], start))

    def next(self, h: Tensor) -> Step | Feed:
        if not self.started:
            self.started = True
            return self._block()
        return self._step(h, self.c / max(1, self.n_cells - 1))

    def feed(self, x: Tensor) -> Feed | None:
        c, c2 = self.c, self.c2
        self.out[:, c * c2:(c + 1) * c2] = x.view(self.B, c2, -1)
        self.c += 1
        if self.c == self.n_cells:                  # the last cell is never an input: nothing to commit
            self.finished = True
            return None
        return self._block()

    def result(self) -> Tensor:
        return self.out[:, self.perm.argsort()]


ROWS = {"next_scale": next_scale_rows, "next_cell": next_cell_rows}
SCHEDULES = {"next_scale": NextScaleSchedule, "next_cell": NextCellSchedule}

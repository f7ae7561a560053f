"""Two block-causal orders for text-to-image: next-scale (FlowAR / VAR) and next-cell (xAR).

Both keep the caption causal and make the image a chain of attention blocks, bidirectional
inside a block and causal across blocks (backbone/masks.py block ids); the hidden state at every
slot of a block conditions the diffusion/flow head for one token, and sampling writes one block
per backbone pass into the KV cache (backbone/generate.py ``decode_block(commit=True)``).

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

Captioning rows (both orders) keep apps/t2i/model.py's raster layout ``<bos> <boi> p1..p64 <eoi> words``
with the image as one bidirectional block, no masked slots and no image targets (as in the MAR
order); patch index = ``n_patches - 64 + raster`` (the finest scale's slots for next-scale, the
raster place for next-cell). Unconditional images for guidance come from caption-dropped rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from apps.t2i.data import BOI, BOS, EOI, EOS, IMG, PAD
from backbone.generate import DecodeState, decode_block
from backbone.masks import build_mask

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


# ---- training batches ----------------------------------------------------------------------------
def _unpack(batch: dict, gen_rows: Tensor) -> tuple[list[list[int]], Tensor]:
    """A raster batch (apps/t2i/model.py ``build_batch``) -> per-row caption ids, patches (B, N, d)."""
    ids, is_patch = batch["input_ids"], batch["embed_mask"]
    seq = batch["adapter_inputs"]["image"][0]
    B, N = ids.shape[0], int(is_patch[0].sum())
    caps = []
    for row, gen in zip(ids.tolist(), gen_rows.tolist()):
        caps.append(row[1:row.index(BOI)] if gen else [t for t in row[row.index(EOI) + 1:] if t != PAD])
    return caps, seq[is_patch].view(B, N, -1)


def _assemble(rows: list[tuple], d: int) -> dict:
    """rows: (caption ids, gen?, slot inputs (S, d), index (S,), masked (S,), local block (S,)
    non-decreasing, select (S,), targets (m, d)) -> the trainer's batch (right-padded), with the
    block-causal (B, 1, T, T) mask: text causal, each image block bidirectional."""
    seqs = []
    for cap, gen, x, index, masked, local, sel, tgt in rows:
        S = x.shape[0]
        s = [BOS, *cap, BOI] + [IMG] * S + [EOI, EOS] if gen else [BOS, BOI] + [IMG] * S + [EOI, *cap, EOS]
        seqs.append((torch.tensor(s), len(cap) + 2 if gen else 2))
    T = max(len(s) for s, _ in seqs) - 1
    B = len(rows)
    ids, y = torch.full((B, T), PAD, dtype=torch.long), torch.full((B, T), -100, dtype=torch.long)
    patches, index = torch.zeros(B, T, d), torch.full((B, T), -1, dtype=torch.long)
    masked, select = torch.zeros(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.bool)
    block, targets = torch.arange(T).repeat(B, 1), []
    for b, ((s, a), (_, _, x, idx, m, local, sel, tgt)) in enumerate(zip(seqs, rows)):
        S = x.shape[0]
        ids[b, :len(s) - 1], y[b, :len(s) - 1] = s[:-1], s[1:]
        patches[b, a:a + S], index[b, a:a + S], masked[b, a:a + S], select[b, a:a + S] = x, idx, m, sel
        block[b, a:a + S] = a + torch.searchsorted(local, local)        # a block's id = its first slot
        targets.append(tgt)
    y = y.masked_fill((y == IMG) | (index >= 0), -100)                  # <eoi> follows the image by rule
    return {"input_ids": ids, "embed_mask": index >= 0, "adapter_inputs": {"image": (patches, index, masked)},
            "mask": build_mask(block, block), "targets": {"lm": y, "image": (select, torch.cat(targets))}}


def _caption_row(cap: list[int], x: Tensor, offset: int) -> tuple:
    """A captioning row: the raster image (N, d) as one clean bidirectional block, nothing predicted."""
    N, d = x.shape
    no = torch.zeros(N, dtype=torch.bool)
    return cap, False, x, offset + torch.arange(N), no, torch.zeros(N, dtype=torch.long), no, x.new_zeros(0, d)


def next_scale_batch(batch: dict, gen_rows: Tensor, generator: torch.Generator | None = None,
                     patch: int = 4, up: str = "bilinear") -> dict:
    """A raster batch -> a next-scale batch (FlowAR/VAR). gen_rows (B,) bool: text-to-image rows get
    the 85-slot pyramid (slot targets: every scale's tokens, (85, d) per row); captioning rows keep
    the raster image. Returns input_ids (B, T), embed_mask (B, T), adapter_inputs {"image": (patches
    (B, T, d), index (B, T), masked (B, T))}, mask (B, 1, T, T), targets {"lm": (B, T), "image":
    (select (B, T), (M, d))}. ``generator`` is unused (the order is deterministic)."""
    caps, x = _unpack(batch, gen_rows)
    B, N, d = x.shape
    sides = scale_sides(int(round(N ** 0.5)))
    sizes = torch.tensor([s * s for s in sides])
    scales = pyramid(x, patch)
    inputs = torch.cat([x.new_zeros(B, 1, d)] + [upsample(s, patch, up) for s in scales[:-1]], 1)  # (B, 85, d)
    S = int(sizes.sum())
    masked, local = torch.arange(S) < 1, torch.repeat_interleave(torch.arange(len(sides)), sizes)
    rows = [(cap, True, inputs[b], torch.arange(S), masked, local, torch.ones(S, dtype=torch.bool),
             torch.cat([s[b] for s in scales])) if g else _caption_row(cap, x[b], S - N)
            for b, (cap, g) in enumerate(zip(caps, gen_rows.tolist()))]
    return _assemble(rows, d)


def next_cell_batch(batch: dict, gen_rows: Tensor, generator: torch.Generator | None = None,
                    patch: int = 4, cell: int = 2, t_max: float = 0.5) -> dict:
    """A raster batch -> a next-cell batch (xAR); same keys as ``next_scale_batch``. Text-to-image
    rows: 64 cell-major slots, block k = cell k-1 (block 0: mask vectors) predicting cell k (clean
    targets (64, d) per row); context cells noised with t ~ U(0, t_max) per cell (noisy context
    learning; ``t_max=0`` gives the clean batch that inference sees). ``patch`` is unused."""
    if not 0.0 <= t_max <= 1.0:
        raise ValueError(f"t_max is a noise level in [0, 1], got {t_max}")
    caps, x = _unpack(batch, gen_rows)
    B, N, d = x.shape
    perm, c2 = cell_order(int(round(N ** 0.5)), cell), cell * cell
    xc = x[:, perm]                                                               # (B, N, d) cell-major
    t = (torch.rand(B, N // c2 - 1, generator=generator) * t_max).repeat_interleave(c2, 1)[..., None]
    eps = torch.randn(B, N - c2, d, generator=generator)
    ctx = (1 - t) * xc[:, :N - c2] + t * eps                                      # (B, N - c2, d)
    inputs = torch.cat([x.new_zeros(B, c2, d), ctx], 1)
    masked, local = torch.arange(N) < c2, torch.arange(N) // c2
    rows = [(cap, True, inputs[b], perm, masked, local, torch.ones(N, dtype=torch.bool), xc[b]) if g
            else _caption_row(cap, x[b], 0) for b, (cap, g) in enumerate(zip(caps, gen_rows.tolist()))]
    return _assemble(rows, d)


# ---- sampling ------------------------------------------------------------------------------------
def _block(model, state: DecodeState, x: Tensor, index: Tensor, start: bool, R: int) -> Tensor:
    """Commit one block: x (B, n, d) inputs, index (n,), start: mask-vector block -> h (R, n, D)."""
    B, n, _ = x.shape
    raw = (x.repeat(R // B, 1, 1), index.to(x.device).expand(R, n),
           torch.full((R, n), start, dtype=torch.bool, device=x.device))
    return decode_block(model, model.adapters["image"](raw), state, commit=True)


def _head(model, h: Tensor, B: int, head_kw: dict, generator, guided: bool, cfg: float) -> Tensor:
    """h (R, n, D): B cond rows then B null rows -> tokens (B, n, d), guided by the null rows."""
    n = h.shape[1]
    z = h[:B].reshape(B * n, -1)
    x = model.heads["image"].sample(z, cfg=cfg if guided else 1.0, generator=generator,
                                    z_null=h[B:].reshape(B * n, -1) if guided else None, **head_kw)
    return x.view(B, n, -1)


@torch.no_grad()
def sample_next_scale(model, state: DecodeState, B: int, head_kw: dict, generator: torch.Generator | None,
                      guided: bool, ramp=None, patch: int = 4, up: str = "bilinear") -> Tensor:
    """After a prefilled ``<bos> caption <boi>`` (B cond rows, then B null rows when ``guided``),
    generate scale by scale, one committed block each -> finest tokens (B, N, d), raster.
    ``ramp(progress)``: the CFG scale at stage k, progress = k / (K - 1) (VAR's linear ramp)."""
    dev, d = state.positions.device, model.adapters["image"].token_dim
    sides, total = [], 0
    while total < model.adapters["image"].n_patches:
        sides.append(1 << len(sides))
        total += sides[-1] ** 2
    if total != model.adapters["image"].n_patches:
        raise ValueError("this image adapter is not sized for the next-scale order")
    R, off, x = B * (1 + guided), 0, torch.zeros(B, 1, d, device=dev)
    for k, s in enumerate(sides):
        if k:
            x = upsample(x, patch, up)
        h = _block(model, state, x, off + torch.arange(s * s), k == 0, R)
        x = _head(model, h, B, head_kw, generator, guided, ramp(k / max(1, len(sides) - 1)) if guided else 1.0)
        off += s * s
    return x


@torch.no_grad()
def sample_next_cell(model, state: DecodeState, B: int, head_kw: dict, generator: torch.Generator | None,
                     guided: bool, ramp=None, patch: int = 4, cell: int = 2, t_max: float | None = None) -> Tensor:
    """After a prefilled prompt (as ``sample_next_scale``), generate cell by cell: block k holds the
    clean cell k-1 (no context noise at inference, xAR) and yields cell k -> tokens (B, N, d),
    raster. ``ramp(progress)``: CFG scale for cell c, progress = c / (cells - 1). ``patch`` and
    ``t_max`` (training only) are accepted so that one options dict serves both calls."""
    dev, d, N = state.positions.device, model.adapters["image"].token_dim, model.adapters["image"].n_patches
    perm, c2 = cell_order(int(round(N ** 0.5)), cell).to(dev), cell * cell
    R, out, n_cells = B * (1 + guided), torch.zeros(B, N, d, device=dev), N // c2
    for c in range(n_cells):
        x = out[:, (c - 1) * c2:c * c2] if c else out[:, :c2]                   # block 0: mask vectors
        h = _block(model, state, x, perm[c * c2:(c + 1) * c2], c == 0, R)
        out[:, c * c2:(c + 1) * c2] = _head(model, h, B, head_kw, generator, guided,
                                            ramp(c / max(1, n_cells - 1)) if guided else 1.0)
    return out[:, perm.argsort()]


BATCHES = {"next_scale": next_scale_batch, "next_cell": next_cell_batch}
SAMPLERS = {"next_scale": sample_next_scale, "next_cell": sample_next_cell}

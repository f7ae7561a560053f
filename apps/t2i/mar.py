"""The MAR order for text-to-image: random-order masked generation, bidirectional over the image.

MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization") predicts a
random subset of patches at a time from all the patches known so far. On the shared backbone
that is one sequence with the raster layout of apps/t2i/model.py,

    <bos> a red circle <boi> [x1 .. x64] <eoi> <eos>

where the 64 image slots form one attention block (bidirectional inside, causal to the caption:
backbone/masks.py block ids), unknown slots hold the adapter's learned mask vector, and the
hidden state *at* each masked slot conditions the diffusion/flow head for that slot's patch.

Training masks a fraction r = cos(pi/2 * u), u ~ U(0, 1) of each text-to-image row's patches
(MaskGIT's cosine schedule, Chang et al. 2022, which MAR uses at inference) and scores only those.
Captioning rows keep every patch known, so the same checkpoint still reads images.
Sampling starts fully masked and reveals patches in a random order over K passes, leaving
floor(N cos(pi/2 k/K)) masked after pass k; the prompt sits in the KV cache and each pass
rewrites only the image block (backbone/generate.py ``decode_block``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from backbone.generate import DecodeState, decode_block
from backbone.masks import build_mask


def mask_image_rows(batch: dict, gen_rows: Tensor, generator: torch.Generator) -> dict:
    """Turn a raster batch (apps/t2i/model.py ``build_batch``) into a masked-order batch, in place.

    gen_rows (B,) bool: text-to-image rows, which get a cosine-distributed share of masked patches
    (at least one); captioning rows keep every patch. Adds the (B, 1, T, T) attention mask and the
    adapter's masked flags, and moves the image targets to the masked slots themselves."""
    ids, is_patch = batch["input_ids"], batch["embed_mask"]
    B, T = ids.shape
    patches, index = batch["adapter_inputs"]["image"][:2]
    N = int(is_patch[0].sum())
    u = torch.rand(B, generator=generator)
    n_mask = torch.ceil(N * torch.cos(math.pi / 2 * u)).clamp(1, N).long() * gen_rows.long()   # (B,)
    rank = torch.rand(B, N, generator=generator).argsort(1).argsort(1)        # a random order per row
    masked_img = rank < n_mask[:, None]                                                       # (B, N)
    masked = torch.zeros(B, T, dtype=torch.bool)
    masked[is_patch] = masked_img.reshape(-1)
    block = torch.arange(T).expand(B, T).clone()
    first = is_patch.long().argmax(1)                                   # the first image slot of each row
    block = torch.where(is_patch, first[:, None], block)                # one block: bidirectional image
    lm = batch["targets"]["lm"].masked_fill(is_patch, -100)             # <eoi> follows the block by rule
    batch.update({"mask": build_mask(block, block), "adapter_inputs": {"image": (patches, index, masked)}})
    batch["targets"] = {"lm": lm, "image": (masked, patches[masked])}
    return batch


def _embed(model, tokens: Tensor, known: Tensor) -> Tensor:
    """tokens (B, N, d), known (B, N) bool -> the image block's input embeddings (B, N, D)."""
    B, N, _ = tokens.shape
    index = torch.arange(N, device=tokens.device).expand(B, N)
    return model.adapters["image"]((tokens, index, ~known))


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


@torch.no_grad()
def sample_block(model, state: DecodeState, B: int, N: int, passes: int, head_kw: dict,
                 generator: torch.Generator, guided: bool, ramp, commit: bool = True) -> Tensor:
    """Generate one image block after a prefilled prompt. The state's rows are B cond rows, then
    (when ``guided``) B null rows. Returns patches (B, N, d). With ``commit`` a last pass writes
    the finished block into the cache so that text can follow. ``ramp(progress)`` gives the CFG scale (MAR ramps it with the
    share of revealed patches)."""
    head = model.heads["image"]
    dev = state.positions.device
    d = model.adapters["image"].token_dim
    R = B * (1 + guided)
    tokens = torch.zeros(B, N, d, device=dev)
    known = torch.zeros(B, N, dtype=torch.bool, device=dev)
    order = torch.rand(B, N, generator=generator, device=dev).argsort(1)       # (B, N) reveal order
    left = N
    for nxt in masked_schedule(N, passes):
        h = decode_block(model, _embed(model, tokens.repeat(R // B, 1, 1), known.repeat(R // B, 1)), state)
        pick = order[:, N - left:N - nxt]                                        # (B, m) revealed now
        m = pick.shape[1]
        z = h.gather(1, pick.repeat(R // B, 1)[..., None].expand(-1, -1, h.shape[-1]))         # (R, m, D)
        x = head.sample(z[:B].reshape(B * m, -1), cfg=ramp((N - nxt) / N) if guided else 1.0,
                        generator=generator, z_null=z[B:].reshape(B * m, -1) if guided else None,
                        **head_kw).view(B, m, d)
        tokens.scatter_(1, pick[..., None].expand(-1, -1, d), x)
        known.scatter_(1, pick, True)
        left = nxt
    if commit:
        decode_block(model, _embed(model, tokens.repeat(R // B, 1, 1), known.repeat(R // B, 1)), state, commit=True)
    return tokens

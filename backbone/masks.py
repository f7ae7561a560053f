"""One attention-mask builder for every pattern OmniAR uses.

Every pattern is expressed with *block ids*: a non-decreasing integer per position.
A query may see a key iff ``block[key] <= block[query]`` (and the key is not padding).

- causal:        block[i] = i
- prefix-LM:     block[i] = 0 for i < P, else i - P + 1   (bidirectional prefix, causal after;
                 VALL-E text prompt, the "non-causal decoder" of Wang et al. 2022)
- block-causal:  block[i] = index of the block holding i   (bidirectional inside a block,
                 causal across blocks: FlowAR scales, xAR cells)

Masks are boolean, ``True`` = may attend, shaped ``(B, 1, Tq, Tk)`` for
``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def causal_block_ids(T: int, device=None) -> Tensor:
    """(T,) block ids of a plain causal mask."""
    return torch.arange(T, device=device)


def prefix_block_ids(T: int, prefix_len: Tensor | int, device=None) -> Tensor:
    """Block ids for a prefix-LM. prefix_len: int or (B,) -> (T,) or (B, T)."""
    i = torch.arange(T, device=device)
    p = torch.as_tensor(prefix_len, device=device)
    if p.dim() == 1:
        i = i.unsqueeze(0)
        p = p.unsqueeze(1)
    return torch.where(i < p, torch.zeros_like(i), i - p + 1)


def blockwise_ids(block_sizes: list[int], device=None) -> Tensor:
    """Block ids for consecutive blocks of the given sizes, e.g. scales 1, 4, 16 -> (21,)."""
    return torch.repeat_interleave(torch.arange(len(block_sizes), device=device),
                                   torch.as_tensor(block_sizes, device=device))


def build_mask(block_q: Tensor, block_k: Tensor, key_valid: Tensor | None = None,
               q_slots: Tensor | None = None) -> Tensor:
    """Build the boolean attention mask.

    Args:
        block_q: (B, Tq) or (Tq,) block ids of the queries.
        block_k: (B, Tk) or (Tk,) block ids of the keys.
        key_valid: optional (B, Tk) bool, False for padding keys.
        q_slots: optional (Tq,) key index of each query. A query always sees itself, so a
            padding query never gets an all-False row (which would make SDPA return NaN).
    Returns:
        (B, 1, Tq, Tk) bool mask (B = 1 if nothing is batched).
    """
    if block_q.dim() == 1:
        block_q = block_q.unsqueeze(0)
    if block_k.dim() == 1:
        block_k = block_k.unsqueeze(0)
    m = block_k[:, None, :] <= block_q[:, :, None]  # (B, Tq, Tk)
    if key_valid is not None:
        m = m & key_valid[:, None, :].bool()
    if q_slots is not None:
        Tk = block_k.shape[-1]
        m = m | (torch.arange(Tk, device=m.device)[None, None, :] == q_slots[None, :, None])
    return m.unsqueeze(1)


@dataclass
class MaskSpec:
    """What a sequence says about attention; the backbone turns it into a mask.

    Give at most one of ``prefix_len`` / ``block_ids``; neither means causal.
    ``attention_mask`` (B, T) marks real tokens (1) and padding (0), HF-style.
    """
    prefix_len: Tensor | int | None = None
    block_ids: Tensor | None = None
    attention_mask: Tensor | None = None

    def block_ids_for(self, T: int, device=None) -> Tensor:
        """(T,) or (B, T) block ids for a sequence of length T."""
        if self.block_ids is not None:
            return self.block_ids.to(device)
        if self.prefix_len is not None:
            return prefix_block_ids(T, self.prefix_len, device)
        return causal_block_ids(T, device)

    def is_plain_causal(self) -> bool:
        return self.prefix_len is None and self.block_ids is None and self.attention_mask is None

    def build(self, T: int, device=None) -> Tensor | None:
        """(B, 1, T, T) bool mask, or None when plain causal (SDPA's fast is_causal path)."""
        if self.is_plain_causal():
            return None
        b = self.block_ids_for(T, device)
        valid = None if self.attention_mask is None else self.attention_mask.to(device).bool()
        return build_mask(b, b, valid, torch.arange(T, device=device))

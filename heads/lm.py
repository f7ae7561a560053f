"""LM head: logits over a vocabulary. Shared by text, codec codes, prosody bins, CIF tokens
and Chronos-style value bins. It sees only hidden states."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone.sampling import SamplingParams, sample_from_logits


class LMHead(nn.Module):
    """Linear map (D -> V). ``tie=True`` shares the weight with the backbone's token
    embedding (Press & Wolf 2017); the container does the tying after construction."""

    def __init__(self, dim: int, vocab_size: int, tie: bool = True, bias: bool = False):
        super().__init__()
        self.tie, self.vocab_size = tie, vocab_size
        self.proj = nn.Linear(dim, vocab_size, bias=bias)
        nn.init.normal_(self.proj.weight, std=0.02)
        if bias:
            nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        """h (..., D) -> logits (..., V)."""
        return self.proj(h)

    def loss(self, h: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy. h (N, D) or (B, T, D); target (N,) or (B, T), ignore_index masked."""
        logits = self(h)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                               ignore_index=ignore_index)

    @torch.no_grad()
    def sample(self, h: Tensor, params: SamplingParams | None = None,
               generator: torch.Generator | None = None, seen: Tensor | None = None) -> Tensor:
        """h (B, D) -> next token ids (B,). ``seen`` (B, V) bool for the repetition penalty."""
        return sample_from_logits(self(h), params or SamplingParams(), generator, seen)

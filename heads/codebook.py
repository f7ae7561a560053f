"""Codebook head for VALL-E's non-autoregressive stage: logits over one codec codebook, chosen by
the level being predicted (levels 1..n_levels; Wang et al. 2023, Sec. 4.2.2 — one output layer
per codebook). It sees only hidden states."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CodebookHead(nn.Module):
    """Linear map (D -> n_levels * bins), read one level's ``bins`` logits at a time."""

    def __init__(self, dim: int, n_levels: int, bins: int):
        super().__init__()
        self.n_levels, self.bins = n_levels, bins
        self.proj = nn.Linear(dim, n_levels * bins, bias=False)
        nn.init.normal_(self.proj.weight, std=0.02)

    def logits(self, h: Tensor, level: int | Tensor) -> Tensor:
        """h (N, D), level 1..n_levels (int or (N,)) -> logits (N, bins)."""
        w = self.proj.weight.view(self.n_levels, self.bins, -1)
        if isinstance(level, int):
            if not 1 <= level <= self.n_levels:
                raise ValueError(f"level must be in 1..{self.n_levels}, got {level}")
            return h @ w[level - 1].T
        full = self.proj(h).view(-1, self.n_levels, self.bins)                  # (N, n_levels, bins)
        return full[torch.arange(h.shape[0], device=h.device), level - 1]

    def loss(self, h: Tensor, target: Tensor) -> Tensor:
        """h (N, D); target (N,) = (level - 1) * bins + code -> mean cross-entropy."""
        level, code = target // self.bins + 1, target % self.bins
        return F.cross_entropy(self.logits(h, level).float(), code)

    @torch.no_grad()
    def sample(self, h: Tensor, level: int, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """h (N, D) -> codes (N,) of ``level``; greedy at temperature 0 (as VALL-E's NAR)."""
        logits = self.logits(h, level).float()
        if temperature <= 0:
            return logits.argmax(-1)
        return torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]

"""Layer skipping while decoding: an early-exit schedule in the spirit of SkipDecode, and FFN-SkipLLM.

  * ``mode="early_exit"``: every decoded token leaves the network after its first
    ``n_layers(t)`` layers (then the final norm and the head), a budget that falls linearly from
    all layers to ``min_layers`` over the generation. The schedule is SkipDecode's (Del Corro et
    al. 2023): one budget per step for the whole batch that never rises, so every later token
    only attends to layers whose keys/values the earlier tokens did compute and the KV cache
    stays valid without any copying. What differs: SkipDecode spends the budget on the TOP
    layers, bypassing the lower ones (the layers that feed the head always run); this exits
    early instead, dropping the top layers, with no training for it.
  * ``mode="ffn"`` (FFN-SkipLLM, Jaiswal et al. 2024): attention always runs, so the cache is
    complete; FFN blocks are skipped where they barely turn the residual stream. The first
    ``warmup`` tokens run in full and measure cos(FFN input, FFN output) per layer; after that,
    the FFNs of layers whose mean similarity is above ``threshold`` are skipped (never the
    first ``keep_first`` or last ``keep_last`` layers, which the paper finds are not redundant).

Prefill always runs every layer. Both are inexact by design: benchmarks/decode_speed.py
reports their quality cost next to their speed-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerSkip:
    mode: str = "ffn"            # "ffn" | "early_exit"
    min_layers: int = 2          # early_exit: the last tokens run this many layers
    horizon: int | None = None   # early_exit: steps over which the schedule falls (default max_new_tokens)
    threshold: float = 0.97      # ffn: skip an FFN whose mean cos(in, out) is above this
    warmup: int = 8              # ffn: tokens decoded in full to measure the similarities
    keep_first: int = 1
    keep_last: int = 1
    skipped: frozenset = field(default_factory=frozenset)  # ffn: filled after the warm-up
    layer_sims: list = field(default_factory=list)         # ffn: mean cos(in, out) per layer, measured
    _sims: list = field(default_factory=list, repr=False)

    def validate(self, n_layer: int) -> "LayerSkip":
        if self.mode not in ("ffn", "early_exit"):
            raise ValueError(f"unknown layer-skip mode {self.mode!r}; choose 'ffn' or 'early_exit'")
        if not 1 <= self.min_layers <= n_layer:
            raise ValueError(f"min_layers must be in [1, {n_layer}], got {self.min_layers}")
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        return self

    def reset(self):
        self.skipped, self.layer_sims, self._sims = frozenset(), [], []

    def n_layers(self, step: int, n_layer: int, max_new: int) -> int:
        """SkipDecode's linear schedule, as an exit layer: n_layer at step 0, min_layers at the horizon."""
        horizon = max(1, (self.horizon or max_new) - 1)
        frac = min(1.0, step / horizon)
        return max(self.min_layers, round(n_layer - frac * (n_layer - self.min_layers)))

    def step_kwargs(self, step: int, n_layer: int, max_new: int) -> dict:
        """Backbone keyword arguments for decode step ``step`` (0 = the first decoded token)."""
        if self.mode == "early_exit":
            return {"n_layers": self.n_layers(step, n_layer, max_new)}
        if step < self.warmup:
            return {"mlp_sims": self._sims}
        if step == self.warmup and self._sims:
            sims = torch.stack([s.float().mean() for s in self._sims]).view(-1, n_layer).mean(0)  # (L,)
            self.skipped = frozenset(i for i in range(self.keep_first, n_layer - self.keep_last)
                                     if float(sims[i]) > self.threshold)
            self.layer_sims = sims.tolist()
            self._sims = []
        return {"skip_mlp": self.skipped}

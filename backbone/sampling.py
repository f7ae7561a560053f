"""Sampling utilities shared by every discrete head: logits processing and the categorical draw.

The draw is done in float64: Zheng et al. (2024, "Masked diffusion models are secretly
time-agnostic masked models and exploit inaccurate categorical sampling") show that
float32 Gumbel sampling truncates the noise tail and silently lowers the temperature.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    penalty_alpha: float = 0.0   # > 0: contrastive search over top_k candidates (Su et al. 2022)
    max_new_tokens: int = 100
    stop_tokens: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None

    MAX_NEW_TOKENS_LIMIT = 100_000   # a stated bound on one request's work (about 5 min for the shipped char model)

    def validate(self) -> "SamplingParams":
        """Raise ValueError with a clear message on absurd settings."""
        def bad(msg):
            raise ValueError(msg)
        if not (0 <= self.temperature < float("inf")):  # also rejects NaN
            bad(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            bad(f"top_k must be >= 1 or unset, got {self.top_k}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not (0 <= self.min_p < 1):
            bad(f"min_p must be in [0, 1), got {self.min_p}")
        if not (self.repetition_penalty > 0):
            bad(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not (0 <= self.penalty_alpha <= 1):
            bad(f"penalty_alpha must be in [0, 1], got {self.penalty_alpha}")
        if self.penalty_alpha > 0 and not self.top_k:
            bad("contrastive search (penalty_alpha > 0) needs top_k, the number of candidates (e.g. 4)")
        if not (1 <= self.max_new_tokens <= self.MAX_NEW_TOKENS_LIMIT):
            bad(f"max_new_tokens must be in [1, {self.MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}")
        return self


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty (Keskar et al. 2019). logits (B, V); seen (B, V) bool."""
    if penalty == 1.0:
        return logits
    pen = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pen, logits)


def process_logits(logits: Tensor, p: SamplingParams) -> Tensor:
    """Temperature, top-k, top-p, min-p on (B, V) logits; returns float64 logits (-inf = banned)."""
    logits = logits.double() / max(p.temperature, 1e-8)
    if p.top_k is not None and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.min_p is not None and p.min_p > 0:
        probs = logits.softmax(-1)
        thresh = p.min_p * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < thresh, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


def sample_from_logits(logits: Tensor, p: SamplingParams, generator: torch.Generator | None = None,
                       seen: Tensor | None = None) -> Tensor:
    """Draw next tokens. logits (B, V) -> (B,) long. Greedy when temperature == 0."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
    if p.temperature == 0:
        return logits.argmax(-1)
    probs = process_logits(logits, p).softmax(-1)  # float64
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_rows(logits: Tensor, params: list[SamplingParams], generators: list, seen: list) -> Tensor:
    """Draw one token per row, each row with its own settings, generator and seen-set, exactly as
    ``sample_from_logits`` would draw it alone (continuous batching, backbone/batching.py).
    logits (R, V); params, generators, seen: one entry per row -> (R,) long.

    Rows with equal settings are processed together. The draw itself stays per row: torch's
    ``multinomial(p, 1, generator=g)`` is ``argmax(p / q)`` with ``q = empty_like(p).exponential_(1,
    generator=g)`` (the exponential race), so drawing each row's q from its own generator gives the
    token the row gets alone (tests/backbone/test_sampling.py holds the two equal)."""
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        key = (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, seen[i] is not None)
        groups.setdefault(key, []).append(i)
    for rows in groups.values():
        p = params[rows[0]]
        idx = torch.tensor(rows, device=logits.device)
        lg = logits[idx]
        if seen[rows[0]] is not None:
            lg = apply_repetition_penalty(lg, torch.cat([seen[i] for i in rows]), p.repetition_penalty)
        if p.temperature == 0:
            out[idx] = lg.argmax(-1)
            continue
        probs = process_logits(lg, p).softmax(-1)                                    # (r, V) float64
        q = torch.stack([torch.empty_like(probs[0]).exponential_(1, generator=generators[i]) for i in rows])
        out[idx] = (probs / q).argmax(-1)
    return out

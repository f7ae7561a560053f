"""Drafters for drafted decoding (backbone/speculative.py): who guesses the next γ tokens.

  * ``PromptLookupDrafter``: copy what followed the latest earlier occurrence of the current
    suffix (prompt-lookup decoding, Saxena 2023). No model at all.
  * ``NgramTableDrafter``: ADED's adaptive tri-gram table (Liu et al. 2024, "Adaptive Draft-
    Verification for Efficient LLM Decoding"), or any order with back-off: counts of the next
    token after each context, seeded from a corpus, updated with every accepted token.
  * ``ModelDrafter``: a small checkpoint with its own KV cache (Big Little Decoder, Kim et al.
    2023), with BiLD's fallback policy.
  * ``HeadDrafter``: a light draft head on the big model's own hidden states (Chimera, Zeng
    et al. 2024; EAGLE, Li et al. 2024), see ``heads/draft.py``.

A drafter is called once per round with a ``DraftContext`` and returns a ``Draft`` for every
row of the batch. Drafts may be shorter than γ (``lengths``); padded slots are never accepted.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from .masks import build_mask
from .sampling import SamplingParams, process_logits


@dataclass
class DraftContext:
    """What the verifier knows at the start of a round (rows left-padded to one layout)."""
    seq: Tensor               # (B, max_seq) token at every cache slot of every row
    slots: Tensor             # (B,) cache slot of each row's pending token (the newest one)
    positions: Tensor         # (B,) position id of the pending token
    key_valid: Tensor | None  # (B, max_seq) False at padding slots; None = no padding
    histories: list[list[int]]  # each row's real tokens (prompt + accepted), pending token last
    hidden: Tensor | None     # (B, D) the big model's state that predicted the pending token

    @property
    def pending(self) -> Tensor:
        """(B,) each row's newest token."""
        return self.seq.gather(1, self.slots[:, None])[:, 0]


@dataclass
class Draft:
    tokens: Tensor            # (B, g) long; entries past ``lengths`` are padding
    lengths: Tensor           # (B,) long
    q: Tensor | None = None   # (B, g, V) draft probabilities; None = deterministic (one-hot)

    @staticmethod
    def empty(B: int, device=None) -> "Draft":
        z = torch.zeros(B, 0, dtype=torch.long, device=device)
        return Draft(z, torch.zeros(B, dtype=torch.long, device=device))

    def padded(self, g: int) -> "Draft":
        """The same draft with exactly g token slots (zero padding; lengths cap what counts)."""
        B, w = self.tokens.shape
        if w >= g:
            return Draft(self.tokens[:, :g], self.lengths.clamp(max=g), None if self.q is None else self.q[:, :g])
        tokens = torch.cat([self.tokens, self.tokens.new_zeros(B, g - w)], 1)
        q = None
        if self.q is not None:  # padded slots: any distribution works, they are never accepted
            q = torch.cat([self.q, self.q.new_full((B, g - w, self.q.shape[-1]), 1.0 / self.q.shape[-1])], 1)
        return Draft(tokens, self.lengths, q)

    @staticmethod
    def from_lists(rows: list[list[int]], device=None) -> "Draft":
        g = max((len(r) for r in rows), default=0)
        t = torch.zeros(len(rows), g, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        return Draft(t.to(device), torch.tensor([len(r) for r in rows], device=device))


class _Stateless:
    def reset(self, batch: int, max_seq: int, device=None):
        pass

    def close(self):
        pass


class PromptLookupDrafter(_Stateless):
    """Propose the tokens that followed the latest earlier occurrence of the current suffix,
    trying suffix lengths ``max_n`` down to ``min_n``."""

    def __init__(self, max_n: int = 3, min_n: int = 1):
        self.max_n, self.min_n = max_n, min_n

    def lookup(self, history: list[int], gamma: int) -> list[int]:
        L = len(history)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            suffix = history[L - n:]
            for start in range(L - n - 1, -1, -1):  # latest earlier match first
                if history[start:start + n] == suffix:
                    return history[start + n:start + n + gamma]
        return []

    def __call__(self, ctx: DraftContext, gamma: int, params=None, gen=None) -> Draft:
        return Draft.from_lists([self.lookup(h, gamma) for h in ctx.histories], ctx.seq.device)


class NgramTableDrafter(_Stateless):
    """ADED-style adaptive n-gram table; drafts by chaining the most frequent next token.

    ``n=3`` is ADED's tri-gram table; larger n backs off through every shorter context down
    to the bi-gram, so long fixed phrases (CIF keys and their layout) are drafted whole.
    ``corpus``: token sequences that seed the table (ADED builds its matrix from a corpus).
    Each row's own tokens (prompt and accepted output) are counted with weight
    ``local_weight`` on top, so the table adapts to the text being written. Stops drafting when
    no context of any length has been seen, or (adaptive draft length) when the best next
    token holds less than ``min_share`` of its context's counts: an unsure guess costs a
    verification slot and is rarely kept.
    """

    def __init__(self, corpus: list[list[int]] | None = None, n: int = 3, local_weight: float = 4.0,
                 min_share: float = 0.0):
        if n < 2:
            raise ValueError(f"n must be >= 2 (2 = bi-gram), got {n}")
        self.n, self.local_weight, self.min_share = n, local_weight, min_share
        self.table: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for seq in corpus or []:
            self._count(self.table, seq, 0, 1.0)
        self._local: list[tuple[dict, int]] = []

    def _count(self, table, seq: list[int], start: int, w: float):
        """Count every context of length 1..n-1 before each token seq[i], i >= start."""
        for i in range(max(start, 1), len(seq)):
            for c in range(1, min(self.n - 1, i) + 1):
                table[tuple(seq[i - c:i])][seq[i]] += w

    def reset(self, batch: int, max_seq: int, device=None):
        self._local = [(defaultdict(Counter), 0) for _ in range(batch)]

    def _next(self, local: dict, ctx: list[int]) -> int | None:
        for c in range(min(self.n - 1, len(ctx)), 0, -1):  # longest seen context wins
            key = tuple(ctx[-c:])
            total: Counter = Counter()
            for counts, w in ((self.table.get(key), 1.0), (local.get(key), self.local_weight)):
                for t, v in (counts or {}).items():
                    total[t] += w * v
            if total:
                best = max(total, key=total.get)
                return best if total[best] >= self.min_share * sum(total.values()) else None
        return None

    def __call__(self, ctx: DraftContext, gamma: int, params=None, gen=None) -> Draft:
        rows = []
        for r, hist in enumerate(ctx.histories):
            local, counted = self._local[r]
            self._count(local, hist, counted, 1.0)   # adapt: count what was accepted since last round
            self._local[r] = (local, len(hist))
            tail, out = hist[-(self.n - 1):], []
            for _ in range(gamma):
                t = self._next(local, tail)
                if t is None:
                    break
                out.append(t)
                tail = (tail + [t])[-(self.n - 1):]
            rows.append(out)
        return Draft.from_lists(rows, ctx.seq.device)


class ModelDrafter:
    """A small model drafts with its own KV cache, laid out slot for slot like the big one's.

    fallback: BiLD's fallback policy. A row stops drafting as soon as the small model's largest
        probability falls below this, and the big model takes over (None = always γ tokens).
    Rolling back: the tokens written into the small cache are remembered per row; each round
    re-feeds every row from the first slot where they differ from the accepted sequence.
    """

    def __init__(self, model, head: str = "lm", fallback: float | None = None):
        self.model, self.head, self.fallback = model, head, fallback
        self.written: Tensor | None = None  # (B, max_seq) tokens whose keys/values are in the cache

    def reset(self, batch: int, max_seq: int, device=None):
        if max_seq > self.model.args.block_size:
            raise ValueError(f"the draft model's context ({self.model.args.block_size}) is shorter than {max_seq}")
        self.cache = self.model.backbone.new_cache(batch, max_seq, device=device)
        self.written = torch.full((batch, max_seq), -1, dtype=torch.long, device=device)

    def close(self):
        self.cache = None

    def _forward(self, tokens: Tensor, slots: Tensor, positions: Tensor, key_valid: Tensor | None) -> Tensor:
        """Write tokens (B, T) at per-row slots (B, T) with position ids (B, T); logits (B, T, V)."""
        S = int(slots.max()) + 1
        keys = torch.arange(S, device=tokens.device)
        mask = build_mask(slots, keys, None if key_valid is None else key_valid[:, :S])
        h = self.model.backbone(input_ids=tokens, positions=positions, mask=mask, input_pos=slots, cache=self.cache)
        self.written.scatter_(1, slots, tokens)
        return self.model.heads[self.head](h)

    def __call__(self, ctx: DraftContext, gamma: int, params: SamplingParams | None = None, gen=None) -> Draft:
        B, dev = ctx.seq.shape[0], ctx.seq.device
        s = ctx.slots
        # 1. roll back: per row, the first slot whose cached token is not the accepted one (at the
        #    latest the pending token). One window of L slots ending at the pending token covers
        #    every row; re-feeding a correct slot rewrites the same keys/values.
        S = int(s.max()) + 1
        ar = torch.arange(S, device=dev)
        stale = (self.written[:, :S] != ctx.seq[:, :S]) | (ar[None] >= s[:, None])
        first = stale.long().argmax(1)                                               # (B,)
        L = int((s + 1 - first).max())
        start = (s + 1 - L).clamp(min=0)
        win = start[:, None] + torch.arange(L, device=dev)                           # (B, L)
        pos = (ctx.positions[:, None] + win - s[:, None]).clamp(min=0)
        logits = self._forward(ctx.seq.gather(1, win), win, pos, ctx.key_valid)
        logits = logits[torch.arange(B, device=dev), s - start]                      # (B, V) after pending
        self.written.masked_fill_(torch.arange(self.written.shape[1], device=dev)[None] > s[:, None], -1)
        # 2. draft
        greedy = params is None or params.temperature == 0
        tokens, qs = [], []
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        for i in range(gamma):
            if greedy:
                q = logits.double().softmax(-1)
                t = q.argmax(-1)
            else:
                q = process_logits(logits, params).softmax(-1)
                t = torch.multinomial(q, 1, generator=gen)[:, 0]
            if self.fallback is not None:  # BiLD fallback: an unsure small model hands over
                alive &= q.max(-1).values >= self.fallback
            if not bool(alive.any()):
                break
            lengths += alive.long()
            tokens.append(t)
            qs.append(q)
            if i + 1 < gamma:
                logits = self._forward(t[:, None], (s + 1 + i)[:, None], ctx.positions[:, None] + 1 + i,
                                       ctx.key_valid)[:, -1]
        if not tokens:
            return Draft.empty(B, dev)
        return Draft(torch.stack(tokens, 1), lengths, None if greedy else torch.stack(qs, 1))


class HeadDrafter(_Stateless):
    """Drafts with the big model's own draft head (``model.heads[name]``, a ``heads.draft.DraftHead``)
    from the hidden state that predicted the pending token: no second model, no second cache.
    ``fallback``: BiLD's fallback policy applied to the head (stop when it is unsure)."""

    def __init__(self, model, name: str = "draft", fallback: float | None = None):
        if name not in model.heads:
            raise ValueError(f"the model has no {name!r} head; train one with `omniar train draft-head`")
        self.head, self.fallback = model.heads[name], fallback

    def __call__(self, ctx: DraftContext, gamma: int, params: SamplingParams | None = None, gen=None) -> Draft:
        if ctx.hidden is None or gamma == 0:
            return Draft.empty(ctx.seq.shape[0], ctx.seq.device)
        tokens, lengths, q = self.head.sample(ctx.hidden, token=ctx.pending, gamma=gamma, params=params,
                                              generator=gen, fallback=self.fallback)
        return Draft(tokens, lengths, q)



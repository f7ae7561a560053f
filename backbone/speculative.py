"""Draft-and-verify decoding on the one generation loop: exact for greedy and for sampling.

Each round feeds the pending token plus γ drafted tokens to the model in one forward over the
KV cache, then keeps the longest acceptable prefix (Leviathan et al. 2023, "Fast Inference from
Transformers via Speculative Decoding"; Chen et al. 2023):

  * greedy: a draft token is kept iff it equals the model's argmax, so the output is identical
    to plain greedy decoding;
  * sampling: draft token x (proposed with probability q(x)) is kept with probability
    min(1, p(x)/q(x)); at the first rejection the token is drawn from norm(max(0, p - q)).
    The output distribution is exactly the model's.

Rolling back is free: rejected slots in the cache are simply overwritten by the next round (the
attention of each round spans slots ≤ its own, see ``KVCache.update``).

Drafters return ``(tokens, q)`` where q is (len(tokens), V) draft probabilities, or None for
deterministic drafts (one-hot q):
  * ``NgramDrafter``: prompt lookup / ADED-style n-gram drafting from the text so far (no draft
    model; a draft token is kept with probability p(x)).
  * ``ModelDrafter``: a small checkpoint with its own KV cache drafts γ tokens (Big Little
    Decoder, Kim et al. 2023), with BiLD's fallback policy: stop drafting as soon as the small
    model's top probability falls below ``fallback`` and hand over to the big model.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from .generate import prefill
from .masks import build_mask
from .sampling import SamplingParams, process_logits


class NgramDrafter:
    """Propose the tokens that followed the latest earlier occurrence of the current suffix.

    Tries suffix lengths ``max_n`` down to ``min_n`` (prompt-lookup decoding, Saxena 2023; the
    n-gram table of ADED, Liu et al. 2024). Returns up to ``gamma`` tokens, possibly none.
    """

    def __init__(self, max_n: int = 3, min_n: int = 1):
        self.max_n, self.min_n = max_n, min_n

    def __call__(self, history: list[int], gamma: int, params: SamplingParams | None = None,
                 gen=None) -> tuple[list[int], None]:
        L = len(history)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            suffix = history[L - n:]
            for start in range(L - n - 1, -1, -1):  # latest earlier match first
                if history[start:start + n] == suffix:
                    return history[start + n:start + n + gamma], None
        return [], None

    def reset(self, device=None):
        pass

    def close(self):
        pass


class ModelDrafter:
    """A small model drafts with its own KV cache; its cache is rolled back to the accepted prefix.

    fallback: BiLD's fallback policy — stop the draft early when the small model's largest
    probability is below this (None = always draft gamma tokens).
    """

    def __init__(self, model, head: str = "lm", fallback: float | None = None):
        self.model, self.head, self.fallback = model, head, fallback
        self.seen: list[int] = []  # the tokens whose keys/values are in the draft cache, in order

    def reset(self, device=None):
        self.model.backbone.setup_cache(1, self.model.args.block_size, device=device)
        self.seen = []

    def close(self):
        self.model.backbone.clear_cache()

    def _forward(self, tokens: list[int]) -> Tensor:
        """Append tokens to the draft cache; return the logits after the last one (V,)."""
        bb, s = self.model.backbone, len(self.seen)
        dev = next(self.model.parameters()).device
        pos = torch.arange(s, s + len(tokens), device=dev)
        mask = build_mask(pos, torch.arange(s + len(tokens), device=dev)) if len(tokens) > 1 else None
        h = bb(input_ids=torch.tensor([tokens], device=dev), mask=mask, input_pos=pos)
        self.seen += tokens
        return self.model.heads[self.head](h[0, -1])

    def __call__(self, history: list[int], gamma: int, params: SamplingParams | None = None,
                 gen=None) -> tuple[list[int], Tensor | None]:
        # roll back to the longest prefix shared with the accepted history, then catch up
        k = 0
        while k < min(len(self.seen), len(history)) and self.seen[k] == history[k]:
            k += 1
        k = min(k, len(history) - 1)  # always re-feed at least the newest token
        self.seen = self.seen[:k]
        logits = self._forward(history[k:])
        tokens, qs = [], []
        greedy = params is None or params.temperature == 0
        for i in range(gamma):
            if greedy:
                q = logits.double().softmax(-1)
                t = int(q.argmax())
            else:
                q = process_logits(logits[None], params)[0].softmax(-1)
                t = int(torch.multinomial(q, 1, generator=gen))
            if self.fallback is not None and float(q.max()) < self.fallback:
                break  # BiLD fallback: the small model is unsure, let the big one speak
            tokens.append(t)
            qs.append(q)
            if i + 1 < gamma:
                logits = self._forward([t])
        return tokens, (None if greedy or not qs else torch.stack(qs))


@torch.no_grad()
def generate_drafted(model, prompt: list[int], params: SamplingParams, drafter=None, gamma: int = 4,
                     head: str = "lm", stats: dict | None = None) -> Iterator[int]:
    """Stream tokens for ONE prompt with draft-and-verify decoding. Yields ints.

    Same contract as ``generate`` for batch 1 (stop tokens end the stream, max_new_tokens,
    seeded sampling); the context must hold prompt + max_new_tokens + gamma (no sliding window).
    ``stats`` (optional dict) receives rounds / drafted / accepted counts.
    """
    params.validate()
    if params.repetition_penalty != 1.0:
        raise ValueError("repetition_penalty is not supported with drafting (it changes p as tokens are accepted)")
    drafter = drafter or NgramDrafter()
    block, n = model.args.block_size, params.max_new_tokens
    if len(prompt) + n + gamma > block:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({n}) + gamma ({gamma}) exceeds the context ({block})")
    device = next(model.parameters()).device
    lm, bb = model.heads[head], model.backbone
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    stats = stats if stats is not None else {}
    stats.update(rounds=0, drafted=0, accepted=0)
    history = list(prompt)
    drafter.reset(device)
    try:
        # 1. prefill all but the last prompt token: that one is "pending", fed with the first drafts
        if len(prompt) > 1:
            ids = torch.tensor([prompt[:-1]], device=device)
            _, state = prefill(model, ids, torch.ones_like(ids), block)
            slot = state.next_slot
        else:
            bb.setup_cache(1, block, device=device)
            slot = 0
        pending, produced = prompt[-1], 0
        while produced < n:
            # 2. draft up to gamma tokens, never past the token budget
            budget = max(0, min(gamma, n - produced - 1))
            draft, q = drafter(history, budget, params, gen) if budget else ([], None)
            # 3. verify pending + draft in one forward: logits[i] is the distribution after token i
            x = torch.tensor([[pending, *draft]], device=device)
            pos = torch.arange(slot, slot + x.shape[1], device=device)
            mask = build_mask(pos, torch.arange(slot + x.shape[1], device=device))
            logits = lm(bb(input_ids=x, mask=mask, input_pos=pos))[0]          # (1 + len(draft), V)
            # 4. accept the longest prefix, then one token from the model itself
            out, k = _accept(logits, draft, q, params, gen)
            stats["rounds"] += 1
            stats["drafted"] += len(draft)
            stats["accepted"] += k
            for t in out:
                history.append(t)
                produced += 1
                yield t
                if t in params.stop_tokens or produced >= n:
                    return
            slot += 1 + k  # pending + accepted drafts are now in the cache; the rest is overwritten later
            pending = out[-1]
    finally:
        bb.clear_cache()
        drafter.close()


def _accept(logits: Tensor, draft: list[int], q: Tensor | None, params: SamplingParams,
            gen) -> tuple[list[int], int]:
    """logits (1+γ, V), q (γ, V) or None (one-hot) -> (tokens to emit, number of accepted drafts)."""
    if params.temperature == 0:
        best = logits.argmax(-1).tolist()
        k = 0
        while k < len(draft) and draft[k] == best[k]:
            k += 1
        return draft[:k] + [best[k]], k
    probs = process_logits(logits, params).softmax(-1)                       # float64 (1+γ, V)
    for i, d in enumerate(draft):
        qd = 1.0 if q is None else q[i, d]
        # keep d with probability min(1, p(d) / q(d))
        if torch.rand((), generator=gen, dtype=torch.float64, device=probs.device) * qd < probs[i, d]:
            continue
        if q is None:
            residual = probs[i].clone()
            residual[d] = 0.0                                   # max(0, p - q) with one-hot q
        else:
            residual = (probs[i] - q[i].to(probs)).clamp(min=0)  # max(0, p - q)
        t = int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
        return draft[:i] + [t], i
    t = int(torch.multinomial(probs[len(draft)], 1, generator=gen))
    return draft + [t], len(draft)

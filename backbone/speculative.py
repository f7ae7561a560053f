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

Drafters:
  * ``NgramDrafter``: prompt lookup / ADED-style n-gram drafting from the text so far (no draft
    model; q is one-hot, so a draft token is kept with probability p(x)).
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

    def __call__(self, history: list[int], gamma: int) -> list[int]:
        L = len(history)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            suffix = history[L - n:]
            for start in range(L - n - 1, -1, -1):  # latest earlier match first
                if history[start:start + n] == suffix:
                    return history[start + n:start + n + gamma]
        return []


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
            draft = drafter(history, gamma)[: max(0, n - produced - 1)]
            # 3. verify pending + draft in one forward: logits[i] is the distribution after token i
            x = torch.tensor([[pending, *draft]], device=device)
            pos = torch.arange(slot, slot + x.shape[1], device=device)
            mask = build_mask(pos, torch.arange(slot + x.shape[1], device=device))
            logits = lm(bb(input_ids=x, mask=mask, input_pos=pos))[0]          # (1 + len(draft), V)
            # 4. accept the longest prefix, then one token from the model itself
            out, k = _accept(logits, draft, params, gen)
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


def _accept(logits: Tensor, draft: list[int], params: SamplingParams, gen) -> tuple[list[int], int]:
    """logits (1+γ, V) -> (tokens to emit, number of accepted drafts). One-hot q (deterministic drafts)."""
    if params.temperature == 0:
        best = logits.argmax(-1).tolist()
        k = 0
        while k < len(draft) and draft[k] == best[k]:
            k += 1
        return draft[:k] + [best[k]], k
    probs = process_logits(logits, params).softmax(-1)                       # float64 (1+γ, V)
    for i, d in enumerate(draft):
        # keep d with probability p(d) / q(d), q(d) = 1
        if torch.rand((), generator=gen, dtype=torch.float64, device=probs.device) < probs[i, d]:
            continue
        residual = probs[i].clone()
        residual[d] = 0.0  # norm(max(0, p - q)) with one-hot q
        t = int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
        return draft[:i] + [t], i
    t = int(torch.multinomial(probs[len(draft)], 1, generator=gen))
    return draft + [t], len(draft)

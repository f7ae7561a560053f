"""Draft-and-verify decoding on the one generation loop: exact for greedy and for sampling.

Each round feeds every row's pending token plus γ drafted tokens to the model in one forward
over the KV cache, then keeps the longest acceptable prefix (Leviathan et al. 2023, "Fast
Inference from Transformers via Speculative Decoding"; Chen et al. 2023):

  * greedy: a draft token is kept iff it equals the model's argmax, so the output is identical
    to plain greedy decoding;
  * sampling: draft token x (proposed with probability q(x)) is kept with probability
    min(1, p(x)/q(x)); at the first rejection the token is drawn from norm(max(0, p - q)).
    Every emitted token is distributed exactly as the model's p.

Batches with ragged prompts stay left-padded (as in ``generate``), and every row advances by
its own accepted prefix: the KV cache is written at per-row slots (``KVCache.update`` with
(B, T) positions) and each row's mask covers its own slots only. Rolling back a cache (ours
and a draft model's) is free: rejected slots are overwritten by the next round. Tokens are
queued per row and yielded as (B,) steps, like ``generate``.

Drafters (``drafters.py``) return ``Draft(tokens (B, g), lengths (B,), q (B, g, V) | None)``:
q is None for deterministic drafts (one-hot q).
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import torch
from torch import Tensor

from .drafters import Draft, DraftContext, PromptLookupDrafter
from .generate import left_pad, prefill
from .masks import build_mask
from .sampling import SamplingParams, process_logits


@torch.no_grad()
def generate_drafted(model, prompts: list[list[int]], params: SamplingParams, drafter=None,
                     gamma: int = 4, head: str = "lm", pad_id: int = 0, device=None,
                     rollback: float | None = None, stats: dict | None = None,
                     compile: bool = False) -> Iterator[Tensor]:
    """Stream tokens for a batch of prompts with draft-and-verify decoding. Yields (B,) tensors.

    Same contract as ``generate``: rows that hit a stop token yield -1 afterwards, the loop
    ends when every row stops or after ``max_new_tokens``; seeded sampling. The context must
    hold the longest prompt + max_new_tokens + gamma (no sliding window).

    rollback: BiLD's rollback policy (Kim et al. 2023), greedy only and NOT exact: a draft
        token is kept while the model's cross-entropy on it, -log p(x), is at most
        ``rollback`` nats, instead of only when it is the argmax.
    stats: optional dict; receives rounds / drafted / accepted / emitted counts.
    compile: verify with a static cache of block_size slots and a ``torch.compile``d forward;
        drafts are padded to exactly gamma so every round has the same shapes (one compile).
    """
    params.validate()
    if params.repetition_penalty != 1.0:
        raise ValueError("repetition_penalty is not supported with drafting (it changes p as tokens are accepted)")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if rollback is not None and params.temperature != 0:
        raise ValueError("the BiLD rollback policy is defined for greedy decoding (temperature 0)")
    drafter = drafter or PromptLookupDrafter()
    device = device or next(model.parameters()).device
    ids, am = left_pad(prompts, pad_id)
    ids, am = ids.to(device), am.to(device)
    (B, P), block, n = ids.shape, model.args.block_size, params.max_new_tokens
    if P + n + gamma > block:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({n}) + gamma ({gamma}) exceeds the context ({block})")
    max_seq = block if compile else P + n + gamma
    verify = compiled_verify(model) if compile else verify_step
    lm, bb = model.heads[head], model.backbone
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    stats = stats if stats is not None else {}
    stats.update(rounds=0, drafted=0, accepted=0, emitted=0)
    stop = set(params.stop_tokens)
    seq = torch.full((B, max_seq), pad_id, dtype=torch.long, device=device)  # row b's token at each slot
    seq[:, :P] = ids
    key_valid = None
    if bool((am == 0).any()):
        key_valid = torch.ones(B, max_seq, dtype=torch.bool, device=device)
        key_valid[:, :P] = am.bool()
    histories = [list(p) for p in prompts]
    queues = [deque() for _ in range(B)]   # tokens accepted but not yet yielded
    have = [0] * B                         # tokens accepted per row
    stopped = [False] * B                  # the row accepted a stop token: decode no further
    finished = [False] * B                 # the row yielded its stop token
    ar = torch.arange(max_seq, device=device)
    try:
        # 1. prefill all but the last column: the last prompt token is "pending", fed with the drafts
        hidden = None
        if P > 1:
            hidden, state = prefill(model, ids[:, :-1], am[:, :-1], max_seq, static=compile)
            cache = state.cache
        else:
            cache = bb.new_cache(B, max_seq, device=device, static=compile)
        slots = torch.full((B,), P - 1, dtype=torch.long, device=device)  # each row's pending slot
        positions = am[:, :-1].sum(1)                                      # its position id
        drafter.reset(B, max_seq, device)
        yielded = 0
        while yielded < n:
            need = [not stopped[b] and have[b] < n for b in range(B)]
            if any(need):
                # 2. draft up to gamma tokens per row, never past a row's token budget
                budget = torch.tensor([min(gamma, n - have[b] - 1) if need[b] else 0 for b in range(B)], device=device)
                g_max = int(budget.max())
                ctx = DraftContext(seq, slots, positions, key_valid, histories, hidden)
                d = drafter(ctx, g_max, params, gen) if g_max > 0 else Draft.empty(B, device)
                d.lengths = torch.minimum(d.lengths, budget)
                if compile:  # fixed shapes: always gamma draft slots (the padding is never accepted)
                    d = d.padded(gamma)
                g = d.tokens.shape[1]
                # 3. verify pending + drafts in one forward, each row at its own slots
                q_slots = slots[:, None] + ar[:1 + g]                                  # (B, 1+g)
                S = max_seq if compile else int(q_slots.max()) + 1
                mask = build_mask(q_slots, ar[:S], None if key_valid is None else key_valid[:, :S])
                x = torch.cat([seq.gather(1, slots[:, None]), d.tokens], 1)            # (B, 1+g)
                h, logits = verify(bb, lm, x, positions[:, None] + ar[:1 + g], q_slots, mask, cache)
                # 4. per row: accepted prefix length k and the model's own token at k
                out, k = accept(logits, d, params, gen, rollback)                     # (B, 1+g), (B,)
                hidden = h[torch.arange(B, device=device), k]       # the state that predicted the new pending token
                stats["rounds"] += 1
                for b in range(B):
                    if not need[b]:
                        continue
                    toks = out[b, :int(k[b]) + 1].tolist()
                    hit = next((i for i, t in enumerate(toks) if t in stop), None)
                    if hit is not None:
                        toks, stopped[b] = toks[:hit + 1], True
                    stats["drafted"] += int(d.lengths[b])
                    stats["accepted"] += int(k[b])
                    stats["emitted"] += len(toks)
                    queues[b].extend(toks)
                    histories[b].extend(toks)
                    have[b] += len(toks)
                    s0 = int(slots[b])
                    seq[b, s0 + 1:s0 + 1 + len(toks)] = torch.tensor(toks, device=device)
                    slots[b] += len(toks)
                    positions[b] += len(toks)
            # 5. yield every step that all unfinished rows can supply
            while yielded < n:
                live = [b for b in range(B) if not finished[b]]
                if not live or any(not queues[b] for b in live):
                    break
                step = [-1] * B
                for b in live:
                    step[b] = queues[b].popleft()
                    finished[b] = step[b] in stop
                yield torch.tensor(step, device=device)
                yielded += 1
            if all(finished):
                return
    finally:
        drafter.close()


def verify_step(bb, lm, x: Tensor, positions: Tensor, q_slots: Tensor, mask: Tensor, cache) -> tuple[Tensor, Tensor]:
    """x, positions, q_slots (B, 1+g) -> hidden states (B, 1+g, D) and logits (B, 1+g, V)."""
    h = bb(input_ids=x, positions=positions, mask=mask, input_pos=q_slots, cache=cache)
    return h, lm(h)


def compiled_verify(model):
    """``torch.compile`` of verify_step, built once per model (static cache, fixed gamma)."""
    fn = getattr(model, "_compiled_verify", None)
    if fn is None:
        fn = torch.compile(verify_step, dynamic=False)
        model._compiled_verify = fn
    return fn


def accept(logits: Tensor, d: Draft, params: SamplingParams, gen=None,
           rollback: float | None = None) -> tuple[Tensor, Tensor]:
    """logits (B, 1+g, V) over pending + drafts -> (out (B, 1+g), k (B,)).

    k[b] drafts of row b are accepted; out[b, :k] are those drafts and out[b, k] is the model's
    own token at k (the correction after a rejection, or the bonus token if all were kept).
    """
    B, T, V = logits.shape
    g = T - 1
    dev = logits.device
    in_draft = torch.arange(g, device=dev)[None, :] < d.lengths[:, None]            # (B, g)
    rows = torch.arange(B, device=dev)
    if params.temperature == 0:
        best = logits.argmax(-1)                                                   # (B, 1+g)
        if rollback is None:
            ok = d.tokens == best[:, :g]
        else:  # BiLD: keep a draft while the big model's cross-entropy on it is small
            logp = logits[:, :g].double().log_softmax(-1).gather(-1, d.tokens[..., None])[..., 0]
            ok = -logp <= rollback
        k = (ok & in_draft).long().cumprod(1).sum(1)                               # (B,)
        out = torch.cat([d.tokens, best[:, -1:]], 1).clone()
        out[rows, k] = best[rows, k]
        return out, k
    probs = process_logits(logits.reshape(B * T, V), params).softmax(-1).reshape(B, T, V)  # float64
    p_d = probs[:, :g].gather(-1, d.tokens[..., None])[..., 0]                      # (B, g)
    q_d = torch.ones_like(p_d) if d.q is None else d.q.to(probs).gather(-1, d.tokens[..., None])[..., 0]
    u = torch.rand((B, g), generator=gen, dtype=torch.float64, device=dev)
    ok = (u * q_d < p_d) & in_draft               # keep d with probability min(1, p(d) / q(d))
    k = ok.long().cumprod(1).sum(1)                                                # (B,)
    p_k = probs[rows, k]                                                           # (B, V)
    rejected = k < d.lengths
    kk = k.clamp(max=max(g - 1, 0))
    if g == 0:
        q_k = torch.zeros_like(p_k)
    elif d.q is None:                              # one-hot q at the rejected draft token
        q_k = torch.zeros_like(p_k).scatter(-1, d.tokens[rows, kk][:, None], 1.0)
    else:
        q_k = d.q[rows, kk].to(p_k)
    q_k = torch.where(rejected[:, None], q_k, torch.zeros_like(q_k))  # all kept: sample p itself
    residual = (p_k - q_k).clamp(min=0)                                            # max(0, p - q)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_k)
    t = torch.multinomial(residual / residual.sum(-1, keepdim=True), 1, generator=gen)[:, 0]
    out = torch.cat([d.tokens, t[:, None]], 1).clone()
    out[rows, k] = t
    return out, k

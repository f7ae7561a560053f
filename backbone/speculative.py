"""Draft-and-verify decoding on the one generation loop: exact for greedy and for sampling.

Each round feeds every row's pending token plus γ drafted tokens to the model in one forward
over the KV cache, then keeps the longest acceptable prefix (Leviathan et al. 2023, "Fast
Inference from Transformers via Speculative Decoding"; Chen et al. 2023):

  * greedy: a draft token is kept iff it equals the model's argmax, so the output is identical
    to plain greedy decoding;
  * sampling: draft token x (proposed with probability q(x)) is kept with probability
    min(1, p(x)/q(x)); at the first rejection the token is drawn from norm(max(0, p - q)).
    Every emitted token is distributed exactly as the model's p.

Batches with ragged prompts stay left-padded (as in ``generate``). All rows advance by the
same number of tokens per round: the smallest accepted prefix among the unfinished rows, plus
the token the model itself gives at that position. That token is exact for every row (an
accepted draft token is a valid sample from p), so the output is unchanged; rows that
accepted more simply re-draft. Because all rows share one cache slot index, rolling back a
cache (ours and a draft model's) is free: rejected slots are overwritten by the next round.

Drafters (``drafters.py``) return ``Draft(tokens (B, g), lengths (B,), q (B, g, V) | None)``:
q is None for deterministic drafts (one-hot q).
"""
from __future__ import annotations

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
                     rollback: float | None = None, stats: dict | None = None) -> Iterator[Tensor]:
    """Stream tokens for a batch of prompts with draft-and-verify decoding. Yields (B,) tensors.

    Same contract as ``generate``: rows that hit a stop token yield -1 afterwards, the loop
    ends when every row stops or after ``max_new_tokens``; seeded sampling. The context must
    hold the longest prompt + max_new_tokens + gamma (no sliding window).

    rollback: BiLD's rollback policy (Kim et al. 2023), greedy only and NOT exact: a draft
        token is kept while the model's cross-entropy on it, -log p(x), is at most
        ``rollback`` nats, instead of only when it is the argmax.
    stats: optional dict; receives rounds / drafted / accepted / emitted counts.
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
    max_seq = P + n + gamma
    lm, bb = model.heads[head], model.backbone
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    stats = stats if stats is not None else {}
    stats.update(rounds=0, drafted=0, accepted=0, emitted=0)
    stop = torch.as_tensor(params.stop_tokens or [-2], device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    seq = torch.full((B, max_seq), pad_id, dtype=torch.long, device=device)  # token at each cache slot
    seq[:, :P] = ids
    key_valid = None
    if bool((am == 0).any()):
        key_valid = torch.ones(B, max_seq, dtype=torch.bool, device=device)
        key_valid[:, :P] = am.bool()
    histories = [list(p) for p in prompts]
    try:
        # 1. prefill all but the last column: the last prompt token is "pending", fed with the drafts
        hidden = None
        if P > 1:
            hidden, _ = prefill(model, ids[:, :-1], am[:, :-1], max_seq)
        else:
            bb.setup_cache(B, max_seq, device=device)
        positions = am[:, :-1].sum(1)     # (B,) position id of the pending token
        slot, produced = P - 1, 0         # the pending token's cache slot
        drafter.reset(B, max_seq, device)
        while produced < n:
            # 2. draft up to gamma tokens per row, never past the token budget
            budget = max(0, min(gamma, n - produced - 1))
            ctx = DraftContext(seq[:, :slot + 1], positions, key_valid, histories, hidden, slot)
            d = drafter(ctx, budget, params, gen) if budget else Draft.empty(B, device)
            g = d.tokens.shape[1]
            # 3. verify pending + drafts in one forward: logits[:, i] is the distribution after token i
            x = torch.cat([seq[:, slot:slot + 1], d.tokens], 1)                    # (B, 1+g)
            slots = torch.arange(slot, slot + 1 + g, device=device)
            mask = build_mask(slots, torch.arange(slot + 1 + g, device=device),
                              None if key_valid is None else key_valid[:, :slot + 1 + g], slots)
            h = bb(input_ids=x, positions=positions[:, None] + torch.arange(1 + g, device=device),
                   mask=mask, input_pos=slots)                                     # (B, 1+g, D)
            logits = lm(h)                                                         # (B, 1+g, V)
            # 4. per row: accepted prefix length k and the token the model gives at k
            out, k = accept(logits, d, params, gen, rollback)                      # (B, 1+g), (B,)
            live = ~done
            kmin = int(k[live].min()) if bool(live.any()) else 0
            stats["rounds"] += 1
            stats["drafted"] += int(d.lengths[live].sum())
            stats["accepted"] += int(k[live].sum())
            # 5. every row emits out[:, :kmin+1] (exact, see the module docstring)
            for i in range(kmin + 1):
                tok = out[:, i]
                yield torch.where(done, torch.full_like(tok, -1), tok)
                for r in range(B):
                    if not done[r]:
                        histories[r].append(int(tok[r]))
                done |= torch.isin(tok, stop)
                produced += 1
                stats["emitted"] += int(live.sum())
                if bool(done.all()) or produced >= n:
                    return
            seq[:, slot + 1:slot + 2 + kmin] = out[:, :kmin + 1]
            hidden = h[:, kmin]          # the state that predicted the new pending token
            slot += kmin + 1
            positions = positions + kmin + 1
    finally:
        bb.clear_cache()
        drafter.close()


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

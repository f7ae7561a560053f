"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

At each step the k most likely tokens are candidates; each is scored

    (1 - α) · p(v | x_<t)  -  α · max_j cos(h_v, h_j)

where h_v is the backbone's last hidden state after appending v and h_j runs over the hidden
states of every earlier token (prompt included). The penalty keeps greedy-like quality while
avoiding the loops greedy decoding falls into. Deterministic; ``SamplingParams(penalty_alpha=α,
top_k=k)`` selects it in ``generate``, as in HF transformers.

All k candidates of all rows go through the model together: the cache holds B*k rows (each
row's prompt repeated k times); after a step, the chosen candidate's keys/values at the new
slot are copied to the other k-1 rows of its group, so the k copies stay identical.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .generate import left_pad
from .masks import build_mask
from .sampling import SamplingParams


@torch.no_grad()
def generate_contrastive(model, prompts: list[list[int]], params: SamplingParams, head: str = "lm",
                         pad_id: int = 0, device=None) -> Iterator[Tensor]:
    """Stream contrastive-search tokens for a batch of (ragged) prompts. Yields (B,) tensors
    (-1 after a row's stop token). Needs ``params.top_k`` >= 1 and ``0 <= penalty_alpha <= 1``;
    temperature and the other sampling settings are not used (the search is deterministic)."""
    params.validate()
    K, alpha = params.top_k, params.penalty_alpha
    if not K:
        raise ValueError("contrastive search needs top_k (the number of candidates), e.g. top_k=4")
    device = device or next(model.parameters()).device
    ids, am = left_pad(prompts, pad_id)
    ids, am = ids.to(device), am.to(device)
    (B, P), n = ids.shape, params.max_new_tokens
    if P + n > model.args.block_size:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({n}) exceeds the context ({model.args.block_size})")
    S = P + n
    bb, lm = model.backbone, model.heads[head]
    K = min(K, lm.vocab_size)
    key_valid = torch.ones(B, S, dtype=torch.bool, device=device)
    key_valid[:, :P] = am.bool()
    kv_rep = key_valid.repeat_interleave(K, 0)                                   # (B*K, S)
    stop = torch.as_tensor(params.stop_tokens or [-2], device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        # 1. prefill every prompt K times (one copy per candidate row)
        cache = bb.new_cache(B * K, S, device=device)
        slots = torch.arange(P, device=device)
        positions = (am.cumsum(-1) - 1).clamp(min=0)                              # (B, P)
        mask = build_mask(slots, slots, kv_rep[:, :P], slots)
        h = bb(input_ids=ids.repeat_interleave(K, 0), positions=positions.repeat_interleave(K, 0),
               mask=mask, input_pos=slots, cache=cache)[::K]                                  # (B, P, D)
        ctx = torch.zeros(B, S, h.shape[-1], dtype=h.dtype, device=device)     # hidden state of every token
        ctx[:, :P] = h
        last, pos = h[:, -1], positions[:, -1] + 1                                # (B, D), (B,)
        group = torch.arange(B, device=device) * K
        for t in range(n):
            slot = P + t
            # 2. the k most likely next tokens of every row
            probs = lm(last).float().softmax(-1)                                  # (B, V)
            top_p, top_i = probs.topk(K, dim=-1)                                  # (B, K)
            # 3. their hidden states, all B*K candidates in one step over the cache
            sl = torch.tensor([slot], device=device)
            m = kv_rep[:, None, None, :slot + 1]                                  # (B*K, 1, 1, slot+1)
            hc = bb(input_ids=top_i.reshape(B * K, 1), positions=pos.repeat_interleave(K)[:, None],
                    mask=m, input_pos=sl, cache=cache)[:, -1].view(B, K, -1)                   # (B, K, D)
            # 4. degeneration penalty: max cosine similarity to any earlier real token
            sim = F.cosine_similarity(hc[:, :, None, :].float(), ctx[:, None, :slot, :].float(), dim=-1)  # (B, K, slot)
            sim = sim.masked_fill(~key_valid[:, None, :slot], float("-inf")).max(-1).values
            best = ((1 - alpha) * top_p - alpha * sim).argmax(-1)                 # (B,)
            tok = top_i.gather(1, best[:, None])[:, 0]
            yield torch.where(done, torch.full_like(tok, -1), tok)
            done |= torch.isin(tok, stop)
            if bool(done.all()) or t + 1 == n:
                return
            # 5. keep the chosen candidate: copy its keys/values to its group's other rows
            src = (group + best).repeat_interleave(K)                             # (B*K,)
            for c in cache.layers:
                c.k_cache[:B * K, :, slot] = c.k_cache[src, :, slot]
                c.v_cache[:B * K, :, slot] = c.v_cache[src, :, slot]
            last = hc[torch.arange(B, device=device), best]                      # (B, D)
            ctx[:, slot] = last
            pos = pos + 1
    finally:
        pass

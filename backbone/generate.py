"""The one generation loop (gpt-fast style: prefill, decode_one_token, decode_n_tokens).

Batched prompts of different lengths are left-padded; an attention mask hides the padding
and per-row position ids start every prompt at 0, so a batched run gives the same tokens
as running each prompt alone. Later modalities plug in by choosing the head and the way a
sample becomes the next input embedding; the loop itself stays this one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .masks import build_mask
from .sampling import SamplingParams
from .skip import LayerSkip


@dataclass
class DecodeState:
    """What the loop carries between steps."""
    positions: Tensor        # (B,) next position id of each row
    key_valid: Tensor | None  # (B, max_seq) False at padding slots; None = no padding
    next_slot: int           # next cache slot to write (shared by all rows)
    static: bool = False     # static cache: masks span all max_seq slots
    step: int = 0            # tokens decoded since the prefill
    skip: LayerSkip | None = None  # early exit / FFN skipping (backbone/skip.py)
    max_new: int = 0         # the generation budget (the early-exit schedule spans it)


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """list of token lists -> ids (B, P) left-padded, attention_mask (B, P) (1 = real token)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    am = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.as_tensor(p, dtype=torch.long)
        am[i, P - len(p):] = 1
    return ids, am


@torch.no_grad()
def prefill(model, input_ids: Tensor, attention_mask: Tensor, max_seq: int,
            static: bool = False, embeds: Tensor | None = None,
            embed_mask: Tensor | None = None, block_ids: Tensor | None = None) -> tuple[Tensor, DecodeState]:
    """Run the prompt through the backbone, filling the cache.

    input_ids, attention_mask: (B, P). ``embeds`` (B, P, D) + ``embed_mask`` (B, P): continuous
    inputs (image patches) at the masked positions of a mixed prompt. ``block_ids`` (B, P) or
    (P,): the prompt's attention pattern as non-decreasing block ids (backbone/masks.py), e.g.
    an image block seen bidirectionally by a masked-order model; default causal.
    Returns the last hidden state (B, D) and the DecodeState.
    """
    B, P = input_ids.shape
    dev = input_ids.device
    bb = model.backbone
    bb.setup_cache(B, max_seq, device=dev, static=static)
    padded = bool((attention_mask == 0).any())
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)                  # (B, P)
    input_pos = torch.arange(P, device=dev)
    key_valid, mask = None, None
    bidirectional = model.args.prefix_lm  # non-causal decoder: the prompt is the prefix
    if padded:
        key_valid = torch.ones(B, max_seq, dtype=torch.bool, device=dev)
        key_valid[:, :P] = attention_mask.bool()
    if padded or static or bidirectional or block_ids is not None:
        S = max_seq if static else P
        block_q, block_k = input_pos, torch.arange(S, device=dev)
        if block_ids is not None:  # (static) unwritten slots get ids above every prompt id
            block_q = block_ids.to(dev)
            block_k = torch.cat([block_q, (block_k[P:] + int(block_q.max()) + 1).expand(*block_q.shape[:-1], -1)], -1)
        elif bidirectional:  # every prompt slot is block 0; (static) unwritten slots stay hidden
            block_q, block_k = torch.zeros_like(input_pos), (block_k >= P).long()
        mask = build_mask(block_q, block_k, None if key_valid is None else key_valid[:, :S], input_pos)  # (B, 1, P, S)
    h = bb(input_ids=input_ids, embeds=embeds, embed_mask=embed_mask, positions=positions, mask=mask,
           input_pos=input_pos)  # (B, P, D)
    state = DecodeState(positions=positions[:, -1] + 1, key_valid=key_valid, next_slot=P, static=static)
    return h[:, -1], state


def decode_step(bb, token: Tensor, positions: Tensor, slot: Tensor, mask: Tensor | None, **layer_kw) -> Tensor:
    """One backbone step over the cache: token, positions (B,), slot (1,) -> h (B, D).
    Pure tensor code with fixed shapes under a static cache: this is what ``torch.compile`` traces."""
    return bb(input_ids=token[:, None], positions=positions[:, None], mask=mask, input_pos=slot, **layer_kw)[:, -1]


def _step_mask(bb, state: DecodeState, slot: Tensor) -> Tensor | None:
    """The mask of one decoding step: (B|1, 1, 1, S) written slots up to this one, minus padding."""
    if state.static:
        cache = bb.layers[0].attn.kv_cache
        mask = (torch.arange(cache.max_seq, device=slot.device) <= slot)[None, None, None, :]
        return mask & state.key_valid[:, None, None, :] if state.key_valid is not None else mask
    if state.key_valid is not None:
        return state.key_valid[:, None, None, :state.next_slot + 1]           # (B, 1, 1, S)
    return None


def _advance(state: DecodeState):
    state.positions = state.positions + 1
    state.next_slot += 1
    state.step += 1


@torch.no_grad()
def decode_one_token(model, token: Tensor, state: DecodeState, step_fn=decode_step,
                     mask: Tensor | None = None) -> Tensor:
    """Advance one step. token (B,) -> last hidden state (B, D); updates ``state`` in place.
    ``mask`` (B|1, 1, 1, S) bool replaces the step's default mask over the S = next_slot + 1
    written slots (RALL-E's duration-guided window, modalities/speech.py)."""
    bb = model.backbone
    slot = torch.tensor([state.next_slot], device=token.device)
    mask = _step_mask(bb, state, slot) if mask is None else mask
    kw = {} if state.skip is None else state.skip.step_kwargs(state.step, len(bb.layers), state.max_new)
    h = step_fn(bb, token, state.positions, slot, mask, **kw)
    _advance(state)
    return h


@torch.no_grad()
def decode_one_embedding(model, embed: Tensor, state: DecodeState) -> Tensor:
    """Advance one step with a continuous input (a generated image patch, embedded by its
    adapter) instead of a token: embed (B, D) -> last hidden state (B, D)."""
    bb = model.backbone
    slot = torch.tensor([state.next_slot], device=embed.device)
    h = bb(embeds=embed[:, None], positions=state.positions[:, None], mask=_step_mask(bb, state, slot),
           input_pos=slot)[:, -1]
    _advance(state)
    return h


@torch.no_grad()
def decode_block(model, embeds: Tensor, state: DecodeState, commit: bool = False) -> Tensor:
    """Run a block of continuous inputs at the next N cache slots: the block sees everything
    before it and itself bidirectionally (MAR's masked image block). embeds (B, N, D) -> h (B, N, D).

    The state only advances with ``commit=True``: calling again rewrites the same slots, which is
    how a masked order refines its block over several passes before committing the final one."""
    bb = model.backbone
    B, N, _ = embeds.shape
    slots = torch.arange(state.next_slot, state.next_slot + N, device=embeds.device)        # (N,)
    S = bb.layers[0].attn.kv_cache.max_seq if state.static else state.next_slot + N
    if state.next_slot + N > bb.layers[0].attn.kv_cache.max_seq:
        raise ValueError(f"a block of {N} does not fit the cache after slot {state.next_slot}")
    keys = (torch.arange(S, device=embeds.device) < state.next_slot + N)[None, :]               # (1, S)
    if state.key_valid is not None:
        keys = keys & state.key_valid[:, :S]
    positions = state.positions[:, None] + torch.arange(N, device=embeds.device)             # (B, N)
    h = bb(embeds=embeds, positions=positions, mask=keys[:, None, None, :], input_pos=slots)
    if commit:
        state.positions = state.positions + N
        state.next_slot += N
        state.step += N
    return h


def compiled_decode_step(model):
    """``torch.compile`` of decode_step, built once per model (gpt-fast style; use with a static
    cache so the shapes never change). The first call per batch size pays the compile time."""
    fn = getattr(model, "_compiled_decode_step", None)
    if fn is None:
        fn = torch.compile(decode_step, dynamic=False)
        model._compiled_decode_step = fn
    return fn


@torch.no_grad()
def decode_n_tokens(model, h: Tensor, state: DecodeState, params: SamplingParams, n: int,
                    head: str = "lm", generator: torch.Generator | None = None,
                    seen: Tensor | None = None, step_fn=decode_step) -> Iterator[Tensor]:
    """Sample from ``h`` (B, D), feed the token back, repeat n times. Yields (B,) tokens."""
    lm = model.heads[head]
    for i in range(n):
        tok = lm.sample(h, params, generator, seen)                             # (B,)
        if seen is not None:
            seen[torch.arange(tok.shape[0]), tok] = True
        yield tok
        if i + 1 < n:
            h = decode_one_token(model, tok, state, step_fn)


@torch.no_grad()
def generate(model, prompts: list[list[int]], params: SamplingParams, head: str = "lm",
             pad_id: int = 0, device=None, compile: bool = False, drafter=None, gamma: int = 4,
             skip: LayerSkip | None = None, stats: dict | None = None) -> Iterator[Tensor]:
    """Stream tokens for a batch of prompts. Yields (B,) token tensors, one per step.

    Rows that hit a stop token keep yielding ``-1``; the loop ends when all rows stop or after
    ``params.max_new_tokens``. Raises ValueError for a prompt longer than the context.
    Past the context, the window slides as in nanoGPT: each next token is predicted from the
    last ``block_size`` tokens (re-encoded once the cache is full).
    ``compile=True`` decodes with a static cache of block_size slots and a ``torch.compile``d
    step (same tokens; pays a one-off compile per batch size, then runs faster).

    The other fast paths are options of this one call:
      * ``drafter`` (backbone/drafters.py) + ``gamma``: exact draft-and-verify decoding
        (backbone/speculative.py); ``stats`` receives the acceptance counts;
      * ``params.penalty_alpha > 0``: contrastive search over ``params.top_k`` candidates
        (backbone/contrastive.py);
      * ``skip``: early exit or FFN skipping per decoded token (backbone/skip.py; inexact).
    """
    params.validate()
    if model.args.prefix_lm and (params.penalty_alpha > 0 or drafter is not None):
        raise ValueError("a prefix-LM model decodes with plain sampling only (no drafting or contrastive search)")
    if params.penalty_alpha > 0 or drafter is not None:
        if skip is not None or (compile and drafter is None):
            raise ValueError("layer skipping applies to plain decoding, compile to plain and drafted decoding")
        if params.penalty_alpha > 0:
            if drafter is not None:
                raise ValueError("choose drafting or contrastive search, not both")
            from .contrastive import generate_contrastive
            yield from generate_contrastive(model, prompts, params, head, pad_id, device)
        else:
            from .speculative import generate_drafted
            yield from generate_drafted(model, prompts, params, drafter, gamma, head, pad_id, device, stats=stats,
                                        compile=compile)
        return
    if skip is not None:
        if compile:
            raise ValueError("layer skipping changes the graph every step; it does not combine with compile")
        skip.validate(model.args.n_layer).reset()
    device = device or next(model.parameters()).device
    ids, am = left_pad(prompts, pad_id)
    ids, am = ids.to(device), am.to(device)
    P, block, n = ids.shape[1], model.args.block_size, params.max_new_tokens
    if P > block:
        raise ValueError(f"prompt is {P} tokens but the model's context is {block}; shorten the prompt")
    cache_len = block if compile else min(block, P + n)
    history = [list(p) for p in prompts] if P + n > block else None  # only kept if the window must slide
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(ids.shape[0], model.heads[head].vocab_size, dtype=torch.bool, device=device)
        # mark only real prompt tokens; a scatter of am (False at padding) would race with the
        # True writes when pad_id also occurs in a prompt (duplicate-index order is undefined)
        real = am.bool()
        rows = torch.arange(ids.shape[0], device=device)[:, None].expand_as(ids)
        seen[rows[real], ids[real]] = True
    stop = torch.as_tensor(params.stop_tokens or [-2], device=device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    step_fn = compiled_decode_step(model) if compile else decode_step
    produced = 0
    try:
        h, state = prefill(model, ids, am, cache_len, static=compile)
        state.skip, state.max_new = skip, n
        while produced < n:
            chunk = min(n - produced, cache_len - state.next_slot + 1)  # samples before the cache is full
            for tok in decode_n_tokens(model, h, state, params, chunk, head, gen, seen, step_fn):
                out = torch.where(done, torch.full_like(tok, -1), tok)
                done |= torch.isin(tok, stop)
                produced += 1
                if history is not None:
                    for row, t in zip(history, tok.tolist()):
                        row.append(t)
                yield out
                if bool(done.all()):
                    return
            if produced < n:  # context full: re-encode the last block_size tokens of every row
                ids, am = left_pad([row[-block:] for row in history], pad_id)
                h, state = prefill(model, ids.to(device), am.to(device), cache_len, static=compile)
                state.skip, state.max_new, state.step = skip, n, produced
    finally:
        model.backbone.clear_cache()

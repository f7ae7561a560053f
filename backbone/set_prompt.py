"""Set-Based Prompting: order-independent prompts (McIlroy-Young et al. 2024,
"Order-Independent Language Models via Set-Based Prompting", arXiv:2406.06581).

A prompt is ``prefix``, then a *set* of ``options``, then ``suffix``. Every option starts
at the same position id (right after the prefix) and sees the prefix, itself causally, and
no other option (block-diagonal mask among options). The suffix starts at position
``len(prefix) + max(option lengths)`` and sees everything before it; generated tokens
continue from there. Positions and mask are symmetric under permuting the options, so
the output does not depend on their order (up to float rounding in attention sums).

Inference only; works for RoPE and learned-position (GPT-2 style) backbones alike, since
both read the position ids given to ``Transformer.forward``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .generate import DecodeState, decode_n_tokens
from .sampling import SamplingParams


def set_prompt_inputs(prefix: list[int], options: list[list[int]],
                      suffix: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Lay out a set prompt as one sequence of T = P + sum(len(o)) + S tokens.

    Returns ids (T,) long, positions (T,) long, mask (1, 1, T, T) bool (True = may attend).
    """
    if not isinstance(options, (list, tuple)) or len(options) == 0:
        raise ValueError("set-based prompting needs a non-empty list of options")
    for i, o in enumerate(options):
        if not isinstance(o, (list, tuple)) or len(o) == 0:
            raise ValueError(f"option {i} must be a non-empty list of token ids, got {o!r}")
    P, S, M = len(prefix), len(suffix), max(len(o) for o in options)
    ids = list(prefix) + [t for o in options for t in o] + list(suffix)
    pos = list(range(P)) + [P + j for o in options for j in range(len(o))] + list(range(P + M, P + M + S))
    group = [-1] * P + [i for i, o in enumerate(options) for _ in o] + [-1] * S  # option index, -1 outside
    T = len(ids)
    g = torch.tensor(group)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    other_option = (g[:, None] >= 0) & (g[None, :] >= 0) & (g[:, None] != g[None, :])  # (Tq, Tk)
    mask = (causal & ~other_option)[None, None]                                      # (1, 1, T, T)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(pos, dtype=torch.long), mask


@torch.no_grad()
def set_prefill(model, prefix: list[int], options: list[list[int]], suffix: list[int],
                max_seq: int) -> tuple[Tensor, DecodeState]:
    """Fill a fresh KV cache (1 row, ``max_seq`` slots) with the set prompt.

    Returns the last hidden state (1, D) and a DecodeState whose ``positions`` (1,) is the
    next *position id* (last position + 1), while ``next_slot`` is the next cache slot (T);
    the two differ whenever there are several options. Later decode steps attend to every
    cache slot, i.e. generated tokens see the whole prompt, as the suffix does.
    """
    ids, pos, mask = set_prompt_inputs(prefix, options, suffix)
    if len(options) > 1 and len(suffix) == 0:
        raise ValueError("with several options the suffix must be non-empty (e.g. 'Answer:'): otherwise the "
                         "next token is predicted from the last option's last token, which sees only that "
                         "option, so the output would depend on the options' order")
    T, block = ids.shape[0], model.args.block_size
    next_pos = len(prefix) + max(len(o) for o in options) + len(suffix)  # not pos[-1] + 1 (empty suffix)
    if T > block:
        raise ValueError(f"set prompt is {T} tokens (all options laid out) but the model's context "
                         f"is {block}; shorten the prompt or the options")
    if max_seq < T:
        raise ValueError(f"max_seq={max_seq} is smaller than the set prompt ({T} tokens)")
    dev = next(model.parameters()).device
    ids, pos, mask = ids.to(dev), pos.to(dev), mask.to(dev)
    bb = model.backbone
    cache = bb.new_cache(1, max_seq, device=dev)
    h = bb(input_ids=ids[None], positions=pos[None], mask=mask,
           input_pos=torch.arange(T, device=dev), cache=cache)                      # (1, T, D)
    return h[:, -1], DecodeState(positions=torch.tensor([next_pos], device=dev), key_valid=None, next_slot=T,
                                 cache=cache)


@torch.no_grad()
def set_logits(model, prefix: list[int], options: list[list[int]], suffix: list[int],
               head: str = "lm") -> Tensor:
    """Next-token logits (V,) after the set prompt (e.g. to score multiple-choice answers)."""
    T = set_prompt_inputs(prefix, options, suffix)[0].shape[0]  # validates the options
    try:
        h, _ = set_prefill(model, prefix, options, suffix, max_seq=T)
        return model.heads[head](h)[0]
    finally:
        pass


@torch.no_grad()
def generate_set(model, prefix: list[int], options: list[list[int]], suffix: list[int],
                 params: SamplingParams, head: str = "lm") -> list[int]:
    """Generate up to ``params.max_new_tokens`` tokens after a set prompt; returns their ids.

    Stops after the first token in ``params.stop_tokens`` (included in the result). Raises
    ValueError when the prompt or the generated positions would not fit in ``block_size``.
    """
    params.validate()
    ids, _, _ = set_prompt_inputs(prefix, options, suffix)
    T, n, block = ids.shape[0], params.max_new_tokens, model.args.block_size
    last = len(prefix) + max(len(o) for o in options) + len(suffix) - 1  # last position id
    if last + n > block:
        raise ValueError(f"set prompt ends at position {last}; {n} new tokens would run past the "
                         f"model's context of {block} positions; lower max_new_tokens or shorten the prompt")
    dev = next(model.parameters()).device
    gen = None if params.seed is None else torch.Generator(device=dev).manual_seed(params.seed)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(1, model.heads[head].vocab_size, dtype=torch.bool, device=dev)
        seen[0, ids.to(dev)] = True
    stop, out = set(params.stop_tokens), []
    try:
        h, state = set_prefill(model, prefix, options, suffix, max_seq=T + n - 1)
        state.max_new = n
        for tok in decode_n_tokens(model, h, state, params, n, head, gen, seen):
            out.append(int(tok[0]))
            if out[-1] in stop:
                break
    finally:
        pass
    return out

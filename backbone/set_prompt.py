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

from .generate import DecodeState, Prompt, TextSchedule, prefill_prompt, run
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


def set_prompt(model, prefix: list[int], options: list[list[int]], suffix: list[int],
               max_seq: int = 0) -> Prompt:
    """The set prompt as the generation loop's Prompt (1 row, on the model's device): its T laid-out
    tokens with their shared positions and mask; ``max_seq`` cache slots (default T).

    The state it prefills to continues at position id last + 1 while its next cache slot is T;
    the two differ whenever there are several options. Later decode steps attend to every cache
    slot, i.e. generated tokens see the whole prompt, as the suffix does."""
    ids, pos, mask = set_prompt_inputs(prefix, options, suffix)
    if len(options) > 1 and len(suffix) == 0:
        raise ValueError("with several options the suffix must be non-empty (e.g. 'Answer:'): otherwise the "
                         "next token is predicted from the last option's last token, which sees only that "
                         "option, so the output would depend on the options' order")
    T, block = ids.shape[0], model.args.block_size
    if T > block:
        raise ValueError(f"set prompt is {T} tokens (all options laid out) but the model's context "
                         f"is {block}; shorten the prompt or the options")
    if max_seq and max_seq < T:
        raise ValueError(f"max_seq={max_seq} is smaller than the set prompt ({T} tokens)")
    dev = next(model.parameters()).device
    return Prompt(ids[None].to(dev), max_seq=max_seq or T, positions=pos[None].to(dev), mask=mask.to(dev))


@torch.no_grad()
def set_prefill(model, prefix: list[int], options: list[list[int]], suffix: list[int],
                max_seq: int) -> tuple[Tensor, DecodeState]:
    """Prefill a fresh cache (1 row, ``max_seq`` slots) with the set prompt -> the last hidden
    state (1, D) and the DecodeState (``positions`` (1,) the next position id, ``next_slot`` T)."""
    h, state = prefill_prompt(model, set_prompt(model, prefix, options, suffix, max_seq))
    return h[:, -1], state


@torch.no_grad()
def set_logits(model, prefix: list[int], options: list[list[int]], suffix: list[int],
               head: str = "lm") -> Tensor:
    """Next-token logits (V,) after the set prompt (e.g. to score multiple-choice answers)."""
    h, _ = set_prefill(model, prefix, options, suffix, max_seq=0)
    return model.heads[head](h)[0]


class SetSchedule(TextSchedule):
    """Text after a set prompt: ``TextSchedule``'s sampling, stop tokens and repetition penalty over
    the set's own layout. Its cache holds the prompt and every new token, so it never slides (a
    re-encoded window would lose the set)."""

    def __init__(self, model, prefix: list[int], options: list[list[int]], suffix: list[int],
                 params: SamplingParams, head: str = "lm"):
        params.validate()
        ids, _, _ = set_prompt_inputs(prefix, options, suffix)
        T, n, block = ids.shape[0], params.max_new_tokens, model.args.block_size
        last = len(prefix) + max(len(o) for o in options) + len(suffix) - 1  # last position id
        if last + n > block:
            raise ValueError(f"set prompt ends at position {last}; {n} new tokens would run past the "
                             f"model's context of {block} positions; lower max_new_tokens or shorten the prompt")
        self.set = set_prompt(model, prefix, options, suffix, max_seq=T + n - 1)
        super().__init__(model, [ids.tolist()], params, head)
        self.history, self.cache_len = None, self.set.max_seq

    def prompt(self) -> Prompt:
        self.slot = self.set.ids.shape[1]
        return self.set


@torch.no_grad()
def generate_set(model, prefix: list[int], options: list[list[int]], suffix: list[int],
                 params: SamplingParams, head: str = "lm") -> list[int]:
    """Generate up to ``params.max_new_tokens`` tokens after a set prompt; returns their ids.

    Stops after the first token in ``params.stop_tokens`` (included in the result). Raises
    ValueError when the prompt or the generated positions would not fit in ``block_size``.
    """
    return [int(tok[0]) for tok in run(model, SetSchedule(model, prefix, options, suffix, params, head))]

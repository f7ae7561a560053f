"""Draft-and-verify decoding on the one generation loop: exact for greedy and for sampling.

Each round feeds every row's pending token plus γ drafted tokens to the model in one forward
over the KV cache, then keeps the longest acceptable prefix (Leviathan et al. 2023, "Fast
Inference from Transformers via Speculative Decoding"; Chen et al. 2023):

  * greedy: a draft token is kept iff it equals the model's argmax, so the output is identical
    to plain greedy decoding;
  * sampling: draft token x (proposed with probability q(x)) is kept with probability
    min(1, p(x)/q(x)); at the first rejection the token is drawn from norm(max(0, p - q)).
    Every emitted token is distributed exactly as the model's p.

``DraftSchedule`` is a schedule of backbone/generate.py: the prompt minus its last token is
prefilled; each round is a per-row feed (``Feed.slots``: rows stay left-padded, and every row
advances by its own accepted prefix) and one sample of the LM head with the draft
(``LMHead.sample(draft=...)`` -> ``accept``). Rolling back a cache (ours and a draft model's) is
free: rejected slots are overwritten by the next round. Tokens are queued per row and yielded as
(B,) steps, like ``generate``.

Drafters (``drafters.py``) return ``Draft(tokens (B, g), lengths (B,), q (B, g, V) | None)``:
q is None for deterministic drafts (one-hot q).
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import torch
from torch import Tensor

from .drafters import Draft, DraftContext, PromptLookupDrafter
from .generate import Feed, Prompt, Schedule, Step, left_pad, rows_step, run
from .sampling import SamplingParams, process_logits


class DraftSchedule(Schedule):
    """One drafted generation. Samples are (out (B, 1+g), k (B,)) per round (see ``accept``);
    ``ready()`` yields the (B,) steps that every unfinished row can supply so far.

    rollback: BiLD's rollback policy (Kim et al. 2023, "Speculative Decoding with Big Little
        Decoder"), greedy only and NOT exact: a draft token is kept while the model's
        cross-entropy on it, -log p(x), is at most ``rollback`` nats, instead of only when it is
        the argmax.
    stats: receives rounds / drafted / accepted / emitted counts.
    compile: verify with a static cache of block_size slots and a ``torch.compile``d forward;
        drafts are padded to exactly gamma so every round has the same shapes (one compile).
    """

    def __init__(self, model, prompts: list[list[int]], params: SamplingParams, drafter, gamma: int = 4,
                 head: str = "lm", pad_id: int = 0, device=None, rollback: float | None = None,
                 stats: dict | None = None, compile: bool = False):
        params.validate()
        if model.args.prefix_lm:
            raise ValueError("a prefix-LM model decodes with plain sampling only (no drafting or contrastive search)")
        if params.repetition_penalty != 1.0:
            raise ValueError("repetition_penalty is not supported with drafting (it changes p as tokens are accepted)")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if rollback is not None and params.temperature != 0:
            raise ValueError("the BiLD rollback policy is defined for greedy decoding (temperature 0)")
        self.device = device or next(model.parameters()).device
        ids, am = left_pad(prompts, pad_id)
        self.ids, self.am = ids.to(self.device), am.to(self.device)
        (B, P), block, n = ids.shape, model.args.block_size, params.max_new_tokens
        if P + n + gamma > block:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({n}) + gamma ({gamma}) exceeds the context ({block})")
        self.drafter, self.gamma, self.head, self.params, self.rollback = drafter, gamma, head, params, rollback
        self.compile, self.max_new = compile, n
        self.max_seq = block if compile else P + n + gamma
        self.step_fn = compiled_verify(model) if compile else None
        self.gen = torch.Generator(device=self.device).manual_seed(params.seed) if params.seed is not None else None
        self.stats = stats if stats is not None else {}
        self.stats.update(rounds=0, drafted=0, accepted=0, emitted=0)
        self.stop = set(params.stop_tokens)
        self.seq = torch.full((B, self.max_seq), pad_id, dtype=torch.long, device=self.device)  # row b's token per slot
        self.seq[:, :P] = self.ids
        self.key_valid = None
        if bool((am == 0).any()):
            self.key_valid = torch.ones(B, self.max_seq, dtype=torch.bool, device=self.device)
            self.key_valid[:, :P] = self.am.bool()
        self.histories = [list(p) for p in prompts]
        self.queues = [deque() for _ in range(B)]   # tokens accepted but not yet yielded
        self.have = [0] * B                         # tokens accepted per row
        self.stopped = [False] * B                  # the row accepted a stop token: decode no further
        self.finished = [False] * B                 # the row yielded its stop token
        self.yielded = 0
        self.slots = torch.full((B,), P - 1, dtype=torch.long, device=self.device)  # each row's pending slot
        self.positions = self.am[:, :-1].sum(1)                                      # its position id
        self.hidden: Tensor | None = None  # (B, D) the state that predicted each pending token
        self.h: Tensor | None = None       # (B, 1+g, D) the states of the round just verified
        self.draft: Draft | None = None
        self.need: list[bool] = []

    def prompt(self) -> Prompt:
        """All but the last column: each row's last prompt token is pending, fed with the drafts."""
        return Prompt(self.ids[:, :-1], self.am[:, :-1], self.max_seq, static=self.compile)

    def next(self, h: Tensor) -> Step | Feed | None:
        if self.draft is None:  # after the prefill: draft and verify the first round
            self.hidden = h[:, -1] if h.shape[1] else None
            return self._round()
        self.h = h
        return Step(self.head, h, {"params": self.params, "generator": self.gen, "draft": self.draft,
                                   "rollback": self.rollback})

    def feed(self, sample: tuple[Tensor, Tensor]) -> Feed | None:
        """Queue every row's accepted tokens (up to a stop token and the budget); next round."""
        out, k = sample
        B = out.shape[0]
        self.hidden = self.h[torch.arange(B, device=self.device), k]  # the state that predicted the new pending token
        self.stats["rounds"] += 1
        for b in range(B):
            if not self.need[b]:
                continue
            toks = out[b, :int(k[b]) + 1].tolist()
            hit = next((i for i, t in enumerate(toks) if t in self.stop), None)
            if hit is not None:
                toks, self.stopped[b] = toks[:hit + 1], True
            self.stats["drafted"] += int(self.draft.lengths[b])
            self.stats["accepted"] += int(k[b])
            self.stats["emitted"] += len(toks)
            self.queues[b].extend(toks)
            self.histories[b].extend(toks)
            self.have[b] += len(toks)
            s0 = int(self.slots[b])
            self.seq[b, s0 + 1:s0 + 1 + len(toks)] = torch.tensor(toks, device=self.device)
            self.slots[b] += len(toks)
            self.positions[b] += len(toks)
        return self._round()

    def _round(self) -> Feed | None:
        """Draft up to gamma tokens per row (never past a row's budget) -> the feed that verifies
        each row's pending token and drafts at its own slots; None once no row needs more."""
        B, n = self.seq.shape[0], self.max_new
        self.need = [not self.stopped[b] and self.have[b] < n for b in range(B)]
        if not any(self.need):
            return None
        budget = torch.tensor([min(self.gamma, n - self.have[b] - 1) if self.need[b] else 0 for b in range(B)],
                              device=self.device)
        g_max = int(budget.max())
        ctx = DraftContext(self.seq, self.slots, self.positions, self.key_valid, self.histories, self.hidden)
        d = self.drafter(ctx, g_max, self.params, self.gen) if g_max > 0 else Draft.empty(B, self.device)
        d.lengths = torch.minimum(d.lengths, budget)
        if self.compile:  # fixed shapes: always gamma draft slots (the padding is never accepted)
            d = d.padded(self.gamma)
        self.draft = d
        ar = torch.arange(1 + d.tokens.shape[1], device=self.device)
        x = torch.cat([ctx.pending[:, None], d.tokens], 1)                                 # (B, 1+g)
        return Feed(ids=x, slots=self.slots[:, None] + ar, positions=self.positions[:, None] + ar)

    def ready(self) -> Iterator[Tensor]:
        """Yield every (B,) step that all unfinished rows can supply (-1 for finished rows)."""
        while self.yielded < self.max_new:
            live = [b for b, f in enumerate(self.finished) if not f]
            if not live or any(not self.queues[b] for b in live):
                return
            step = [-1] * len(self.finished)
            for b in live:
                step[b] = self.queues[b].popleft()
                self.finished[b] = step[b] in self.stop
            yield torch.tensor(step, device=self.device)
            self.yielded += 1


@torch.no_grad()
def generate_drafted(model, prompts: list[list[int]], params: SamplingParams, drafter=None,
                     gamma: int = 4, head: str = "lm", pad_id: int = 0, device=None,
                     rollback: float | None = None, stats: dict | None = None,
                     compile: bool = False) -> Iterator[Tensor]:
    """Stream tokens for a batch of prompts with draft-and-verify decoding. Yields (B,) tensors.

    Same contract as ``generate``: rows that hit a stop token yield -1 afterwards, the loop
    ends when every row stops or after ``max_new_tokens``; seeded sampling. The context must
    hold the longest prompt + max_new_tokens + gamma (no sliding window). ``drafter`` defaults
    to prompt lookup; rollback / stats / compile: see ``DraftSchedule``.
    """
    drafter = drafter or PromptLookupDrafter()
    schedule = DraftSchedule(model, prompts, params, drafter, gamma, head, pad_id, device, rollback, stats, compile)
    drafter.reset(schedule.seq.shape[0], schedule.max_seq, schedule.device)
    try:
        for _ in run(model, schedule):
            yield from schedule.ready()
    finally:
        drafter.close()


def compiled_verify(model):
    """``torch.compile`` of ``rows_step``, built once per model (static cache, fixed gamma)."""
    fn = getattr(model, "_compiled_verify", None)
    if fn is None:
        fn = torch.compile(rows_step, dynamic=False)
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

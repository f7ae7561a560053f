"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

At each step the k most likely tokens are candidates; each is scored

    (1 - α) · p(v | x_<t)  -  α · max_j cos(h_v, h_j)

where h_v is the backbone's last hidden state after appending v and h_j runs over the hidden
states of every earlier token (prompt included). The penalty keeps greedy-like quality while
avoiding the loops greedy decoding falls into. Deterministic; ``SamplingParams(penalty_alpha=α,
top_k=k)`` selects it in ``generate``, as in HF transformers.

``ContrastiveSchedule`` runs on the one generation loop (backbone/generate.py): the generation's
cache holds B*k rows (each row's prompt repeated k times); the LM head's sample gives the k
candidates (``LMHead.sample(candidates=k)``), one feed runs all B*k of them, and the next feed
first copies each chosen candidate's keys/values at that slot to the other k-1 rows of its group
(``Feed.keep``), so the k copies stay identical.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .generate import Feed, Generation, Prompt, Schedule, Step, left_pad
from .sampling import SamplingParams


class ContrastiveSchedule(Schedule):
    """One contrastive search. Samples are the candidates (probabilities (B, k), ids (B, k));
    ``out`` holds the (B,) token chosen by the latest ``next`` (-1 after a row's stop token)."""

    def __init__(self, model, prompts: list[list[int]], params: SamplingParams, head: str = "lm",
                 pad_id: int = 0, device=None):
        params.validate()
        if model.args.prefix_lm:
            raise ValueError("a prefix-LM model decodes with plain sampling only (no drafting or contrastive search)")
        if not params.top_k:
            raise ValueError("contrastive search needs top_k (the number of candidates), e.g. top_k=4")
        self.device = device or next(model.parameters()).device
        ids, am = left_pad(prompts, pad_id)
        self.ids, self.am = ids.to(self.device), am.to(self.device)
        (B, P), n = ids.shape, params.max_new_tokens
        if P + n > model.args.block_size:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({n}) exceeds the context ({model.args.block_size})")
        self.head, self.alpha, self.max_new = head, params.penalty_alpha, n
        self.K = min(params.top_k, model.heads[head].vocab_size)
        self.key_valid = torch.ones(B, P + n, dtype=torch.bool, device=self.device)   # real tokens
        self.key_valid[:, :P] = self.am.bool()
        self.stop = torch.as_tensor(params.stop_tokens or [-2], device=self.device)
        self.done = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.group = torch.arange(B, device=self.device) * self.K   # first candidate row of each prompt
        self.ctx: Tensor | None = None   # (B, P + n, D) hidden state of every token so far
        self.last: Tensor | None = None  # (B, D) the state the next candidates come from
        self.cand: tuple[Tensor, Tensor] | None = None  # this step's candidates: probs, ids (B, K)
        self.keep: Tensor | None = None  # (B*K,) the chosen candidate row of each row's group
        self.t = 0
        self.out: Tensor | None = None

    def prompt(self) -> Prompt:
        """Every prompt K times: one copy per candidate row."""
        K = self.K
        return Prompt(self.ids.repeat_interleave(K, 0), self.am.repeat_interleave(K, 0), self.key_valid.shape[1])

    def next(self, h: Tensor) -> Step | None:
        B, K = self.done.shape[0], self.K
        if self.ctx is None:  # after the prefill: h (B*K, P, D), K identical copies per row
            h = h[::K]
            P = h.shape[1]
            self.ctx = h.new_zeros(B, self.key_valid.shape[1], h.shape[-1])
            self.ctx[:, :P] = h
            self.last = h[:, -1]
        else:                 # the candidates just run: h (B*K, 1, D)
            slot = self.ids.shape[1] + self.t
            hc = h[:, -1].view(B, K, -1)                                                 # (B, K, D)
            # degeneration penalty: max cosine similarity to any earlier real token
            sim = F.cosine_similarity(hc[:, :, None, :].float(), self.ctx[:, None, :slot, :].float(), dim=-1)
            sim = sim.masked_fill(~self.key_valid[:, None, :slot], float("-inf")).max(-1).values  # (B, K)
            top_p, top_i = self.cand
            best = ((1 - self.alpha) * top_p - self.alpha * sim).argmax(-1)                # (B,)
            tok = top_i.gather(1, best[:, None])[:, 0]
            self.out = torch.where(self.done, torch.full_like(tok, -1), tok)
            self.done |= torch.isin(tok, self.stop)
            self.t += 1
            if bool(self.done.all()) or self.t == self.max_new:
                return None
            self.keep = (self.group + best).repeat_interleave(K)  # the chosen candidate stays in every row
            self.last = hc[torch.arange(B, device=self.device), best]
            self.ctx[:, slot] = self.last
        return Step(self.head, self.last, {"candidates": K})

    def feed(self, cand: tuple[Tensor, Tensor]) -> Feed:
        """All B*K candidates in one step over the cache (after keeping last step's choices)."""
        self.cand = tuple(cand)
        return Feed(ids=self.cand[1].reshape(-1, 1), keep=self.keep)


@torch.no_grad()
def generate_contrastive(model, prompts: list[list[int]], params: SamplingParams, head: str = "lm",
                         pad_id: int = 0, device=None) -> Iterator[Tensor]:
    """Stream contrastive-search tokens for a batch of (ragged) prompts. Yields (B,) tensors
    (-1 after a row's stop token). Needs ``params.top_k`` >= 1 and ``0 <= penalty_alpha <= 1``;
    temperature and the other sampling settings are not used (the search is deterministic)."""
    schedule = ContrastiveSchedule(model, prompts, params, head, pad_id, device)
    gen = Generation(model, schedule)
    while True:  # a token is chosen when its candidates' states come back, one step after they are sampled
        more = gen.step() is not None
        if schedule.out is not None:
            yield schedule.out
            schedule.out = None
        if not more:
            return

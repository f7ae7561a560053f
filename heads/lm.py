"""LM head: logits over a vocabulary. Shared by text, codec codes, prosody bins, CIF tokens
and Chronos-style value bins. It sees only hidden states."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone.drafters import Draft
from backbone.sampling import SamplingParams, sample_from_logits, sample_rows
from backbone.speculative import accept


class LMHead(nn.Module):
    """Linear map (D -> V). ``tie=True`` shares the weight with the backbone's token
    embedding (Press & Wolf 2017): ``attach``, called by the container after construction."""

    def __init__(self, dim: int, vocab_size: int, tie: bool = True, bias: bool = False, emo: bool = False):
        super().__init__()
        self.tie, self.vocab_size, self.emo = tie, vocab_size, emo
        self.proj = nn.Linear(dim, vocab_size, bias=bias)
        nn.init.normal_(self.proj.weight, std=0.02)
        if bias:
            nn.init.zeros_(self.proj.bias)
        if emo:  # EMO's transport cost comes from a frozen copy of the (pretrained) output embeddings
            self.register_buffer("cost_embedding", torch.zeros(vocab_size, dim))

    def attach(self, model):
        """Take what this head shares with the model (backbone/container.py): the tied weight."""
        if self.tie:
            self.proj.weight = model.backbone.tok_embeddings.weight

    @torch.no_grad()
    def freeze_cost_embedding(self):
        """EMO: take the transport cost geometry from the current (pretrained) output weights."""
        self.cost_embedding.copy_(self.proj.weight.detach())

    def forward(self, h: Tensor) -> Tensor:
        """h (..., D) -> logits (..., V)."""
        return self.proj(h)

    def loss(self, h: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
        """Mean cross-entropy. h (N, D) or (B, T, D); target (N,) or (B, T), ignore_index masked."""
        logits = self(h)
        if not self.emo:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                   ignore_index=ignore_index)
        return self.emo_loss(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index)

    def emo_loss(self, logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
        """EMO (Ren et al. 2023, "EMO: Earth Mover Distance Optimization for Auto-Regressive
        Language Modeling"), mixed with cross-entropy as the paper fine-tunes.

        The earth mover distance from the model's distribution q to the one-hot target y, with
        transport cost c(i, y) = 1 - cos(e_i, e_y) over frozen output embeddings e, reduces to
        DEMD = sum_i q_i c(i, y) = 1 - cos-weighted mass. The loss is 0.5 (CE + w DEMD), where
        w = min(CE / DEMD, 3) (no gradient) puts both terms on the same scale.
        logits (N, V) float, target (N,) -> scalar.
        """
        valid = target != ignore_index
        ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")   # (N,)
        e = F.normalize(self.cost_embedding.float(), dim=-1)                                 # (V, D)
        q = logits.softmax(-1)                                                               # (N, V)
        demd = 1 - ((q @ e) * e[target.clamp(min=0)]).sum(-1)                               # (N,)
        w = torch.clamp(ce / (demd + 1e-10), max=3.0).detach()
        loss = 0.5 * (ce + w * demd)
        return (loss * valid).sum() / valid.sum().clamp(min=1)

    @torch.no_grad()
    def sample(self, h: Tensor, params: SamplingParams | None = None,
               generator: torch.Generator | None = None, seen: Tensor | None = None,
               allowed: Tensor | None = None, draft: Draft | None = None, rollback: float | None = None,
               candidates: int = 0):
        """h (B, D) -> next token ids (B,). ``seen`` (B, V) bool for the repetition penalty.
        ``allowed`` (V,) or (B, V) bool: the only ids that may be drawn (a schedule's sub-vocabulary,
        e.g. RALL-E's duration bins while it writes durations).

        ``draft`` (g tokens per row): speculative acceptance instead (backbone/speculative.py). h
        (B, 1+g, D) are the states of each row's pending token and its drafts -> (tokens (B, 1+g),
        k (B,)): row b keeps its first k[b] drafts, then tokens[b, k[b]] is the model's own token;
        every token is distributed as a plain sample (``rollback``: BiLD's inexact greedy policy).
        ``candidates`` k > 0: contrastive search's candidates instead (backbone/contrastive.py), the
        k most likely ids -> (probabilities (B, k) float32, ids (B, k))."""
        logits = self(h)
        if draft is not None:
            return accept(logits, draft, params or SamplingParams(), generator, rollback)
        if candidates:
            return logits.float().softmax(-1).topk(candidates, dim=-1)
        if allowed is not None:
            logits = logits.float().masked_fill(~allowed, float("-inf"))
        return sample_from_logits(logits, params or SamplingParams(), generator, seen)

    @torch.no_grad()
    def sample_rows(self, h: Tensor, opts: list[dict]) -> list:
        """Many one-row ``sample`` calls at once (continuous batching): h (R, D), one opts dict per row
        -> R samples of shape (1,), each what ``sample(h[i:i+1], **opts[i])`` gives. One projection;
        the draws stay per row (``sample_rows`` of backbone/sampling.py)."""
        if any(o.get("draft") is not None or o.get("candidates") for o in opts):
            return [self.sample(h[i:i + 1], **o) for i, o in enumerate(opts)]
        logits = self(h)
        allowed = [o.get("allowed") for o in opts]
        if any(a is not None for a in allowed):
            logits = logits.float()
            for i, a in enumerate(allowed):
                if a is not None:
                    logits[i] = logits[i].masked_fill(~a.reshape(-1), float("-inf"))
        toks = sample_rows(logits, [o.get("params") or SamplingParams() for o in opts],
                           [o.get("generator") for o in opts], [o.get("seen") for o in opts])
        return list(toks[:, None].unbind(0))

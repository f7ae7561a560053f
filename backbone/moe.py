"""AdaMoE: a top-k mixture-of-experts MLP with null experts (Zeng et al. 2024, "AdaMoE:
Token-Adaptive Routing with Null Experts for Mixture-of-Experts Language Models").

The router scores n real experts and m *null* experts. A null expert outputs zero, so a token
that routes some of its top-k slots to null experts uses fewer real experts: the number of
experts per token becomes adaptive while the top-k machinery stays fixed. Null experts are
never computed (no FLOPs, no parameters); only the tokens routed to a real expert are
gathered and sent through it.

The load-balancing loss is the Switch Transformer one (Fedus et al. 2021), E * sum_i f_i P_i
over all E = n + m experts, where f_i is the share of routing slots expert i receives and
P_i its mean router probability. The null experts are interchangeable, so (as in AdaMoE) they
enter with the mean load and mean probability of their group: the loss balances the real
experts among themselves and the real experts against the null group, and does not
push tokens around between identical null experts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import MLP

if TYPE_CHECKING:  # for annotations only: transformer.py imports this file
    from .transformer import ModelArgs


class MoE(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_real, self.n_null, self.k = args.n_experts, args.n_null_experts, args.experts_per_tok
        self.router = nn.Linear(args.dim, self.n_real + self.n_null, bias=False)
        self.experts = nn.ModuleList(MLP(args, args.moe_intermediate_size) for _ in range(self.n_real))
        self.aux_loss: Tensor | None = None       # set by each training forward
        self.real_per_token: Tensor | None = None  # mean number of real experts a token used

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> probs (N, E) router softmax, weights (N, k), expert ids (N, k).
        The k weights of a token are renormalised to sum to one (null slots included)."""
        probs = F.softmax(self.router(x).float(), dim=-1)                # (N, E)
        w, idx = probs.topk(self.k, dim=-1)                              # (N, k)
        return probs, w / w.sum(-1, keepdim=True), idx

    def balance_loss(self, probs: Tensor, idx: Tensor) -> Tensor:
        """Switch/AdaMoE load-balancing loss from probs (N, E) and chosen ids (N, k)."""
        E = self.n_real + self.n_null
        load = F.one_hot(idx, E).float().sum((0, 1)) / idx.numel()       # (E,) share of slots
        imp = probs.mean(0)                                              # (E,)
        if self.n_null:  # the null experts count as one group of identical experts
            load = torch.cat([load[:self.n_real], load[self.n_real:].mean().expand(self.n_null)])
            imp = torch.cat([imp[:self.n_real], imp[self.n_real:].mean().expand(self.n_null)])
        return E * (load * imp).sum()

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> (B, T, D). Side effects: ``aux_loss`` (training) and ``real_per_token``."""
        B, T, D = x.shape
        xf = x.reshape(-1, D)                                            # (N, D)
        probs, w, idx = self.route(xf)
        out = torch.zeros_like(xf)
        for e, expert in enumerate(self.experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)                # tokens that chose expert e
            if tok.numel():
                out.index_add_(0, tok, expert(xf[tok]) * w[tok, slot, None].to(xf.dtype))
        # ids >= n_real are null experts: they add zero and are never run
        self.real_per_token = (idx < self.n_real).sum(-1).float().mean().detach()
        self.aux_loss = self.balance_loss(probs, idx) if self.training else None
        return out.view(B, T, D)

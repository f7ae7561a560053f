"""Draft head: guesses the next few tokens from the big model's own hidden state.

Chimera (Zeng et al. 2024, "Chimera: A Lossless Decoding Method for Accelerating LLM
Inference by Fusing All Tokens") and EAGLE (Li et al. 2024) draft at the feature level: a
light network takes the backbone's last hidden state f_t and the embedding of the next token
x_{t+1}, and predicts the next hidden state f_{t+1}; the model's own (frozen) LM head turns it
into a token, which is fed back to draft the one after. Trained by distillation on the
frozen model (soft cross-entropy against the model's next-token distribution, plus a
smooth-L1 feature loss as in EAGLE), unrolled over a few steps so it learns to run on its own
predictions. Speculative verification keeps the output exact whatever the head predicts.

The head uses the model's token embedding and LM head without owning them: the container hands
them over (``attach``), kept outside the module tree so no parameter is registered twice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone.sampling import SamplingParams, process_logits


class ResMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight)  # each block starts as the identity
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.silu(self.up(self.norm(x))))


class DraftHead(nn.Module):
    """(f_t (B, D), e(x_{t+1}) (B, D)) -> predicted f_{t+1} (B, D), in the backbone's output space.
    ``lm_head``: the name of the model's LM head that turns predicted states into tokens."""

    def __init__(self, dim: int, vocab_size: int, n_blocks: int = 2, hidden: int | None = None,
                 unroll: int = 3, feature_weight: float = 1.0, lm_head: str = "lm"):
        super().__init__()
        self.lm_head = lm_head
        self.shared: tuple[nn.Module, nn.Module] | None = None  # (token embedding, LM head), see attach
        self.vocab_size, self.unroll, self.feature_weight = vocab_size, unroll, feature_weight
        self.fuse = nn.Linear(2 * dim, dim)
        self.blocks = nn.ModuleList(ResMLP(dim, hidden or 2 * dim) for _ in range(n_blocks))
        with torch.no_grad():  # start as "next state = current state" (a sensible first guess)
            self.fuse.weight.zero_()
            self.fuse.weight[:, :dim].copy_(torch.eye(dim))
            self.fuse.bias.zero_()

    def forward(self, f: Tensor, e: Tensor) -> Tensor:
        """f, e (..., D) -> (..., D)."""
        x = self.fuse(torch.cat([f, e.to(f.dtype)], -1))
        for blk in self.blocks:
            x = blk(x)
        return x

    def attach(self, model):
        """Keep references to the model's token embedding and LM head (a plain tuple attribute: they
        stay the model's parameters, saved once under their own names)."""
        self.shared = (model.backbone.tok_embeddings, model.heads[self.lm_head])

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        if self.shared is None:
            raise RuntimeError("the draft head is not attached to a model (OmniModel.add_head attaches it)")
        return self.shared

    def loss(self, h: Tensor, target: Tensor) -> Tensor:
        """h (B, T, D) frozen backbone states for the token ids ``target`` (B, T) that produced them.

        Step j predicts the state at t+j+1 from the (predicted, for j > 0) state at t+j and the
        true token x_{t+j+1}. Loss per step: soft CE against the model's own next-token
        distribution at t+j+1 + ``feature_weight`` * smooth-L1 to its state.
        """
        embed, lm = self._parts()
        ids, T = target, h.shape[1]
        f, total = h[:, :-1], 0.0
        for j in range(min(self.unroll, T - 1)):
            Tj = T - 1 - j
            f = self(f[:, :Tj], embed(ids[:, 1 + j:1 + j + Tj]))                  # (B, Tj, D)
            tgt = h[:, 1 + j:1 + j + Tj]
            p_model = lm(tgt).float().softmax(-1)
            ce = -(p_model * lm(f).float().log_softmax(-1)).sum(-1).mean()
            total = total + ce + self.feature_weight * F.smooth_l1_loss(f.float(), tgt.float())
        return total / min(self.unroll, T - 1)

    @torch.no_grad()
    def sample(self, h: Tensor, token: Tensor, gamma: int, params: SamplingParams | None = None,
               generator: torch.Generator | None = None,
               fallback: float | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The head's draft. h (B, D): the state that predicted ``token`` (B,). Returns tokens (B, g),
        lengths (B,) and q (B, g, V) draft probabilities (None when greedy: one-hot drafts), g <= gamma.

        fallback: as BiLD's policy, a row stops drafting once the head's top probability drops
        below this; drafting ends when every row has stopped.
        """
        embed, lm = self._parts()
        greedy = params is None or params.temperature == 0
        f, tok, out, qs = h, token, [], []
        alive = torch.ones_like(token, dtype=torch.bool)
        lengths = torch.zeros_like(token)
        for _ in range(gamma):
            f = self(f, embed(tok))
            logits = lm(f)
            if greedy and fallback is None:
                tok = logits.argmax(-1)
            else:
                q = process_logits(logits, params) if not greedy else logits.double()
                q = q.softmax(-1)
                tok = q.argmax(-1) if greedy else torch.multinomial(q, 1, generator=generator)[:, 0]
                if fallback is not None:
                    alive &= q.max(-1).values >= fallback
                    if not bool(alive.any()):
                        break
                if not greedy:
                    qs.append(q)
            lengths += alive.long()
            out.append(tok)
        if not out:
            return token.new_zeros(token.shape[0], 0), lengths, None
        return torch.stack(out, 1), lengths, (torch.stack(qs, 1) if qs else None)

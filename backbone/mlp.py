"""The feed-forward block of a transformer layer: GELU (GPT-2), SwiGLU (Llama) or squared ReLU (Primer).
Its own file so that the mixture-of-experts layer (backbone/moe.py) builds its experts from it
without importing the transformer that uses it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # for annotations only: transformer.py imports this file
    from .transformer import ModelArgs


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, hidden: int | None = None):
        super().__init__()
        self.kind = args.mlp
        hidden = hidden or args.intermediate_size
        n_in = 2 * hidden if args.mlp == "swiglu" else hidden
        self.w_in = nn.Linear(args.dim, n_in, bias=args.mlp_bias)   # SwiGLU: [gate; up] fused
        self.w_out = nn.Linear(hidden, args.dim, bias=args.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.w_in(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.w_out(h)

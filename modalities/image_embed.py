"""Image patches into the backbone: a linear projection plus a learned embedding per patch index.

Continuous tokens, never vector-quantised (MAR, Li et al. 2024): a patch enters as
``W x + p[i]``, where x is the normalised pixel (or latent) patch and i its place in the
raster grid. The 1-D positions of the backbone (RoPE) say where the image sits in the
sequence; ``p[i]`` says where the patch sits in the image, which RoPE alone cannot (a row break
is invisible in a 1-D index).

Masked orders (MAR's random order) also need a patch that is not known yet: with
``mask_token=True`` such a slot enters as ``m + p[i]``, a learned mask vector at its place.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    def __init__(self, token_dim: int, dim: int, n_patches: int, mask_token: bool = False):
        super().__init__()
        self.token_dim, self.n_patches = token_dim, n_patches
        self.proj = nn.Linear(token_dim, dim)
        self.pos = nn.Embedding(n_patches, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        # only masked-order models own a mask vector, so raster checkpoints load unchanged
        self.mask = nn.Parameter(torch.zeros(dim).normal_(std=0.02)) if mask_token else None

    def forward(self, raw: tuple[Tensor, ...]) -> Tensor:
        """raw = (patches (B, T, token_dim), index (B, T) long: the patch's place in the image,
        -1 at text positions[, masked (B, T) bool: unknown patches]) -> (B, T, dim); rows at text
        positions are zero (the backbone's token embedding is used there through ``embed_mask``)."""
        x, idx = raw[0], raw[1]
        e = self.proj(x)
        if len(raw) > 2 and raw[2] is not None:
            if self.mask is None:
                raise ValueError("this image adapter has no mask token: the checkpoint was not trained for a masked order")
            e = torch.where(raw[2].unsqueeze(-1), self.mask.to(e.dtype), e)
        e = e + self.pos(idx.clamp(min=0))
        return e * (idx >= 0).unsqueeze(-1).to(e.dtype)

"""KV cache: a module that holds pre-allocated key/value buffers (gpt-fast style)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    """Pre-allocated (B, n_kv_head, max_seq, head_dim) key and value buffers for one layer.

    Slots are written with ``index_copy_`` at ``input_pos`` so that the same code serves
    prefill (many slots) and decoding (one slot), and rolling back is just writing again.
    """

    def __init__(self, max_batch: int, n_kv_head: int, max_seq: int, head_dim: int,
                 dtype=torch.float32, device=None, static: bool = False, raw_dim: int = 0):
        super().__init__()
        self.static = static  # always return all max_seq slots (fixed shapes for torch.compile)
        shape = (max_batch, n_kv_head, max_seq, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # Primer's causal conv needs the pre-conv q/k/v projections of earlier slots: (B, max_seq, C)
        self.register_buffer("raw", torch.zeros(max_batch, max_seq, raw_dim, dtype=dtype, device=device)
                             if raw_dim else None, persistent=False)

    @property
    def max_seq(self) -> int:
        return self.k_cache.shape[2]

    def view(self, row: int, max_seq: int) -> "KVCache":
        """A (1, n_kv_head, max_seq, head_dim) KVCache sharing row ``row``'s storage: what one
        request decodes into when its cache is a row of a batched pool (backbone/batching.py)."""
        v = KVCache.__new__(KVCache)
        nn.Module.__init__(v)
        v.static = False
        v.register_buffer("k_cache", self.k_cache[row:row + 1, :, :max_seq], persistent=False)
        v.register_buffer("v_cache", self.v_cache[row:row + 1, :, :max_seq], persistent=False)
        v.register_buffer("raw", None if self.raw is None else self.raw[row:row + 1, :max_seq], persistent=False)
        return v

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor, upto: int | None = None) -> tuple[Tensor, Tensor]:
        """Write k, v (B, nkv, T, hs) at slots input_pos (T,); return the filled (B, nkv, S, hs) views.

        ``input_pos`` (B, T) writes every row at its own slots (speculative decoding, where rows
        accept different numbers of tokens); the caller's mask says which slots each query sees.

        ``upto`` (S) is how many slots to return; default: up to the last written slot.
        Returning only the filled prefix keeps eager CPU decoding cheap; a ``static`` cache
        returns all max_seq slots (the caller masks the unwritten ones), so shapes never change
        and a compiled decode step is traced once.
        """
        B = k.shape[0]
        kc, vc = self.k_cache[:B], self.v_cache[:B]
        if input_pos.dim() == 2:  # per-row slots
            idx = input_pos[:, None, :, None].expand(-1, kc.shape[1], -1, kc.shape[3])
            kc.scatter_(2, idx, k.to(kc.dtype))
            vc.scatter_(2, idx, v.to(vc.dtype))
        else:
            kc.index_copy_(2, input_pos, k.to(kc.dtype))
            vc.index_copy_(2, input_pos, v.to(vc.dtype))
        if self.static:
            return kc, vc
        S = int(input_pos.max()) + 1 if upto is None else upto
        return kc[:, :, :S], vc[:, :, :S]

    def update_raw(self, input_pos: Tensor, u: Tensor) -> Tensor:
        """Write pre-conv projections u (B, T, C) at slots input_pos ((T,) or (B, T)); return
        the (B, S, C) buffer of every slot so far (all max_seq slots for a static cache)."""
        B = u.shape[0]
        rc = self.raw[:B]
        if input_pos.dim() == 2:
            rc.scatter_(1, input_pos[..., None].expand(-1, -1, rc.shape[2]), u.to(rc.dtype))
        else:
            rc.index_copy_(1, input_pos, u.to(rc.dtype))
        return rc if self.static else rc[:, :int(input_pos.max()) + 1]


class Cache(nn.Module):
    """One generation's KV cache: a KVCache per layer. It belongs to the request (held by its
    DecodeState, backbone/generate.py), not to the model, so two generations on one model never
    share or clobber slots. Made by ``Transformer.new_cache``; passed as ``forward(cache=...)``."""

    def __init__(self, layers: list[KVCache]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def max_seq(self) -> int:
        return self.layers[0].max_seq

    @property
    def static(self) -> bool:
        return self.layers[0].static

    @property
    def rows(self) -> int:
        return self.layers[0].k_cache.shape[0]

    def view(self, row: int, max_seq: int) -> "Cache":
        """Row ``row``'s first ``max_seq`` slots as a one-row Cache that shares this one's storage."""
        return Cache([c.view(row, max_seq) for c in self.layers])

    @torch.no_grad()
    def copy_row(self, row: int, src: "Cache", src_row: int = 0, length: int | None = None):
        """Write slots 0 .. length - 1 (default: all of src's) of ``src``'s row ``src_row`` into row ``row``."""
        S = src.max_seq if length is None else length
        for c, s in zip(self.layers, src.layers):
            c.k_cache[row, :, :S] = s.k_cache[src_row, :, :S]
            c.v_cache[row, :, :S] = s.v_cache[src_row, :, :S]
            if c.raw is not None:
                c.raw[row, :S] = s.raw[src_row, :S]

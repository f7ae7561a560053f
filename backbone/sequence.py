"""Segments and packing: the one way a task builds training batches and generation prompts.

A ``Segment`` is one modality's span of a sequence: token ids, or continuous values that an
input adapter embeds (their ids are placeholders), an optional attention block pattern, and what a
head predicts for its items. ``pack`` lays rows of segments out as one padded batch, so the
backbone never branches on modality:

    row = [Segment(bos_caption_boi), Segment([IMG] * 64, adapter="image", values=(patches, index),
           fills=(0.0, -1), head="image", target=patches), Segment([EOI, EOS])]
    batch = pack([row, ...]).batch()           # -> OmniModel(**batch): loss and per-head losses
    prompt = pack([prompt_row, ...], side="left").prompt(max_seq)  # -> backbone/generate.py

Targets. Each segment may name the ``head`` that predicts its items. With ``shift=1`` (the
autoregressive default) item t is predicted from the position before it, which may be the last
position of the previous segment (``<boi>`` predicts the first patch); with ``shift=0`` from its
own position (a masked order, a NAR codebook pass). A head whose targets are the segment's own
token ids (``target=None``: the LM head, codebook heads) gets a dense (B, T) target with -100 where
nothing is scored; a head with explicit ``target`` tensors gets (select (B, T) bool, target (M, ...))
in row-major order of the selected positions. That is the container's target format
(backbone/container.py ``OmniModel.forward``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .generate import Prompt
from .masks import build_mask

IGNORE = -100


@dataclass
class Segment:
    """One modality's span. ids (T,): tokens, or placeholder ids where ``adapter`` embeds ``values``.

    values: per-position adapter inputs, each (T, ...), packed to (B, L, ...) and padded with the
        matching ``fills`` entry outside this adapter's positions (the adapter gets them as a tuple,
        or a single tensor when there is one).
    blocks: (T,) non-decreasing local block ids: positions with the same id see each other
        bidirectionally (an image, a scale, a cell). None: causal. ``block=True``: one block.
    head / target / scored / shift: see the module docstring. ``scored`` (T,) bool or bool.
    """
    ids: Tensor | list[int]
    kind: str = "text"
    adapter: str | None = None
    values: tuple = ()
    fills: tuple = ()
    blocks: Tensor | None = None
    block: bool = False
    head: str | None = None
    target: Tensor | None = None
    scored: Tensor | bool = True
    shift: int = 1

    def __post_init__(self):
        self.ids = torch.as_tensor(self.ids, dtype=torch.long).reshape(-1)
        T = len(self.ids)
        if self.block and self.blocks is None:
            self.blocks = torch.zeros(T, dtype=torch.long)
        if self.adapter is not None and len(self.values) != len(self.fills):
            raise ValueError(f"{self.kind} segment: give one fill value per adapter input")
        for v in self.values:
            if v.shape[0] != T:
                raise ValueError(f"{self.kind} segment: adapter input of length {v.shape[0]} for {T} positions")
        if self.target is not None and self.head is None:
            raise ValueError(f"{self.kind} segment: a target needs the head that predicts it")
        if self.shift not in (0, 1):
            raise ValueError("shift is 1 (predicted from the position before) or 0 (from its own position)")

    def __len__(self) -> int:
        return len(self.ids)

    def scored_mask(self) -> Tensor:
        if isinstance(self.scored, bool):
            return torch.full((len(self),), self.scored, dtype=torch.bool)
        return self.scored.bool()


@dataclass
class Sequence:
    """Rows of segments packed into one batch. ids, attention_mask (1 = real), embed_mask: (B, T);
    adapter_inputs {name: tuple of (B, T, ...)}; block_ids (B, T) or None (all causal); targets as
    the container takes them; positions (B, T) (0 at each row's first real token)."""
    ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    embed_mask: Tensor | None = None
    adapter_inputs: dict = field(default_factory=dict)
    block_ids: Tensor | None = None
    targets: dict = field(default_factory=dict)
    side: str = "right"

    def _adapter_inputs(self) -> dict:
        return {n: v[0] if len(v) == 1 else v for n, v in self.adapter_inputs.items()}

    def batch(self) -> dict:
        """The trainer's batch: ``OmniModel(**batch)``. Right-padded rows: padding sits after each
        row's tokens, where causal attention keeps it out of every real position. Left-padded rows
        train as generate prefills them: positions start at each row's first token and a mask
        hides the padding."""
        out: dict = {}
        all_embeds = self.embed_mask is not None and bool(self.embed_mask.all())
        if not all_embeds:
            out["input_ids"] = self.ids
        if self.adapter_inputs:
            out["adapter_inputs"] = self._adapter_inputs()
            if not all_embeds:
                out["embed_mask"] = self.embed_mask
        if self.side == "left":
            j = torch.arange(self.ids.shape[1])
            blocks = j if self.block_ids is None else self.block_ids
            out["positions"] = self.positions
            out["mask"] = build_mask(blocks, blocks, self.attention_mask.bool(), j)     # (B, 1, T, T)
        elif self.block_ids is not None:
            out["mask"] = build_mask(self.block_ids, self.block_ids)                    # (B, 1, T, T)
        if self.targets:
            out["targets"] = self.targets
        return out

    def prompt(self, model, max_seq: int, static: bool = False) -> Prompt:
        """A generation prompt (pack with ``side="left"``) on the model's device: the adapter's
        embeddings at its positions."""
        dev = next(model.parameters()).device
        to = lambda x: None if x is None else x.to(dev)  # noqa: E731
        embeds = None
        if self.adapter_inputs:
            (name, raw), = self._adapter_inputs().items()
            embeds = model.adapters[name](tuple(map(to, raw)) if isinstance(raw, tuple) else to(raw))
        return Prompt(to(self.ids), to(self.attention_mask), max_seq, embeds,
                      to(self.embed_mask) if embeds is not None else None, to(self.block_ids), static)


def pack(rows: list[list[Segment]], pad_id: int = 0, side: str = "right", trim_last: bool = False,
         length: int | None = None) -> Sequence:
    """Lay rows of segments out as one batch, padded on ``side`` ("right" for training, "left" for
    prompts, so every row's last token sits in the last column). ``trim_last``: each row's last
    token is only a target (an <eos>), never an input, as nanoGPT's x = s[:-1], y = s[1:].
    ``length``: pad to at least this many columns (a fixed batch width). Returns a Sequence."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every row needs at least one segment")
    if side not in ("left", "right"):
        raise ValueError("side is 'left' or 'right'")
    lengths = [sum(len(s) for s in r) for r in rows]
    B, T = len(rows), max(lengths + [length or 0])
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    am = torch.zeros(B, T, dtype=torch.long)
    blocks = torch.arange(T).repeat(B, 1)
    any_block = False
    adapters: dict[str, list] = {}         # name -> [fills, per-value (B, T, ...) tensors]
    embed_mask = torch.zeros(B, T, dtype=torch.bool)
    dense: dict[str, Tensor] = {}          # head -> (B, T) ids targets
    sparse: dict[str, list] = {}           # head -> [select (B, T), [(b, p, target row)]]
    for b, row in enumerate(rows):
        p = start = T - lengths[b] if side == "left" else 0
        am[b, p:p + lengths[b]] = 1
        for seg in row:
            n = len(seg)
            sl = slice(p, p + n)
            ids[b, sl] = seg.ids
            if seg.blocks is not None:
                local = seg.blocks.long()
                blocks[b, sl] = p + torch.searchsorted(local, local)        # a block's id = its first slot
                any_block = True
            if seg.adapter is not None:
                if seg.adapter not in adapters:
                    if adapters:
                        raise ValueError("one input adapter per batch (got "
                                         f"{next(iter(adapters))!r} and {seg.adapter!r})")
                    adapters[seg.adapter] = [seg.fills, [torch.full((B, T, *v.shape[1:]), f, dtype=v.dtype)
                                                         for v, f in zip(seg.values, seg.fills)]]
                for buf, v in zip(adapters[seg.adapter][1], seg.values):
                    buf[b, sl] = v
                embed_mask[b, sl] = True
            if seg.head is not None:
                at = torch.arange(p, p + n) - seg.shift                       # the predicting positions
                keep = seg.scored_mask() & (at >= start)         # never predicted from padding
                if seg.target is None:
                    dense.setdefault(seg.head, torch.full((B, T), IGNORE, dtype=torch.long))
                    dense[seg.head][b, at[keep]] = seg.ids[keep]
                else:
                    sel, items = sparse.setdefault(seg.head, [torch.zeros(B, T, dtype=torch.bool), []])
                    sel[b, at[keep]] = True
                    items.append((b * T + at[keep], seg.target[keep]))              # (flat slot, target rows)
            p += n
    if set(dense) & set(sparse):
        raise ValueError(f"head {next(iter(set(dense) & set(sparse)))!r} given both token and tensor targets")
    targets: dict = dict(dense)
    for head, (sel, items) in sparse.items():
        order = torch.cat([k for k, _ in items]).argsort()                  # row-major, as h[select] reads
        targets[head] = (sel, torch.cat([t for _, t in items])[order])
    if trim_last:
        for b, L in enumerate(lengths):
            last = T - 1 if side == "left" else L - 1                          # each row's last token
            ids[b, last], am[b, last], embed_mask[b, last] = pad_id, 0, False
            for _, bufs in adapters.values():
                for buf, f in zip(bufs, next(iter(adapters.values()))[0]):
                    buf[b, last] = f
        T -= 1
        ids, am, blocks, embed_mask = ids[:, :T], am[:, :T], blocks[:, :T], embed_mask[:, :T]
        adapters = {n: (f, [v[:, :T] for v in bufs]) for n, (f, bufs) in adapters.items()}
        targets = {h: t[:, :T] if isinstance(t, Tensor) else (t[0][:, :T], t[1]) for h, t in targets.items()}
    positions = (am.cumsum(-1) - 1).clamp(min=0)
    return Sequence(ids, am, positions, embed_mask if adapters else None,
                    {n: tuple(v) for n, (_, v) in adapters.items()}, blocks if any_block else None, targets, side)

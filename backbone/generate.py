"""The one generation loop (gpt-fast style: prefill, then decode_one_token / blocks over a KV cache), driven by schedules.

Every task generates through ``Generation.step``:

    0. the schedule's prompt is prefilled into a fresh KV cache that belongs to this generation;
    1. the schedule names the active head and the hidden states it conditions on (``Step``);
    2. that head samples (``head.sample(h, **opts)``);
    3. the schedule (through its modality) turns the sample into the next inputs (``Feed``);
    4. the backbone advances over the cache: one token, one embedding, or a block of N positions
       (committed, or rewritten on the next pass as a masked order does), or starts over.

A schedule is a small object (``Schedule``) that says, at each step, which head is active, which
positions it fills, the attention block of a fed block, how a sample becomes the next input, and
when to stop or hand over. Text (``TextSchedule`` below), images, speech and forecasts are
schedules over this one loop; the apps keep none of their own. The cache and positions live in the
generation's ``DecodeState``, never on the model, so two generations on one model interleave
freely: that is what batched serving builds on.

Batched prompts of different lengths are left-padded; an attention mask hides the padding and
per-row position ids start every prompt at 0, so a batched run gives the same tokens as running
each prompt alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import Cache
from .masks import build_mask
from .sampling import SamplingParams
from .skip import LayerSkip


@dataclass
class DecodeState:
    """What one generation carries between steps: its cache and where it is."""
    positions: Tensor        # (B,) next position id of each row
    key_valid: Tensor | None  # (B, max_seq) False at padding slots; None = no padding
    next_slot: int           # next cache slot to write (shared by all rows)
    cache: Cache | None = None  # this generation's KV cache (backbone/cache.py)
    static: bool = False     # static cache: masks span all max_seq slots
    step: int = 0            # tokens decoded since the prefill
    skip: LayerSkip | None = None  # early exit / FFN skipping (backbone/skip.py)
    max_new: int = 0         # the generation budget (the early-exit schedule spans it)


@dataclass
class Prompt:
    """What the loop prefills. ids, attention_mask: (B, P) (1 = real token, left padding = 0).
    ``embeds`` (B, P, D) + ``embed_mask`` (B, P): continuous inputs at the masked positions.
    ``block_ids`` (B, P) or (P,): the prompt's attention pattern as block ids (backbone/masks.py).
    ``max_seq``: cache slots to allocate; ``static``: fixed-shape cache for a compiled step.
    ``positions`` (B, P) and ``mask`` (B|1, 1, P, P) bool: a layout that positions from the
    attention mask and block ids cannot say (Set-Based Prompting's options share positions and
    do not see each other, backbone/set_prompt.py). P = 0 only allocates the cache."""
    ids: Tensor
    attention_mask: Tensor | None = None
    max_seq: int = 0
    embeds: Tensor | None = None
    embed_mask: Tensor | None = None
    block_ids: Tensor | None = None
    static: bool = False
    positions: Tensor | None = None
    mask: Tensor | None = None


@dataclass
class Step:
    """One step of a schedule: ``model.heads[head].sample(h, **opts)``. h (M, D) or (M, n, D)."""
    head: str
    h: Tensor
    opts: dict = field(default_factory=dict)


@dataclass
class Feed:
    """How the backbone advances after a step (exactly one of ids / embeds / prompt).

    ids (B, n) or embeds (B, n, D): the next n positions; n > 1 is a block that sees itself
    bidirectionally (an image block, a scale, a cell). ``commit=False`` leaves the state where
    it was, so the next feed rewrites the same slots (a masked order refining its block).
    ``mask`` (B|1, 1, 1, S): replaces a one-token step's mask (RALL-E's duration-guided window).
    ``prompt``: start over from a fresh cache (a sliding window, a full non-causal pass).
    ``slots`` + ``positions`` (B, n): ids go at each row's own cache slots, causally (draft
    verification, where rows have accepted different numbers of tokens); see ``decode_rows``.
    ``keep`` (B,): first, every row's newest written slot becomes a copy of row keep[row]'s (a
    search that ran one candidate per row keeps the chosen ones: contrastive search)."""
    ids: Tensor | None = None
    embeds: Tensor | None = None
    commit: bool = True
    mask: Tensor | None = None
    prompt: Prompt | None = None
    slots: Tensor | None = None
    positions: Tensor | None = None
    keep: Tensor | None = None


class Schedule:
    """The per-task part of generation. Subclasses implement:

    * ``prompt() -> Prompt``: what to prefill;
    * ``next(h) -> Step | Feed | None``: given the hidden states of the positions just run, (B, n, D),
      the active head and what it conditions on; None = finished; a Feed = inputs to run before any
      head samples (an image's start block, a masked block's first pass, a token that follows by
      rule such as ``<eoi>``), after which ``next`` is asked again with their hidden states;
    * ``feed(sample) -> Feed | None``: the modality's turn of a sample into the next inputs
      (also where outputs are collected); None = finished after this sample.
    * ``result()``: the finished output (images, audio codes, ...).
    """
    step_fn = None  # optional replacement of ``decode_step`` (a compiled step)
    skip: LayerSkip | None = None
    max_new: int = 0

    def prompt(self) -> Prompt:
        raise NotImplementedError

    def next(self, h: Tensor) -> Step | None:
        raise NotImplementedError

    def feed(self, sample: Any) -> Feed | None:
        raise NotImplementedError

    def result(self):
        return None


class Generation:
    """One request's generation: a schedule plus its own DecodeState (KV cache, positions).
    The model object holds only weights, so several Generations on one model can be stepped in
    any interleaving, each giving what it gives alone.

        gen = Generation(model, schedule)
        while (x := gen.step()) is not None: ...      # or: for x in run(model, schedule)
    """

    def __init__(self, model, schedule: Schedule):
        self.model, self.schedule = model, schedule
        self.state: DecodeState | None = None
        self.h: Tensor | None = None
        self.pending: Feed | None = None
        self.done = False

    @torch.no_grad()
    def step(self):
        """Advance by one schedule step -> the head's sample, or None once finished.
        A feed is applied lazily, at the start of the next step, so no forward pass is spent
        after the last sample."""
        step = self.prepare()
        if step is None:
            return None
        x = self.model.heads[step.head].sample(step.h, **step.opts)            # 2. it samples
        self.take(x)
        return x

    @torch.no_grad()
    def prepare(self) -> Step | None:
        """The first half of ``step``: prefill or apply the pending feed, then ask the schedule
        -> the Step whose head samples next, or None once finished. (A batching engine applies
        the feeds of many generations in one call, then samples their Steps together.)"""
        if self.done:
            return None
        if self.state is None:                                                  # 0. prefill
            self.start(*prefill_prompt(self.model, self.schedule.prompt()))
        elif self.pending is not None:                                          # 4. advance
            self.h = advance(self.model, self.state, self.pending, self.schedule.step_fn)
            self.pending = None
        step = self.schedule.next(self.h)                                       # 1. which head
        while isinstance(step, Feed):                       # inputs that no head samples come first
            self.h = advance(self.model, self.state, step, self.schedule.step_fn)
            step = self.schedule.next(self.h)
        if step is None:
            self.done = True
        return step

    def start(self, h: Tensor, state: DecodeState):
        """Take a prefill's result (h (1|B, P, D), its state): done by ``prepare``, or by a batching
        engine that prefilled many generations' prompts in one call."""
        self.h, self.state = h, state
        state.skip, state.max_new = self.schedule.skip, self.schedule.max_new

    def take(self, x):
        """The second half of ``step``: the schedule turns the head's sample into the next feed."""
        self.pending = self.schedule.feed(x)                                    # 3. next inputs
        if self.pending is None:
            self.done = True


def run(model, schedule: Schedule) -> Iterator:
    """The one generation loop: yields each step's sample until the schedule finishes."""
    gen = Generation(model, schedule)
    while (x := gen.step()) is not None:
        yield x


def run_to_end(model, schedule: Schedule):
    """Run a schedule to the end -> ``schedule.result()``."""
    for _ in run(model, schedule):
        pass
    return schedule.result()


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """list of token lists -> ids (B, P) left-padded, attention_mask (B, P) (1 = real token)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    am = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.as_tensor(p, dtype=torch.long)
        am[i, P - len(p):] = 1
    return ids, am


@torch.no_grad()
def prefill_prompt(model, p: Prompt) -> tuple[Tensor, DecodeState]:
    """Run a Prompt through the backbone into a fresh cache -> (h (B, P, D), DecodeState)."""
    B, P = p.ids.shape
    dev = p.ids.device
    bb = model.backbone
    am = torch.ones_like(p.ids) if p.attention_mask is None else p.attention_mask
    cache = bb.new_cache(B, p.max_seq or P, device=dev, static=p.static)
    max_seq = cache.max_seq
    if P == 0:  # nothing to run yet: the schedule feeds the first inputs itself (backbone/speculative.py)
        positions = torch.zeros(B, dtype=torch.long, device=dev)
        h = bb.tok_embeddings.weight.new_zeros(B, 0, model.args.dim)
        return h, DecodeState(positions=positions, key_valid=None, next_slot=0, cache=cache, static=p.static)
    padded = bool((am == 0).any())
    positions = (am.cumsum(-1) - 1).clamp(min=0) if p.positions is None else p.positions.to(dev)  # (B, P)
    input_pos = torch.arange(P, device=dev)
    key_valid, mask = None, None
    bidirectional = model.args.prefix_lm  # non-causal decoder: the prompt is the prefix
    if padded:
        key_valid = torch.ones(B, max_seq, dtype=torch.bool, device=dev)
        key_valid[:, :P] = am.bool()
    if p.mask is not None:  # the prompt's own pattern; (static) unwritten slots stay hidden
        mask = F.pad(p.mask.to(dev), (0, max_seq - P)) if p.static else p.mask.to(dev)
    elif padded or p.static or bidirectional or p.block_ids is not None:
        S = max_seq if p.static else P
        block_q, block_k = input_pos, torch.arange(S, device=dev)
        if p.block_ids is not None:  # (static) unwritten slots get ids above every prompt id
            block_q = p.block_ids.to(dev)
            block_k = torch.cat([block_q, (block_k[P:] + int(block_q.max()) + 1).expand(*block_q.shape[:-1], -1)], -1)
        elif bidirectional:  # every prompt slot is block 0; (static) unwritten slots stay hidden
            block_q, block_k = torch.zeros_like(input_pos), (block_k >= P).long()
        mask = build_mask(block_q, block_k, None if key_valid is None else key_valid[:, :S], input_pos)  # (B, 1, P, S)
    h = bb(input_ids=p.ids, embeds=p.embeds, embed_mask=p.embed_mask, positions=positions, mask=mask,
           input_pos=input_pos, cache=cache)  # (B, P, D)
    state = DecodeState(positions=positions[:, -1] + 1, key_valid=key_valid, next_slot=P, cache=cache,
                        static=p.static)
    return h, state


@torch.no_grad()
def prefill(model, input_ids: Tensor, attention_mask: Tensor, max_seq: int,
            static: bool = False, embeds: Tensor | None = None,
            embed_mask: Tensor | None = None, block_ids: Tensor | None = None) -> tuple[Tensor, DecodeState]:
    """``prefill_prompt`` with the prompt's parts as arguments -> (last hidden state (B, D), state)."""
    h, state = prefill_prompt(model, Prompt(input_ids, attention_mask, max_seq, embeds, embed_mask, block_ids, static))
    return h[:, -1], state


def decode_step(bb, token: Tensor, positions: Tensor, slot: Tensor, mask: Tensor | None, cache: Cache,
                **layer_kw) -> Tensor:
    """One backbone step over the cache: token, positions (B,), slot (1,) -> h (B, D).
    Pure tensor code with fixed shapes under a static cache: this is what ``torch.compile`` traces."""
    return bb(input_ids=token[:, None], positions=positions[:, None], mask=mask, input_pos=slot, cache=cache,
              **layer_kw)[:, -1]


def _step_mask(state: DecodeState, slot: Tensor) -> Tensor | None:
    """The mask of one decoding step: (B|1, 1, 1, S) written slots up to this one, minus padding."""
    if state.static:
        mask = (torch.arange(state.cache.max_seq, device=slot.device) <= slot)[None, None, None, :]
        return mask & state.key_valid[:, None, None, :] if state.key_valid is not None else mask
    if state.key_valid is not None:
        return state.key_valid[:, None, None, :state.next_slot + 1]           # (B, 1, 1, S)
    return None


def _advance(state: DecodeState, n: int = 1):
    state.positions = state.positions + n
    state.next_slot += n
    state.step += n


@torch.no_grad()
def decode_one_token(model, token: Tensor, state: DecodeState, step_fn=None,
                     mask: Tensor | None = None) -> Tensor:
    """Advance one step. token (B,) -> last hidden state (B, D); updates ``state`` in place.
    ``mask`` (B|1, 1, 1, S) bool replaces the step's default mask over the S = next_slot + 1
    written slots (RALL-E's duration-guided window, modalities/speech.py)."""
    bb = model.backbone
    slot = torch.tensor([state.next_slot], device=token.device)
    mask = _step_mask(state, slot) if mask is None else mask
    kw = {} if state.skip is None else state.skip.step_kwargs(state.step, len(bb.layers), state.max_new)
    h = (step_fn or decode_step)(bb, token, state.positions, slot, mask, state.cache, **kw)
    _advance(state)
    return h


@torch.no_grad()
def decode_one_embedding(model, embed: Tensor, state: DecodeState) -> Tensor:
    """Advance one step with a continuous input (a generated image patch, embedded by its
    adapter) instead of a token: embed (B, D) -> last hidden state (B, D)."""
    bb = model.backbone
    slot = torch.tensor([state.next_slot], device=embed.device)
    h = bb(embeds=embed[:, None], positions=state.positions[:, None], mask=_step_mask(state, slot),
           input_pos=slot, cache=state.cache)[:, -1]
    _advance(state)
    return h


@torch.no_grad()
def decode_block(model, embeds: Tensor, state: DecodeState, commit: bool = False,
                 ids: Tensor | None = None) -> Tensor:
    """Run a block of N inputs at the next N cache slots: the block sees everything before it
    and itself bidirectionally (MAR's masked image block, a scale, a cell).
    embeds (B, N, D) (or ids (B, N) with embeds None) -> h (B, N, D).

    The state only advances with ``commit=True``: calling again rewrites the same slots, which is
    how a masked order refines its block over several passes before committing the final one."""
    bb = model.backbone
    x = embeds if embeds is not None else ids
    B, N = x.shape[:2]
    max_seq = state.cache.max_seq
    slots = torch.arange(state.next_slot, state.next_slot + N, device=x.device)        # (N,)
    S = max_seq if state.static else state.next_slot + N
    if state.next_slot + N > max_seq:
        raise ValueError(f"a block of {N} does not fit the cache after slot {state.next_slot}")
    keys = (torch.arange(S, device=x.device) < state.next_slot + N)[None, :]               # (1, S)
    if state.key_valid is not None:
        keys = keys & state.key_valid[:, :S]
    positions = state.positions[:, None] + torch.arange(N, device=x.device)             # (B, N)
    h = bb(input_ids=ids if embeds is None else None, embeds=embeds, positions=positions,
           mask=keys[:, None, None, :], input_pos=slots, cache=state.cache)
    if commit:
        _advance(state, N)
    return h


def rows_step(bb, ids: Tensor, positions: Tensor, slots: Tensor, mask: Tensor, cache: Cache) -> Tensor:
    """One backbone pass at per-row slots: ids, positions, slots (B, n), mask (B, 1, n, S) -> h (B, n, D).
    Fixed shapes under a static cache: what a compiled verification traces."""
    return bb(input_ids=ids, positions=positions, mask=mask, input_pos=slots, cache=cache)


@torch.no_grad()
def decode_rows(model, state: DecodeState, ids: Tensor, slots: Tensor, positions: Tensor,
                step_fn=None) -> Tensor:
    """Run ids (B, n) at per-row cache slots (B, n) with position ids (B, n) -> h (B, n, D).

    Each query sees its row's slots up to its own, minus padding, so rows may stand at different
    slots (draft verification: every row moves on by what it accepted). The state does not
    advance: the caller owns the rows' slots, and a row's next feed rewrites what it rejected.
    ``step_fn``: a replacement of ``rows_step`` (a compiled one, with a static cache)."""
    S = state.cache.max_seq if state.static else int(slots.max()) + 1
    kv = None if state.key_valid is None else state.key_valid[:, :S]
    mask = build_mask(slots, torch.arange(S, device=ids.device), kv)                   # (B, 1, n, S)
    return (step_fn or rows_step)(model.backbone, ids, positions, slots, mask, state.cache)


def keep_rows(state: DecodeState, src: Tensor):
    """Every row's newest written slot (next_slot - 1) becomes a copy of row src[row]'s, src (B,):
    a search that ran one candidate per row keeps the chosen candidate of each group."""
    slot = state.next_slot - 1
    for c in state.cache.layers:
        for buf in (c.k_cache, c.v_cache):   # (B, nkv, max_seq, hs)
            buf[:len(src), :, slot] = buf[src, :, slot]
        if c.raw is not None:                # Primer's pre-conv projections, (B, max_seq, C)
            c.raw[:len(src), slot] = c.raw[src, slot]


@torch.no_grad()
def advance(model, state: DecodeState, feed: Feed, step_fn=None) -> Tensor:
    """Apply a Feed to a generation's state -> hidden states of the positions run (B, n, D).
    ``step_fn`` replaces the backbone call of the feed's kind (``decode_step`` for one token,
    ``rows_step`` for per-row slots)."""
    if feed.keep is not None:
        keep_rows(state, feed.keep)
    if feed.slots is not None:
        return decode_rows(model, state, feed.ids, feed.slots, feed.positions, step_fn)
    if feed.prompt is not None:  # start over: a fresh cache (the old one is dropped with the state)
        h, new = prefill_prompt(model, feed.prompt)
        new.skip, new.max_new, new.step = state.skip, state.max_new, state.step
        state.__dict__.update(new.__dict__)
        return h
    x = feed.ids if feed.ids is not None else feed.embeds
    if x.shape[1] > 1 or not feed.commit:
        return decode_block(model, feed.embeds, state, commit=feed.commit, ids=feed.ids)
    if feed.ids is not None:
        return decode_one_token(model, feed.ids[:, 0], state, step_fn, feed.mask)[:, None]
    return decode_one_embedding(model, feed.embeds[:, 0], state)[:, None]


def compiled_decode_step(model):
    """``torch.compile`` of decode_step, built once per model (gpt-fast style; use with a static
    cache so the shapes never change). The first call per batch size pays the compile time."""
    fn = getattr(model, "_compiled_decode_step", None)
    if fn is None:
        fn = torch.compile(decode_step, dynamic=False)
        model._compiled_decode_step = fn
    return fn


class TextSchedule(Schedule):
    """Token-by-token sampling from one LM head (text, CIF, Chronos bins): stop tokens per row,
    a repetition penalty over what each row has seen, and nanoGPT's sliding window past the
    context (each next token is predicted from the last ``block_size`` tokens, re-encoded once the
    cache is full). Samples are (B,) token tensors; rows that stopped give ``-1`` from then on.
    ``compile``: a static cache of block_size slots and a ``torch.compile``d step; ``static`` alone
    gives the static cache without compiling (what the compiled step traces, checked in tests)."""

    def __init__(self, model, prompts: list[list[int]], params: SamplingParams, head: str = "lm",
                 pad_id: int = 0, device=None, compile: bool = False, skip: LayerSkip | None = None,
                 static: bool | None = None):
        self.head, self.pad_id, self.skip = head, pad_id, skip
        self.static = compile if static is None else static
        self.device = device or next(model.parameters()).device
        ids, am = left_pad(prompts, pad_id)
        self.ids, self.am = ids.to(self.device), am.to(self.device)
        P, self.block, self.max_new = ids.shape[1], model.args.block_size, params.max_new_tokens
        if P > self.block:
            raise ValueError(f"prompt is {P} tokens but the model's context is {self.block}; shorten the prompt")
        self.cache_len = self.block if self.static else min(self.block, P + self.max_new)
        # the token history is kept only if the window must slide
        self.history = [list(p) for p in prompts] if P + self.max_new > self.block else None
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.seen = None
        if params.repetition_penalty != 1.0:
            B = ids.shape[0]
            self.seen = torch.zeros(B, model.heads[head].vocab_size, dtype=torch.bool, device=self.device)
            # mark only real prompt tokens; a scatter of am (False at padding) would race with the
            # True writes when pad_id also occurs in a prompt (duplicate-index order is undefined)
            real = self.am.bool()
            rows = torch.arange(B, device=self.device)[:, None].expand_as(self.ids)
            self.seen[rows[real], self.ids[real]] = True
        self.params = params
        self.done = torch.zeros(ids.shape[0], dtype=torch.bool, device=self.device)
        self.stop_set, self.any_done = set(params.stop_tokens), False
        self.step_fn = compiled_decode_step(model) if compile else None
        self.produced, self.slot = 0, 0
        self.out: Tensor | None = None

    def prompt(self) -> Prompt:
        self.slot = self.ids.shape[1]
        return Prompt(self.ids, self.am, self.cache_len, static=self.static)

    def next(self, h: Tensor) -> Step | None:
        return Step(self.head, h[:, -1], {"params": self.params, "generator": self.generator, "seen": self.seen})

    def feed(self, tok: Tensor) -> Feed | None:
        if self.seen is not None:
            self.seen[torch.arange(tok.shape[0]), tok] = True
        toks = tok.tolist()   # plain ints: this runs once per token per request when serving
        self.out = torch.where(self.done, torch.full_like(tok, -1), tok) if self.any_done else tok  # what the caller sees
        hit = [t in self.stop_set for t in toks]
        if any(hit):
            self.done |= torch.tensor(hit, device=self.done.device)
            self.any_done = True
        self.produced += 1
        if self.history is not None:
            for row, t in zip(self.history, toks):
                row.append(t)
        if self.produced >= self.max_new or (self.any_done and bool(self.done.all())):
            return None
        if self.slot >= self.cache_len:  # context full: re-encode the last block_size tokens of every row
            ids, am = left_pad([row[-self.block:] for row in self.history], self.pad_id)
            self.slot = ids.shape[1]
            return Feed(prompt=Prompt(ids.to(self.device), am.to(self.device), self.cache_len, static=self.static))
        self.slot += 1
        return Feed(ids=tok[:, None])


@torch.no_grad()
def generate(model, prompts: list[list[int]], params: SamplingParams, head: str = "lm",
             pad_id: int = 0, device=None, compile: bool = False,
             skip: LayerSkip | None = None) -> Iterator[Tensor]:
    """Stream tokens for a batch of prompts (TextSchedule). Yields (B,) token tensors, one per step.

    Rows that hit a stop token keep yielding ``-1``; the loop ends when all rows stop or after
    ``params.max_new_tokens``. Raises ValueError for a prompt longer than the context.
    Past the context, the window slides as in nanoGPT (TextSchedule).
    ``compile=True`` decodes with a static cache of block_size slots and a ``torch.compile``d
    step (same tokens; pays a one-off compile per batch size, then runs faster).
    ``skip``: early exit or FFN skipping per decoded token (backbone/skip.py; inexact).

    The other decoders are schedules on the same loop with the same contract:
    ``speculative.generate_drafted`` (draft and verify) and ``contrastive.generate_contrastive``
    (apps/text/model.py ``generate_tokens`` picks one from its options).
    """
    params.validate()
    if params.penalty_alpha > 0:
        raise ValueError("penalty_alpha selects contrastive search: backbone.contrastive.generate_contrastive")
    if skip is not None:
        if compile:
            raise ValueError("layer skipping changes the graph every step; it does not combine with compile")
        skip.validate(model.args.n_layer).reset()
    schedule = TextSchedule(model, prompts, params, head, pad_id, device, compile, skip)
    for _ in run(model, schedule):
        yield schedule.out

"""Continuous batching over the one generation loop: many requests, one batched decoding step.

Iteration-level scheduling in the spirit of Orca (Yu et al., OSDI 2022) and vLLM's engine: a
request joins the running batch at the next step boundary and leaves as soon as it finishes, so a
short request never waits for a long one. What differs from vLLM: no paged attention. Each running
request owns one row of a pre-allocated KV pool (``max_rows`` x ``max_seq`` slots), and every row
keeps its own positions and slots (the per-row slot writes of backbone/cache.py).

Every request is an ordinary ``Generation`` of a one-row ``Schedule`` (TextSchedule for text and
CIFs, SpeechSchedule for codec tokens, ...), whose cache is a view of its pool row. One engine
step (``BatchEngine.step``):

    1. admit: queued requests take free rows; each is prefilled alone and samples its first token
       (its prefill cache is copied into its row, which its generation then decodes into);
    2. batch: every running generation whose pending feed is one token id is advanced by ONE
       backbone call over the pool's rows: ids (R, 1) at per-row slots and positions, with a mask
       per row (its own slots only, or the schedule's mask, e.g. RALL-E's window). Rows that do
       not take part write a throw-away scratch slot that no request ever reads;
    3. solo: a feed of any other kind (a block, an embedding, a sliding-window re-encode, a
       draft to verify) is advanced by the generation itself, on its row;
    4. sample: each generation's head samples from its own hidden state with its own settings and
       seeded generator, and its schedule turns the sample into the next feed.

Because each row sees exactly its own keys, positions and generator, a request gives what it gives
alone: the same tokens greedily, and the same tokens for a seed when sampling (tests/backbone/
test_batching.py steps staggered requests and compares them with solo runs).

Bounded: ``max_rows`` running rows, ``max_queue`` waiting requests (``submit`` raises QueueFull
beyond it), a per-request deadline, and ``Ticket.cancel`` (a client that went away) frees the row
at the next step boundary. ``max_rows=1`` is the unbatched baseline: one request at a time.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .generate import DecodeState, Generation, Prompt, Schedule, prefill_prompt

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The engine's queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, msg: str, retry_after: float = 1.0):
        super().__init__(msg)
        self.retry_after = retry_after


@dataclass(eq=False)
class Ticket:
    """One submitted request. ``on_sample(x)`` runs on the engine thread for every sample; the
    ticket ends with ``reason`` "done" (its schedule finished), "cancelled", "timeout" or "error"."""
    schedule: Schedule
    on_sample: Callable[[Any], None] | None = None
    deadline: float | None = None            # time.monotonic() after which the request is ended
    on_end: Callable[["Ticket"], None] | None = None
    gen: Generation | None = None
    row: int = -1
    solo: bool = False                       # its cache cannot live in the pool: always stepped alone
    view: Any = None                         # its pool row, as the one-row Cache its generation uses
    samples: int = 0
    reason: str | None = None
    error: BaseException | None = None
    t_submit: float = field(default_factory=time.monotonic)
    t_start: float | None = None
    t_first: float | None = None
    cancelled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)

    def cancel(self):
        """End the request at the next step boundary (thread-safe)."""
        self.cancelled = True

    def result(self, timeout: float | None = None):
        """Wait for the end -> ``schedule.result()``; raises the request's error, or TimeoutError."""
        if not self.finished.wait(timeout):
            raise TimeoutError("the request did not finish in time")
        if self.error is not None:
            raise self.error
        return self.schedule.result()


@dataclass
class EngineStats:
    """Counters for /metrics (read without a lock: each is one int/float written by the engine)."""
    steps: int = 0                 # engine steps that ran a batched backbone call
    samples: int = 0               # samples handed to requests
    rows_hist: collections.Counter = field(default_factory=collections.Counter)  # batched rows per step


class BatchEngine:
    """Continuous batching of one-row generations on one model (see the module docstring).

        engine = BatchEngine(model, max_rows=16).start()        # a background thread
        t = engine.submit(TextSchedule(model, [ids], params), on_sample=print)
        t.result()
    """

    def __init__(self, model, max_rows: int = 32, max_queue: int = 64, max_seq: int | None = None,
                 device=None, name: str = "engine"):
        if max_rows < 1 or max_queue < 0:
            raise ValueError("max_rows must be >= 1 and max_queue >= 0")
        self.model, self.name = model.eval(), name
        self.max_rows, self.max_queue = max_rows, max_queue
        self.max_seq = max_seq or model.args.block_size
        self.scratch = self.max_seq                       # the throw-away slot of idle rows
        self.pool = model.backbone.new_cache(max_rows, self.max_seq + 1, device=device)
        self.rows: list[Ticket | None] = [None] * max_rows
        self.queue: collections.deque[Ticket] = collections.deque()
        self.cv = threading.Condition()
        self.stats = EngineStats()
        self._thread: threading.Thread | None = None
        self._stop = False

    # ---- the client side (any thread) -------------------------------------------------------
    def submit(self, schedule: Schedule, on_sample=None, timeout: float | None = None, on_end=None) -> Ticket:
        """Queue a one-row schedule -> Ticket. Raises QueueFull when ``max_queue`` wait already."""
        t = Ticket(schedule, on_sample, None if timeout is None else time.monotonic() + timeout, on_end)
        with self.cv:
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"{len(self.queue)} requests are already waiting", retry_after=1.0)
            self.queue.append(t)
            self.cv.notify()
        return t

    @property
    def running(self) -> int:
        return sum(t is not None for t in self.rows)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def start(self) -> "BatchEngine":
        """Run ``step`` on a daemon thread until ``stop``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self):
        with self.cv:
            self._stop = True
            self.cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self):
        while True:
            with self.cv:
                while not self._stop and not self.queue and not any(self.rows):
                    self.cv.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception:  # a bug in the engine itself: end everything running, keep serving
                log.exception("engine step failed")
                for t in [t for t in self.rows if t is not None]:
                    self._end(t, "error", RuntimeError("the engine failed; see the server log"))

    # ---- the engine thread ------------------------------------------------------------------
    @torch.inference_mode()   # no autograd bookkeeping per op: the step is mostly small ops
    def step(self) -> bool:
        """One engine step (admit, batch, solo, sample). Returns False when there was nothing to do."""
        now = time.monotonic()
        for t in list(self.rows):
            if t is not None and (t.cancelled or (t.deadline is not None and now > t.deadline)):
                self._end(t, "cancelled" if t.cancelled else "timeout")
        fresh, started = self._admit(now)
        running = [t for t in self.rows if t is not None]
        if not running:
            return bool(self.queue)
        batch = [t for t in running if self._batchable(t)]
        for t in running:
            if t not in batch and t.samples > 0:
                self._sample(t)                                  # 3. advances alone, then samples
        if fresh or batch:
            R = max(t.row for t in self.rows if t is not None) + 1
            T = max([1] + [p.ids.shape[1] for _, p in fresh])
            split = bool(fresh and batch) and R * T > len(fresh) * T + R + self.MIX_SLACK
            if split:
                self._prefill_rows(fresh)                        # padding would cost more than a call
            self._forward(batch, [] if split else fresh)         # 2. one backbone call
        self._sample_batch(started + [t for t, _ in fresh] + batch)   # 4. one head call per head
        return True

    def _admit(self, now: float) -> tuple[list, list]:
        """Queued requests -> free rows -> (fresh: [(ticket, Prompt)] plain prompts that the step's
        forward prefills, started: tickets whose prompts were prefilled alone and moved into their row)."""
        new = []
        with self.cv:
            while self.queue and (self.queue[0].cancelled or
                                  (self.queue[0].deadline is not None and now > self.queue[0].deadline)):
                t = self.queue.popleft()
                self._end(t, "cancelled" if t.cancelled else "timeout")
            while self.queue and None in self.rows:
                t = self.queue.popleft()
                t.row = self.rows.index(None)
                self.rows[t.row] = t
                new.append(t)
        fresh, started = [], []
        for t in new:
            t.gen, t.t_start = Generation(self.model, t.schedule), time.monotonic()
            try:
                p = t.schedule.prompt()
                if self._plain(p):
                    fresh.append((t, p))
                else:                                            # its own prefill, then into its row
                    t.gen.start(*prefill_prompt(self.model, p))
                    self._adopt(t)
                    started.append(t)
            except Exception as e:
                self._end(t, "error", e)
        return fresh, started

    def _plain(self, p: Prompt) -> bool:
        """A one-row token prompt with a causal layout, whose cache fits a pool row."""
        return (p.ids.shape[0] == 1 and p.ids.shape[1] > 0 and p.embeds is None and p.block_ids is None
                and p.positions is None and p.mask is None and not p.static and not self.model.args.prefix_lm
                and (p.attention_mask is None or bool(p.attention_mask.all()))
                and max(p.max_seq, p.ids.shape[1]) <= self.max_seq)

    # A step's new prompts ride in its decoding call (rows x longest prompt positions) unless that pads
    # more than this many positions beyond a separate prefill's (prompts x longest) + the decode rows
    MIX_SLACK = 256

    def _prefill_rows(self, items: list):
        """Prefill plain prompts of different lengths in their own call, right-padded (k, P) into a
        temporary cache, then copied into their pool rows (used when mixing them into the decoding
        call would pad every running row to the longest prompt)."""
        lens = [p.ids.shape[1] for _, p in items]
        P, dev = max(lens), self.pool.layers[0].k_cache.device
        ids = torch.zeros(len(items), P, dtype=torch.long, device=dev)
        for i, (_, p) in enumerate(items):
            ids[i, :lens[i]] = p.ids[0].to(dev)
        pos = torch.arange(P, device=dev)
        tmp = self.model.backbone.new_cache(len(items), P, device=dev)
        h = self.model.backbone(input_ids=ids, positions=pos.expand(len(items), P), mask=None,
                                input_pos=pos, cache=tmp)                                   # (k, P, D)
        for i, (t, p) in enumerate(items):
            self.pool.copy_row(t.row, tmp, src_row=i, length=lens[i])
            self._start_row(t, p, h[i:i + 1, :lens[i]])

    def _start_row(self, t: Ticket, p: Prompt, h):
        """A plain prompt of n tokens now sits at slots 0 .. n-1 of ``t``'s pool row: its generation
        starts from there, decoding into that row. h (1, n, D): the prompt's hidden states."""
        n = p.ids.shape[1]
        t.view = self.pool.view(t.row, max(p.max_seq, n))
        t.gen.start(h, DecodeState(positions=torch.tensor([n], device=h.device), key_valid=None, next_slot=n,
                                   cache=t.view))

    def _forward(self, batch: list[Ticket], fresh: list):
        """One backbone call over pool rows 0 .. R-1 (R, T): every generation in ``batch`` advances by
        its one pending token (column 0), every fresh prompt (T tokens at most) is prefilled at slots
        0 .. P-1 of its row, causally, straight into the pool. Padding positions and rows that take
        no part write the scratch slot, which no real query sees (in the spirit of vLLM's mixed
        prefill/decode batches, without paging)."""
        dev = self.pool.layers[0].k_cache.device
        R = max(t.row for t in self.rows if t is not None) + 1
        T = max([1] + [p.ids.shape[1] for _, p in fresh])
        ids = torch.zeros(R, T, dtype=torch.long)
        positions = torch.zeros(R, T, dtype=torch.long)
        slots = torch.full((R, T), self.scratch, dtype=torch.long)
        for t in batch:
            st = t.gen.state
            ids[t.row, 0], positions[t.row, 0], slots[t.row, 0] = t.gen.pending.ids.reshape(()), st.positions, st.next_slot
        for t, p in fresh:
            n = p.ids.shape[1]
            ids[t.row, :n] = p.ids[0]
            positions[t.row, :n] = slots[t.row, :n] = torch.arange(n)
        ids, positions, slots = ids.to(dev), positions.to(dev), slots.to(dev)
        S = int(slots.max()) + 1
        mask = torch.arange(S, device=dev) <= slots[:, :, None]                   # (R, T, S) own slots so far
        for t in batch:       # a row's own padding or its schedule's mask (RALL-E's window)
            st, f = t.gen.state, t.gen.pending
            n = st.next_slot + 1
            if f.mask is not None:
                mask[t.row, 0, :n] = f.mask.reshape(-1)[:n]
            elif st.key_valid is not None:
                mask[t.row, 0, :n] &= st.key_valid[0, :n]
        h = self.model.backbone(input_ids=ids, positions=positions, mask=mask[:, None],
                                input_pos=slots, cache=self.pool)                      # (R, T, D)
        for t in batch:
            st = t.gen.state
            st.positions, st.next_slot, st.step = st.positions + 1, st.next_slot + 1, st.step + 1
            t.gen.h, t.gen.pending = h[t.row:t.row + 1, :1], None                        # (1, 1, D)
        for t, p in fresh:
            self._start_row(t, p, h[t.row:t.row + 1, :p.ids.shape[1]])
        if batch:
            self.stats.steps += 1
            self.stats.rows_hist[len(batch)] += 1

    def _batchable(self, t: Ticket) -> bool:
        """Is this generation's next input one committed token that the batched step can run?"""
        f, g = t.gen.pending, t.gen
        return (not t.solo and t.samples > 0 and f is not None and f.ids is not None and f.ids.shape == (1, 1)
                and f.commit and f.prompt is None and f.slots is None and f.keep is None
                and g.schedule.step_fn is None and g.state.skip is None)

    def _sample(self, t: Ticket):
        """Let the generation take its whole step alone (advancing alone first if its feed was not
        batched), then hand the sample over."""
        try:
            x = t.gen.step()
        except Exception as e:  # this request's fault: end it alone
            self._end(t, "error", e)
            return
        self._deliver(t, x)

    def _sample_batch(self, batch: list[Ticket]):
        """After the batched advance: every generation names its Step; Steps of one head with one-row
        hidden states sample in one ``head.sample_rows`` call (one projection, per-row draws)."""
        groups: dict[str, list] = {}
        for t in batch:
            try:
                st = t.gen.prepare()
            except Exception as e:
                self._end(t, "error", e)
                continue
            if st is None:
                self._end(t, "done")
                continue
            groups.setdefault(st.head if st.h.dim() == 2 and st.h.shape[0] == 1 else "", []).append((t, st))
        for name, items in groups.items():
            head = self.model.heads[name] if name else None
            xs = None
            if head is not None and hasattr(head, "sample_rows") and len(items) > 1:
                try:
                    xs = head.sample_rows(torch.cat([st.h for _, st in items]), [st.opts for _, st in items])
                except Exception:  # noqa: BLE001 - find the culprit row by sampling each alone
                    xs = None
            for k, (t, st) in enumerate(items):
                try:
                    x = xs[k] if xs is not None else self.model.heads[st.head].sample(st.h, **st.opts)
                    t.gen.take(x)
                except Exception as e:
                    self._end(t, "error", e)
                    continue
                self._deliver(t, x)

    def _deliver(self, t: Ticket, x):
        """A sample was taken: move a fresh cache into the pool, hand the sample to the request,
        end the request when its schedule is finished."""
        try:
            if t.gen.state is not None and not t.solo and not t.gen.done:
                self._adopt(t)
            if x is not None:
                t.samples += 1
                self.stats.samples += 1
                if t.t_first is None:
                    t.t_first = time.monotonic()
                if t.on_sample is not None:
                    t.on_sample(x)
        except Exception as e:  # its callback's fault: end it alone
            self._end(t, "error", e)
            return
        if t.gen.done:
            self._end(t, "done")

    def _adopt(self, t: Ticket):
        """Move a generation's cache into its pool row when it made a fresh one (its prefill, a
        sliding window's re-encode), and make the generation decode into that row from now on."""
        st = t.gen.state
        c = st.cache
        if c is t.view:
            return
        if c.static or c.rows != 1 or c.max_seq > self.max_seq:  # a compiled / batched / long cache
            t.solo = True
            return
        self.pool.copy_row(t.row, c)
        st.cache = t.view = self.pool.view(t.row, c.max_seq)

    def _end(self, t: Ticket, reason: str, error: BaseException | None = None):
        with self.cv:
            if 0 <= t.row < self.max_rows and self.rows[t.row] is t:
                self.rows[t.row] = None
            if t in self.queue:
                self.queue.remove(t)
        if t.reason is not None:
            return
        t.reason, t.error = reason, error
        if t.gen is not None:
            t.gen.done = True
            t.gen.state = None        # the row's view is dropped; a fresh cache is never kept
        t.finished.set()
        if t.on_end is not None:
            try:
                t.on_end(t)
            except Exception:
                log.exception("on_end callback failed")

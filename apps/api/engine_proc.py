"""A token model's BatchEngine in its own process, so decoding and HTTP do not share one GIL.

In the spirit of vLLM's split of an API-server process from its EngineCore process: here the API
process parses requests, detokenizes and writes server-sent events, while a child process holds
the model and runs ``BatchEngine.step`` in a loop. They talk over one pipe:

    parent -> child   ("submit", id, prompt ids, SamplingParams, timeout) | ("cancel", id) | ("stop",)
    child -> parent   one message per engine step: [(id, token) ... (id, None, reason, error)], stats

A request's tokens are exactly the thread engine's (the same BatchEngine, the same schedule).
"""
from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from backbone.batching import BatchEngine, QueueFull
from backbone.container import OmniModel
from backbone.generate import TextSchedule

log = logging.getLogger(__name__)


# The engine is throughput-bound and the API process (detokenizing, writing events) is latency-bound.
# When they compete for cores, the API process going first delivers each step's tokens at once: on
# 2 cores, p95 inter-token latency at 16 streams went from 2.3-4.8x (3 runs) to 1.9-2.3x the 1-stream
# figure, with the same tokens/s (benchmarks/serve_load.py). It only lowers the child's priority.
NICE = 5


@dataclass(eq=False)
class Handle:
    """The parent's view of one request (what ``_Completion`` reads: reason, error, cancel)."""
    id: int
    proxy: "EngineProcess"
    on_sample: object
    on_end: object
    reason: str | None = None
    error: BaseException | None = None

    def cancel(self):
        if self.reason is None:
            self.proxy._send(("cancel", self.id))


@dataclass
class Snapshot:
    """The child engine's counters, as the metrics collector reads them off a BatchEngine."""
    running: int = 0
    waiting: int = 0
    samples: int = 0
    steps: int = 0
    rows_hist: dict = field(default_factory=dict)


class EngineProcess:
    """``BatchEngine(model)`` of checkpoint ``folder`` in a child process; a drop-in for the engine
    attributes the server reads (running, waiting, stats, max_rows, max_queue) plus ``submit``."""

    def __init__(self, folder: str, device: str = "cpu", max_rows: int = 32, max_queue: int = 64,
                 name: str = "engine", threads: int | None = None, nice: int = NICE):
        """``threads``: torch threads of the child (default: all cores but one, which the API
        process needs; OpenMP workers spin between ops and would otherwise take it). ``nice``: the
        child's CPU priority below the API process's (see NICE)."""
        self.max_rows, self.max_queue, self.name = max_rows, max_queue, name
        ctx = mp.get_context("spawn")             # a clean interpreter: no inherited threads or locks
        self.conn, child = ctx.Pipe()
        threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.proc = ctx.Process(target=_child, args=(child, folder, device, max_rows, threads, nice), name=name,
                                daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError(f"{name}: the engine process did not start")
        kind, info = self.conn.recv()
        if kind == "error":
            raise ValueError(info)
        self.block_size = info["block_size"]
        self.stats = Snapshot()
        self.handles: dict[int, Handle] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        self.dead: str | None = None
        threading.Thread(target=self._read, name=f"{name}-reader", daemon=True).start()

    @property
    def running(self) -> int:
        return self.stats.running

    @property
    def waiting(self) -> int:
        return max(0, len(self.handles) - self.max_rows)

    def free(self) -> int:
        return self.max_rows + self.max_queue - len(self.handles)

    def submit(self, ids: list[int], params, timeout: float | None, on_sample, on_end) -> Handle:
        """Queue one request -> Handle; ``on_sample(int)`` / ``on_end(handle)`` run on the reader
        thread. QueueFull when ``max_rows + max_queue`` requests are already in."""
        if self.dead:
            raise RuntimeError(f"the {self.name} engine process is gone ({self.dead})")
        with self.lock:
            if len(self.handles) >= self.max_rows + self.max_queue:
                raise QueueFull(f"{self.waiting} requests are already waiting", retry_after=1.0)
            h = Handle(next(self.ids), self, on_sample, on_end)
            self.handles[h.id] = h
        self._send(("submit", h.id, ids, params, timeout))
        return h

    def _send(self, msg):
        with self.lock:
            try:
                self.conn.send(msg)
            except (OSError, ValueError) as e:
                self.dead = self.dead or f"pipe closed: {e}"

    def _read(self):
        while True:
            try:
                items, snap = self.conn.recv()
            except (EOFError, OSError) as e:
                self.dead = self.dead or f"exited ({e.__class__.__name__})"
                for h in list(self.handles.values()):
                    self._finish(h, "error", RuntimeError("the engine process exited"))
                return
            if snap is not None:
                self.stats = snap
            for item in items:
                h = self.handles.get(item[0])
                if h is None:
                    continue
                if item[1] is not None:
                    h.on_sample(item[1])
                else:
                    self._finish(h, item[2], RuntimeError(item[3]) if item[3] else None)

    def _finish(self, h: Handle, reason: str, error):
        with self.lock:
            self.handles.pop(h.id, None)
        h.reason, h.error = reason, error
        h.on_end(h)

    def stop(self):
        self._send(("stop",))
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


def _child(conn, folder: str, device: str, max_rows: int, threads: int, nice: int):
    """The engine process: load, say ready, then alternate reading requests and engine steps."""
    try:
        torch.set_num_threads(threads)
        model = OmniModel.from_pretrained(folder, device=device).eval()
        engine = BatchEngine(model, max_rows=max_rows, max_queue=1_000_000)
    except Exception as e:  # noqa: BLE001 - reported to the parent as a one-line error
        conn.send(("error", f"{folder}: {type(e).__name__}: {e}"))
        return
    # The collector's full passes over every live object (the model's modules and tensors included)
    # stall a decoding step for milliseconds: move what exists now out of its reach and collect
    # the young generation less often (what is allocated per step is freed by reference counting).
    gc.freeze()
    gc.set_threshold(50_000, 20, 1000)
    if nice:
        os.nice(nice)
    conn.send(("ready", {"block_size": model.args.block_size}))
    out: list = []
    tickets = {}
    last_snap = 0.0

    def on_sample(rid):
        return lambda x: out.append((rid, int(x.reshape(-1)[0])))

    def on_end(rid):
        def end(t):
            tickets.pop(rid, None)
            err = None if t.error is None else f"{type(t.error).__name__}: {t.error}"
            out.append((rid, None, t.reason, err))
        return end

    torch.set_grad_enabled(False)
    while True:
        busy = engine.running or engine.waiting
        while conn.poll(0 if busy else None):
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg[0] == "stop":
                return
            if msg[0] == "cancel":
                t = tickets.get(msg[1])
                if t is not None:
                    t.cancel()
            else:
                _, rid, ids, params, timeout = msg
                try:
                    tickets[rid] = engine.submit(TextSchedule(model, [ids], params), on_sample(rid), timeout,
                                                 on_end(rid))
                except Exception as e:  # noqa: BLE001 - a request the schedule refuses
                    out.append((rid, None, "error", f"{type(e).__name__}: {e}"))
            busy = True
        engine.step()
        now = time.monotonic()
        snap = None
        idle = not (engine.running or engine.waiting)
        if idle or now - last_snap > 0.25:      # counters for /metrics, and always on going idle
            s = engine.stats
            snap = Snapshot(engine.running, engine.waiting, s.samples, s.steps, dict(s.rows_hist))
            last_snap = now
        if out or snap is not None:
            try:
                conn.send((out, snap))
            except (OSError, ValueError):
                return
            out = []

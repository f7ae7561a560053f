"""``omniar serve``: one FastAPI process, OpenAI's HTTP API where OpenAI has one, on 127.0.0.1.

    GET  /v1/models                 the loaded checkpoints
    POST /v1/completions            text and CIF checkpoints; ``stream: true`` = server-sent events
    POST /v1/images/generations     b64_json PNGs (+ steps, cfg, temperature, seed, rerank)
    POST /v1/audio/speech           audio/wav
    POST /v1/forecast               apps/forecast/api.py's schema
    GET  /health, /docs, /metrics   (Prometheus text: queue depth, batch rows, tokens, latencies)

Token models decode with continuous batching (backbone/batching.py); images and forecasts are
micro-batched (apps/api/workers.py). Everything is bounded: body size (413), queue length (429 +
Retry-After), rows per batch, tokens per request, seconds per request; a client that disconnects
is dropped from the batch at the next step. Errors are OpenAI's error JSON, never a traceback.
The process keeps no state between requests: replicas scale out behind any load balancer.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from apps.api import errors, metrics
from apps.api.errors import APIError
from apps.api.schemas import VOICES, CompletionRequest, ImageRequest, SpeechRequest
from apps.api.workers import QueueFull, SpeechWorker, TokenWorker
from apps.forecast.api import ForecastRequest, ForecastResponse
from apps.text.model import TextStream
from backbone.sampling import SamplingParams


@dataclass
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_tokens: int = 1024           # per choice
    request_timeout: float = 120.0   # seconds per request, queueing included
    max_rows: int = 32               # rows per continuous batch (1 = batching off)
    max_queue: int = 64              # waiting requests per model; beyond: 429
    window_s: float = 0.02           # micro-batching window (images, forecasts)


def _busy(e: QueueFull) -> APIError:
    return APIError(429, f"the server is busy ({e}); retry later", code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, round(e.retry_after)))})


def build_app(workers: dict, limits: Limits | None = None) -> FastAPI:
    """workers: {model name: TokenWorker | SpeechWorker | ImageWorker | ForecastWorker}."""
    limits = limits or Limits()
    app = FastAPI(title="OmniAR", version="1", description=__doc__.split("\n")[0])
    errors.install(app, validation_status=400, paths_422=("/v1/forecast",))
    app.add_middleware(errors.BodyLimit, max_bytes=limits.max_body_bytes)
    m = metrics.Metrics(workers)
    app.add_middleware(metrics.Observe, metrics=m)      # pure ASGI: no per-chunk cost on streams
    app.state.workers, app.state.limits, app.state.metrics, app.state.outbox = workers, limits, m, None

    def pick(name: str | None, kinds: tuple[str, ...]):
        if name is None:
            w = next((w for w in workers.values() if w.kind in kinds), None)
            if w is None:
                raise APIError(404, f"this server has no {'/'.join(kinds)} model", "model", "model_not_found")
            return w
        w = workers.get(name)
        if w is None:
            raise APIError(404, f"the model {name[:200]!r} does not exist; GET /v1/models lists them",
                           "model", "model_not_found")
        if w.kind not in kinds:
            raise APIError(400, f"{name!r} is a {w.kind} model; this endpoint needs a {'/'.join(kinds)} model", "model")
        return w

    @app.get("/health")
    def health():
        return {"status": "ok", "models": {n: {"kind": w.kind, "waiting": getattr(w, "waiting", 0),
                                               "running": getattr(getattr(w, "engine", None), "running", 0)}
                                           for n, w in workers.items()}}

    @app.get("/metrics")
    def prometheus():
        return Response(m.render(), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "omniar",
                                            "kind": w.kind} for n, w in workers.items()]}

    # ---- completions ----------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        w = pick(req.model, ("text", "cif"))
        if req.max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {req.max_tokens}; this server's limit is {limits.max_tokens}",
                           "max_tokens")
        try:
            ids = [w.encode(p) for p in req.prompts]
        except ValueError as e:
            raise APIError(400, str(e), "prompt") from None
        rows = [(i, p, c) for i, p in enumerate(ids) for c in range(req.n)]     # choice index i*n + c
        if len(rows) > w.free_queue():
            raise _busy(QueueFull(f"{len(rows)} rows asked, {w.free_queue()} queue places free"))
        outbox = app.state.outbox
        if outbox is None or outbox.loop is not asyncio.get_running_loop():
            outbox = app.state.outbox = _Outbox(asyncio.get_running_loop())
        shared: asyncio.Queue = asyncio.Queue()
        tickets, streams = [], []
        try:
            for k, (i, p, c) in enumerate(rows):
                params = SamplingParams(temperature=req.temperature, top_p=req.top_p if req.top_p < 1 else None,
                                        top_k=req.top_k, repetition_penalty=req.repetition_penalty,
                                        max_new_tokens=req.max_tokens, stop_strings=req.stops,
                                        stop_tokens=[w.eos] if w.eos is not None else [],
                                        seed=None if req.seed is None else req.seed + c)
                sink = _Tagged(shared, k, outbox)
                tickets.append(w.submit(p, params, limits.request_timeout, sink.on_sample, sink.on_end))
                streams.append(TextStream(w.tok, params))
        except QueueFull as e:
            for t in tickets:
                t.cancel()
            raise _busy(e) from None
        except RuntimeError as e:                      # the engine process is gone
            raise APIError(503, f"the model is unavailable ({e})") from None
        run = _Completion(req, w, rows, tickets, streams, shared, m)
        if req.stream:
            return StreamingResponse(run.sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await run.whole(request)

    # ---- images ---------------------------------------------------------------------------
    @app.post("/v1/images/generations")
    async def images(req: ImageRequest):
        w = pick(req.model, ("image",))
        try:
            w.check(req.prompt, req.size)
        except ValueError as e:
            raise APIError(400, str(e), "size" if "size" in str(e) else "prompt") from None
        key = (req.steps, req.cfg, req.temperature, req.rerank,
               None if req.seed is None else (req.seed, uuid.uuid4().hex))
        try:
            pngs = await w.batcher.run(key, [req.prompt] * req.n, limits.request_timeout)
        except QueueFull as e:
            raise _busy(e) from None
        except TimeoutError as e:
            raise APIError(504, str(e)) from None
        # revised_prompt (as DALL-E 3's: what was drawn): a layout checkpoint's plan, else None
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(p).decode(),
                          "revised_prompt": f"{req.prompt}; layout: {plan}" if plan else None} for p, plan in pngs]}

    # ---- speech ---------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(req: SpeechRequest):
        w: SpeechWorker = pick(req.model, ("speech",))
        seed = VOICES.index(req.voice) if req.seed is None else req.seed
        try:
            res = await anyio.to_thread.run_sync(w.speak, req.input, seed, req.temperature, limits.request_timeout)
        except ValueError as e:
            raise APIError(400, str(e), "input") from None
        except QueueFull as e:
            raise _busy(e) from None
        except TimeoutError as e:
            raise APIError(504, str(e)) from None
        import soundfile as sf
        buf = io.BytesIO()
        sf.write(buf, res.wav, res.sample_rate, format="WAV", subtype="PCM_16")
        return Response(buf.getvalue(), media_type="audio/wav")

    # ---- forecasts ------------------------------------------------------------------------
    @app.post("/v1/forecast", response_model=ForecastResponse)
    async def forecast(req: ForecastRequest):
        w = pick(req.model, ("forecast",))
        series = [np.array([np.nan if x is None else x for x in s], dtype=np.float64) for s in req.series]
        try:
            w.check(series, req.horizon, req.quantiles)
        except ValueError as e:
            raise APIError(422, str(e)) from None
        stamps = req.timestamps or [None] * len(series)
        key = (req.horizon, tuple(req.quantiles), req.freq, req.timestamps is not None)
        try:
            out = await w.batcher.run(key, [(s, t, req.season) for s, t in zip(series, stamps)], limits.request_timeout)
        except QueueFull as e:
            raise _busy(e) from None
        except TimeoutError as e:
            raise APIError(504, str(e)) from None
        except ValueError as e:
            raise APIError(422, str(e)) from None
        return ForecastResponse(quantiles=req.quantiles, forecast=[o.tolist() for o in out])

    return app


class _Tagged:
    """Engine thread -> event loop. The rows of one request share a queue: items are (row, token),
    and (row, None) at the row's end. Items wait in a list and the loop is woken once per batch of
    them (not once per token): with 16 streams that is one wake-up per engine step, not 16."""

    def __init__(self, q: asyncio.Queue, row: int, outbox: "_Outbox"):
        self.q, self.row, self.outbox = q, row, outbox

    def on_sample(self, tok: int):
        self.outbox.put(self.q, (self.row, tok))

    def on_end(self, ticket):
        self.outbox.put(self.q, (self.row, None))


class _Outbox:
    """Items for asyncio queues, handed over from other threads in batches."""

    def __init__(self, loop):
        self.loop, self.items, self.lock, self.armed = loop, [], threading.Lock(), False

    def put(self, q: asyncio.Queue, item):
        with self.lock:
            self.items.append((q, item))
            if self.armed:
                return
            self.armed = True
        self.loop.call_soon_threadsafe(self._flush)

    def _flush(self):
        with self.lock:
            items, self.items, self.armed = self.items, [], False
        for q, item in items:
            q.put_nowait(item)


class _Completion:
    """One completion request in flight: turns its rows' tokens into choices, streamed or whole."""

    def __init__(self, req: CompletionRequest, w: TokenWorker, rows, tickets, streams, q, m):
        self.req, self.w, self.rows, self.tickets, self.streams, self.q, self.m = req, w, rows, tickets, streams, q, m
        self.id, self.created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.texts = [req.prompts[i] if req.echo else "" for i, _, _ in rows]
        self.counts = [0] * len(rows)
        self.finish: list[str | None] = [None] * len(rows)
        self.t0 = time.perf_counter()
        self.last = [None] * len(rows)
        self._head = None
        self.observe = m.token_observer(w.name)

    def _on(self, k: int, tok: int | None) -> str:
        """Apply one queue item -> the text piece it releases ("" if none)."""
        ts, t = self.streams[k], self.tickets[k]
        if tok is None:                                       # the row ended
            if t.reason == "error":
                raise APIError(500, f"generation failed ({type(t.error).__name__}); see the server log")
            piece = ts.flush()
            self.finish[k] = "stop" if ts.stopped else "length"
            return piece
        if tok < 0 or self.finish[k] is not None:
            return ""
        now = time.perf_counter()
        self.observe(now - (self.last[k] or self.t0), self.last[k] is None)
        self.last[k] = now
        self.counts[k] += 1
        piece = ts.push(tok)
        if ts.stopped:                                        # a stop string: the row ends here
            t.cancel()
        return piece

    def _chunk(self, k: int, text: str, finish: str | None) -> str:
        """One SSE event: ``data: {"id", "object": "text_completion", ..., "choices": [...]}``. The
        fixed part is formatted once per request (this runs once per token per stream)."""
        if self._head is None:
            self._head = (f'data: {{"id": "{self.id}", "object": "text_completion", "created": {self.created}, '
                          f'"model": {json.dumps(self.w.name)}, "choices": [{{"text": ')
        return (f'{self._head}{json.dumps(text)}, "index": {k}, "logprobs": null, '
                f'"finish_reason": {json.dumps(finish)}}}]}}\n\n')

    def _usage(self) -> dict:
        prompt = sum(len(p) for _, p, c in self.rows if c == 0)
        done = sum(self.counts)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    async def sse(self):
        """Server-sent events, one chunk per released piece, a final chunk per choice, [DONE]."""
        open_rows = len(self.rows)
        try:
            if self.req.echo:
                for k, text in enumerate(self.texts):
                    yield self._chunk(k, text, None)
            while open_rows:
                items = [await self.q.get()]
                while not self.q.empty():                    # what arrived meanwhile goes in one write
                    items.append(self.q.get_nowait())
                out = []
                for k, tok in items:
                    try:
                        piece = self._on(k, tok)
                    except APIError as e:
                        yield "".join(out) + f"data: {json.dumps({'error': {'message': e.message, 'type': 'server_error'}})}\n\n"
                        return
                    if piece:
                        out.append(self._chunk(k, piece, None))
                    if tok is None:
                        open_rows -= 1
                        out.append(self._chunk(k, "", self.finish[k]))
                if out:
                    yield "".join(out)
            if self.req.stream_options is not None and self.req.stream_options.include_usage:
                body = {"id": self.id, "object": "text_completion", "created": self.created,
                        "model": self.w.name, "choices": [], "usage": self._usage()}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:                                              # the client went away: free the rows
            for t in self.tickets:
                t.cancel()

    async def whole(self, request: Request) -> dict:
        """Wait for every row (checking for a disconnected client each second) -> the response."""
        open_rows = len(self.rows)
        try:
            while open_rows:
                try:
                    k, tok = await asyncio.wait_for(self.q.get(), 1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise APIError(499, "the client closed the request") from None
                    continue
                self.texts[k] += self._on(k, tok)
                open_rows -= tok is None
        finally:
            for t in self.tickets:
                t.cancel()
        choices = [{"text": text, "index": k, "logprobs": None, "finish_reason": self.finish[k]}
                   for k, text in enumerate(self.texts)]
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.w.name,
                "choices": choices, "usage": self._usage()}

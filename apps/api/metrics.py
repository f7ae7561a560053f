"""Prometheus metrics of ``omniar serve`` (prometheus_client, one registry per app).

    omniar_requests_total{path,status}          omniar_request_seconds{path}       (histogram)
    omniar_time_to_first_token_seconds{model}   omniar_inter_token_seconds{model}  (histograms)
    omniar_generated_tokens_total{model}        omniar_tokens_per_second{model}    (since the last scrape)
    omniar_queue_depth{model}                   omniar_running_rows{model}
    omniar_batch_rows{model}                    (histogram: rows per batched engine step)
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
KNOWN_PATHS = ("/v1/completions", "/v1/images/generations", "/v1/audio/speech", "/v1/forecast", "/v1/models",
               "/health", "/metrics")


class _Engines:
    """A collector that reads the workers' engines at scrape time (no work on the hot path)."""

    def __init__(self, workers: dict):
        self.workers = workers
        self.last: dict[str, tuple[float, int]] = {}

    def collect(self):
        depth = GaugeMetricFamily("omniar_queue_depth", "requests waiting", labels=["model"])
        running = GaugeMetricFamily("omniar_running_rows", "rows in the running batch", labels=["model"])
        rate = GaugeMetricFamily("omniar_tokens_per_second", "samples per second since the last scrape",
                                 labels=["model"])
        rows = HistogramMetricFamily("omniar_batch_rows", "rows per batched engine step", labels=["model"])
        for name, w in self.workers.items():
            depth.add_metric([name], getattr(w, "waiting", 0))
            engine = getattr(w, "engine", None)
            if engine is None:
                continue
            running.add_metric([name], engine.running)
            now, n = time.monotonic(), engine.stats.samples
            t0, n0 = self.last.get(name, (now, n))
            rate.add_metric([name], (n - n0) / (now - t0) if now > t0 else 0.0)
            self.last[name] = (now, n)
            hist = dict(engine.stats.rows_hist)
            buckets, acc = [], 0
            for b in ROW_BUCKETS:
                acc = sum(c for r, c in hist.items() if r <= b)
                buckets.append((str(b), acc))
            buckets.append(("+Inf", sum(hist.values())))
            rows.add_metric([name], buckets, sum(r * c for r, c in hist.items()))
        yield from (depth, running, rate, rows)


class Metrics:
    def __init__(self, workers: dict):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("omniar_requests", "HTTP requests", ["path", "status"], registry=r)
        self.latency = Histogram("omniar_request_seconds", "request latency (for streams: until the "
                                 "response starts)", ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("omniar_time_to_first_token_seconds", "time to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("omniar_inter_token_seconds", "time between a row's tokens", ["model"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("omniar_generated_tokens", "tokens generated", ["model"], registry=r)
        r.register(_Engines(workers))

    def request(self, path: str, status: int, seconds: float):
        path = path if path in KNOWN_PATHS else "other"      # unbounded label values are a DoS
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def token_observer(self, model: str):
        """-> observe(seconds, first): record one streamed token of ``model`` (label lookups done once)."""
        ttft, itl, tokens = self.ttft.labels(model), self.itl.labels(model), self.tokens.labels(model)

        def observe(seconds: float, first: bool):
            (ttft if first else itl).observe(seconds)
            tokens.inc()
        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Observe:
    """ASGI middleware: count requests and time them until the response starts (pure ASGI, so a
    stream's chunks pass straight through; Starlette's BaseHTTPMiddleware would re-queue each)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")

        async def timed_send(msg):
            if msg["type"] == "http.response.start":
                self.metrics.request(path, msg["status"], time.perf_counter() - t0)
            await send(msg)
        await self.app(scope, receive, timed_send)

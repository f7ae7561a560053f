"""Load test of ``omniar serve`` (issue 18): concurrent streaming clients on the shipped text model.

For each server configuration it starts a fresh ``omniar serve`` process and, for 1, 4, 16 and 64
concurrent clients, runs a closed loop for ``--seconds``: every client sends a streaming
completion (16-character Shakespeare prompt, ``--max-tokens`` tokens, temperature 0.8, its own
seed), reads it to the end, and sends the next. Measured at the client: aggregate tokens/s, time
to first token and inter-token latency (p50/p95), errors; at the server: peak RSS (VmHWM, the API process plus its engine processes).

    python benchmarks/serve_load.py [--seconds 10] [--clients 1 4 16 64] [--soak 300] [--replicas]

Configurations:
  * ``batched``:  the server as shipped (continuous batching, --max-rows 64);
  * ``off``:      the same server with ``--no-batching`` (one row at a time, the old behaviour);
  * anchors:      HF transformers on the same weights exported as Llama: its continuous batching
                  (``init_continuous_batching``) and its static-batch ``generate``, in-process
                  (no HTTP: a lower bound on what a server around them would cost);
  * ``mixed``:    all shipped models in one server; text, CIF, image and forecast clients together;
  * ``replicas``: two servers on two ports behind a round-robin client (what a load balancer does);
  * ``soak``:     16 clients for ``--soak`` seconds, server RSS sampled every 10 s.

The load generator runs in this process (asyncio, uvloop, hand-spoken HTTP/1.1) on the same 2 cores as the server, so it
takes its share of the CPU in every configuration alike. Writes benchmarks/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402

TEXT = "assets/text-shakespeare"
MIXED = ["assets/text-shakespeare", "assets/crystal-cif", "assets/t2i-shapes", "assets/forecast-zeroshot"]


def prompts(n: int = 256, chars: int = 16) -> list[str]:
    text = (ROOT.parent / "shared/data/tinyshakespeare.txt").read_text()
    rnd = random.Random(0)
    return [text[s:s + chars] for s in (rnd.randrange(0, len(text) - chars) for _ in range(n))]


def start_server(models: list[str], extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [a for m in models for a in ("--model", m)]
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--port", str(port), *args, *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(base + "/health", timeout=1)
            return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read())
            time.sleep(0.3)
    raise RuntimeError("server did not start")


def _children(pid: int) -> list[int]:
    out = []
    for t in Path(f"/proc/{pid}/task").iterdir():
        for c in (t / "children").read_text().split():
            out += [int(c), *_children(int(c))]
    return out


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The server's memory: ``field`` (VmHWM = peak, VmRSS = now) summed over it and its engine
    processes."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


class Stats:
    def __init__(self):
        self.tokens, self.requests, self.errors = 0, 0, 0
        self.ttft, self.itl, self.latency = [], [], []

    def summary(self, seconds: float) -> dict:
        pct = lambda xs, q: float(np.percentile(xs, q) * 1000) if xs else float("nan")  # noqa: E731
        return {"tokens_per_s": self.tokens / seconds, "requests": self.requests, "errors": self.errors,
                "ttft_p50_ms": pct(self.ttft, 50), "ttft_p95_ms": pct(self.ttft, 95),
                "itl_p50_ms": pct(self.itl, 50), "itl_p95_ms": pct(self.itl, 95),
                "latency_p50_ms": pct(self.latency, 50), "latency_p95_ms": pct(self.latency, 95)}


class Conn:
    """One keep-alive HTTP/1.1 connection, spoken by hand: the load generator shares the server's two
    cores, so it reads server-sent events with byte checks instead of httpx + a JSON parse per
    token (about a third of the CPU)."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.r = self.w = None

    async def post_stream(self, path: str, body: dict, on_event):
        """POST ``body``; ``on_event(bytes)`` for every SSE event -> HTTP status."""
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        status = int((await self.r.readline()).split()[1])
        headers = {}
        while (line := await self.r.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding") != "chunked":
            await self.r.readexactly(int(headers.get("content-length", 0)))
            return status
        buf = b""
        while True:
            size = int((await self.r.readline()).strip(), 16)
            chunk = await self.r.readexactly(size + 2)
            if size == 0:
                return status
            buf += chunk[:-2]
            *events, buf = buf.split(b"\n\n")
            for ev in events:
                on_event(ev)

    def close(self):
        if self.w is not None:
            self.w.close()


async def stream_one(conn: Conn, body: dict, st: Stats):
    t0 = time.perf_counter()
    state = {"last": None, "n": 0, "error": False}

    def on_event(ev: bytes):
        if b'"usage"' in ev:
            state["n"] = json.loads(ev[6:])["usage"]["completion_tokens"]
        elif ev.startswith(b'data: {"id"') and b'"choices": [{"text": ""' not in ev:   # a token's text
            now = time.perf_counter()
            last = state["last"]
            (st.ttft if last is None else st.itl).append(now - (t0 if last is None else last))
            state["last"] = now
        elif b'"error"' in ev:
            state["error"] = True
    try:
        status = await conn.post_stream("/v1/completions", body, on_event)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        conn.close()
        conn.w = None
        status = 0
    if status != 200 or state["error"]:
        st.errors += 1
        return
    st.tokens += state["n"]
    st.requests += 1
    st.latency.append(time.perf_counter() - t0)


async def text_clients(bases: list[str], n_clients: int, seconds: float, max_tokens: int, model: str,
                       ps: list[str]) -> Stats:
    st = Stats()
    stop_at = time.perf_counter() + seconds

    async def client_loop(c: int):
        conns = [Conn(b) for b in bases]
        k = 0
        while time.perf_counter() < stop_at:
            body = {"model": model, "prompt": ps[(c * 31 + k) % len(ps)], "max_tokens": max_tokens,
                    "temperature": 0.8, "seed": c * 1000 + k, "stream": True,
                    "stream_options": {"include_usage": True}}
            await stream_one(conns[(c + k) % len(conns)], body, st)
            k += 1
        for conn in conns:
            conn.close()
    await asyncio.gather(*(client_loop(c) for c in range(n_clients)))
    return st


def run_text(name: str, extra: list[str], a, ps) -> list[dict]:
    proc, base = start_server([TEXT], extra)
    rows = []
    try:
        asyncio.run(text_clients([base], 2, 2.0, a.max_tokens, "text-shakespeare", ps))     # warm-up
        for n in a.clients:
            t0 = time.perf_counter()
            st = asyncio.run(text_clients([base], n, a.seconds, a.max_tokens, "text-shakespeare", ps))
            row = {"server": name, "clients": n, **st.summary(time.perf_counter() - t0),
                   "peak_rss_mb": rss_mb(proc.pid)}
            rows.append(row)
            print(f"  {name:8s} {n:3d} clients: {row['tokens_per_s']:8.1f} tok/s  "
                  f"itl p95 {row['itl_p95_ms']:.1f} ms  errors {row['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def run_hf(a, ps) -> list[dict]:
    from benchmarks.baselines import hf_serving
    from modalities.text import load_tokenizer
    tok = load_tokenizer(ROOT / TEXT)
    folder = hf_serving.export_llama(str(ROOT / TEXT))
    rows = []
    for n in a.clients:
        ids = [tok.encode(p) for p in ps[:n]]
        for kind, fn in (("hf-continuous", hf_serving.hf_continuous), ("hf-static", hf_serving.hf_static)):
            r = fn(folder, ids, a.max_tokens, 0.8, 0)
            row = {"server": kind, "clients": n, "tokens_per_s": r.get("tokens_per_s", float("nan")),
                   "errors": r.get("errors", 0), "note": r.get("error") or r.get("note", "")}
            rows.append(row)
            print(f"  {kind:13s} {n:3d} requests at once: {row['tokens_per_s']:8.1f} tok/s", flush=True)
    return rows


async def mixed_clients(base: str, seconds: float, ps: list[str]) -> dict:
    stats = {k: Stats() for k in ("text", "cif", "image", "forecast")}
    stop_at = time.perf_counter() + seconds
    x = (np.sin(np.arange(512) / 24 * 2 * np.pi) * 3 + 10).tolist()
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        async def post_loop(kind: str, path: str, body: dict):
            st = stats[kind]
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await client.post(base + path, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                st.requests += ok
                st.errors += not ok
                st.latency.append(time.perf_counter() - t0)

        async def text_loop(c, model, prompt, max_tokens):
            k, conn = 0, Conn(base)
            while time.perf_counter() < stop_at:
                body = {"model": model, "prompt": prompt if prompt else ps[(c * 7 + k) % len(ps)],
                        "max_tokens": max_tokens, "temperature": 0.8, "seed": k, "stream": True,
                        "stream_options": {"include_usage": True}}
                await stream_one(conn, body, stats["text" if model.startswith("text") else "cif"])
                k += 1
            conn.close()
        jobs = [text_loop(c, "text-shakespeare", None, 48) for c in range(8)]
        jobs += [text_loop(c, "crystal-cif", "data_NaCl\n", 96) for c in range(4)]
        jobs += [post_loop("image", "/v1/images/generations", {"prompt": "a red circle", "steps": 10})
                 for _ in range(2)]
        jobs += [post_loop("forecast", "/v1/forecast", {"series": [x], "horizon": 24}) for _ in range(2)]
        t0 = time.perf_counter()
        await asyncio.gather(*jobs)
        dt = time.perf_counter() - t0
    out = {}
    for k, st in stats.items():
        s = st.summary(dt)
        s["requests_per_s"] = st.requests / dt
        out[k] = s
    return out


def run_mixed(a, ps, extra: list[str], name: str) -> dict:
    proc, base = start_server(MIXED, extra)
    try:
        asyncio.run(mixed_clients(base, 3.0, ps))
        res = asyncio.run(mixed_clients(base, a.seconds * 2, ps))
        res["peak_rss_mb"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    for k in ("text", "cif", "image", "forecast"):
        r = res[k]
        print(f"  mixed/{name:7s} {k:8s}: {r['requests_per_s']:6.2f} req/s  p95 {r['latency_p95_ms']:8.1f} ms  "
              f"errors {r['errors']}" + (f"  {r['tokens_per_s']:.0f} tok/s" if k in ("text", "cif") else ""))
    return res


def run_replicas(a, ps) -> list[dict]:
    """Two replicas (one engine thread each) on two ports, clients alternate between them."""
    procs = [start_server([TEXT], ["--max-rows", "64"]) for _ in range(2)]
    rows = []
    try:
        bases = [b for _, b in procs]
        asyncio.run(text_clients(bases, 2, 2.0, a.max_tokens, "text-shakespeare", ps))
        for n in (16,):
            t0 = time.perf_counter()
            st = asyncio.run(text_clients(bases, n, a.seconds, a.max_tokens, "text-shakespeare", ps))
            rows.append({"server": "2 replicas", "clients": n, **st.summary(time.perf_counter() - t0),
                         "peak_rss_mb": sum(rss_mb(p.pid) for p, _ in procs)})
            print(f"  2 replicas {n} clients: {rows[-1]['tokens_per_s']:.1f} tok/s errors {rows[-1]['errors']}")
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(30)
    return rows


def run_soak(a, ps) -> dict:
    proc, base = start_server([TEXT], ["--max-rows", "64"])
    samples = []
    try:
        async def soak():
            task = asyncio.create_task(text_clients([base], 16, a.soak, a.max_tokens, "text-shakespeare", ps))
            while not task.done():
                samples.append((round(time.perf_counter() - t0, 1), rss_mb(proc.pid, "VmRSS")))
                await asyncio.sleep(10)
            return await task
        t0 = time.perf_counter()
        st = asyncio.run(soak())
    finally:
        proc.terminate()
        proc.wait(30)
    first, last = samples[1][1] if len(samples) > 1 else samples[0][1], samples[-1][1]
    out = {"seconds": a.soak, "rss_mb": samples, "rss_growth_mb": last - first, "errors": st.errors,
           "tokens_per_s": st.tokens / a.soak}
    print(f"  soak {a.soak:.0f}s: RSS {first:.0f} -> {last:.0f} MB, errors {st.errors}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per load level (default %(default)s)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=48, help="per request; 16 + 48 fits the 64-token context")
    ap.add_argument("--soak", type=float, default=0, help="also soak 16 clients for this many seconds")
    ap.add_argument("--skip", nargs="*", default=[], choices=["off", "hf", "mixed", "replicas"])
    a = ap.parse_args(argv)
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())   # the server's loop too (uvicorn picks it)
    ps = prompts()
    result = {"machine": common.machine_info(), "args": vars(a), "text": [], "mixed": {}}
    print("text model, streaming clients:")
    result["text"] += run_text("batched", ["--max-rows", "64"], a, ps)
    if "off" not in a.skip:
        result["text"] += run_text("off", ["--no-batching", "--max-queue", "256"], a, ps)
    if "hf" not in a.skip:
        result["text"] += run_hf(a, ps)
    if "replicas" not in a.skip:
        result["text"] += run_replicas(a, ps)
    if "mixed" not in a.skip:
        result["mixed"]["batched"] = run_mixed(a, ps, ["--max-rows", "64"], "batched")
        if "off" not in a.skip:
            result["mixed"]["off"] = run_mixed(a, ps, ["--no-batching", "--max-queue", "256"], "off")
    if a.soak:
        result["soak"] = run_soak(a, ps)
    rows = result["text"]
    one = {r["server"]: r["tokens_per_s"] for r in rows if r["clients"] == 1}
    for r in rows:
        r["x_vs_1_client"] = r["tokens_per_s"] / one.get(r["server"], float("nan"))
    cols = ["server", "clients", "tokens_per_s", "x_vs_1_client", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms",
            "itl_p95_ms", "errors", "peak_rss_mb"]
    common.print_table(rows, cols)
    b = {r["clients"]: r for r in rows if r["server"] == "batched"}
    hf = {r["clients"]: r for r in rows if r["server"] == "hf-continuous"}
    if 16 in b and 1 in b:
        result["targets"] = {
            "x16_vs_1": b[16]["tokens_per_s"] / b[1]["tokens_per_s"],
            "itl_p95_16_over_1": b[16]["itl_p95_ms"] / b[1]["itl_p95_ms"],
            "vs_hf_continuous_16": b[16]["tokens_per_s"] / hf[16]["tokens_per_s"] if 16 in hf else None,
            "errors": sum(r.get("errors", 0) for r in rows if r["server"] == "batched")}
        print("targets:", json.dumps(result["targets"]))
    print("wrote", common.write_result("serve_load", result))


if __name__ == "__main__":
    main()

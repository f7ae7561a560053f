"""The continuous-batching engine alone (no HTTP) on any device: tokens/s against rows, and batched == solo.

    python benchmarks/engine_rows.py [--device cuda] [--rows 1 16 64 256] [--model assets/text-shakespeare]

For each row count N: N requests (16-character Shakespeare prompts, 48 new tokens, temperature 0.8,
seed per request) are submitted at once to a ``BatchEngine`` with N rows and stepped to the end,
three times; the baseline is the same N requests one at a time (``max_rows=1``, what the server's
``--no-batching`` does), timed on the first min(N, 8) requests and scaled. Before timing, every
row's tokens are checked equal to its solo run on that device. Writes
benchmarks/results/engine_rows[_<device>].json (this is how the engine was run on a GPU: one replica
per device is this engine with ``device=cuda:k``).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backbone.batching import BatchEngine  # noqa: E402
from backbone.container import OmniModel  # noqa: E402
from backbone.generate import TextSchedule, run  # noqa: E402
from backbone.sampling import SamplingParams  # noqa: E402
from benchmarks import common  # noqa: E402
from modalities.text import load_tokenizer  # noqa: E402


def requests(tok, n: int, max_new: int, path: Path) -> list:
    text = path.read_text()
    rnd = random.Random(0)
    starts = [rnd.randrange(0, len(text) - 16) for _ in range(n)]
    return [(tok.encode(text[s:s + 16]), SamplingParams(temperature=0.8, max_new_tokens=max_new, seed=i))
            for i, s in enumerate(starts)]


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def serve(model, reqs, rows: int, device) -> tuple[float, list]:
    """All requests through one engine -> (seconds, tokens per request)."""
    engine = BatchEngine(model, max_rows=rows, max_queue=len(reqs), device=device)
    outs = [[] for _ in reqs]
    for i, (p, q) in enumerate(reqs):
        engine.submit(TextSchedule(model, [p], q, device=device), on_sample=lambda x, i=i: outs[i].append(int(x[0])))
    sync(device)
    t0 = time.perf_counter()
    while engine.step():
        pass
    sync(device)
    return time.perf_counter() - t0, outs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "assets/text-shakespeare"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--text", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"), help="prompt source")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    model = OmniModel.from_pretrained(a.model, device=dev).eval()
    tok = load_tokenizer(a.model)
    rows_out = []
    for n in a.rows:
        reqs = requests(tok, n, a.max_new, Path(a.text))
        solo = [[int(x[0]) for x in run(model, TextSchedule(model, [p], q, device=dev))] for p, q in reqs]
        _, outs = serve(model, reqs, n, dev)                                     # also the warm-up
        same = outs == solo
        batched = min(serve(model, reqs, n, dev)[0] for _ in range(a.reps))
        k = min(n, 8)
        one = min(serve(model, reqs[:k], 1, dev)[0] for _ in range(a.reps)) * n / k
        tokens = n * a.max_new
        rows_out.append({"rows": n, "tokens": tokens, "batched_tokens_per_s": tokens / batched,
                         "one_at_a_time_tokens_per_s": tokens / one, "speedup": one / batched,
                         "batched_equals_solo": same})
        print(f"rows {n:4d}: batched {tokens / batched:9.0f} tok/s  one at a time {tokens / one:7.0f} tok/s  "
              f"x{one / batched:5.1f}  batched == solo: {same}", flush=True)
    common.print_table(rows_out, list(rows_out[0]))
    name = "engine_rows" if a.device == "cpu" else f"engine_rows_{a.device.replace(':', '')}"
    extra = {"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {}
    print("wrote", common.write_result(name, {"args": vars(a), "rows": rows_out, **extra}))


if __name__ == "__main__":
    main()

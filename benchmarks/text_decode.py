"""Batch-1 greedy decode speed: our backbone vs HF transformers' GPT2LMHeadModel.generate.

Same shape (GPT-2 style, 6 layers, 384 wide, 6 heads, context 256, vocab 65 as the
shakespeare_char model) and the same weights: a seeded random HF GPT-2 is saved to a temp
folder and imported with backbone.hf_import.load_hf. Each engine generates --new-tokens
tokens from a short prompt; after one warm-up we time --reps runs (alternating engines) and
report the median tokens/s (prefill included), plus the peak-RSS increase of one run.

    python benchmarks/text_decode.py [--new-tokens 200] [--reps 5] [--threads N] [--quick]

Writes benchmarks/results/text_decode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbone.generate import generate  # noqa: E402
from benchmarks import common  # noqa: E402
from backbone.hf_import import load_hf  # noqa: E402
from backbone.sampling import SamplingParams  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "text_decode.json"


# ---- memory: peak RSS of one run ------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_delta_mb(fn) -> tuple[float | None, str]:
    """Run fn(); return (peak RSS during the run - RSS before, in MiB) and how it was measured.

    Linux: reset the high-water mark (write 5 to /proc/self/clear_refs) and read VmHWM, so the
    number belongs to this run alone. Elsewhere: ru_maxrss, which only grows (lower bound).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024, "VmHWM after clear_refs reset, minus VmRSS before"
    except (OSError, TypeError):
        import resource
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (after - before) / 1024, "ru_maxrss growth (lower bound: the peak is process-wide)"


# ---- the two engines ------------------------------------------------------------------------
def run_ours(model, prompt: list[int], n: int, compile: bool = False) -> list[int]:
    params = SamplingParams(temperature=0.0, max_new_tokens=n)
    return [int(t[0]) for t in generate(model, [prompt], params, compile=compile)]


def run_hf(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def machine_info(threads: int) -> dict:
    import transformers
    return {**common.machine_info(), "threads": threads, "transformers": transformers.__version__}


def build_engines(a) -> dict:
    """The seeded HF GPT-2 and our import of the same weights, as zero-argument decode runs."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    cfg = GPT2Config(vocab_size=a.vocab, n_layer=6, n_embd=384, n_head=6, n_positions=256,
                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        ours = load_hf(d)
    prompt = torch.randint(0, a.vocab, (a.prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    engines = {"ours": lambda: run_ours(ours, prompt, a.new_tokens),
               "hf": lambda: run_hf(hf, prompt, a.new_tokens)}
    if not a.no_compile:  # static cache + torch.compile'd decode step; compiled during warm-up
        engines["ours+compile"] = lambda: run_ours(ours, prompt, a.new_tokens, compile=True)
    return engines, ours


def linear_floor_ms(model, n: int = 100) -> float:
    """ms per token spent in the model's Linear layers alone (x (1, in) @ W.T + b, no other op):
    the fp32 weight-streaming cost no exact eager decode can go below."""
    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {m.in_features: torch.randn(1, m.in_features) for m in lins}
    with torch.inference_mode():
        for m in lins:
            torch.nn.functional.linear(xs[m.in_features], m.weight, m.bias)
        t0 = time.perf_counter()
        for _ in range(n):
            for m in lins:
                torch.nn.functional.linear(xs[m.in_features], m.weight, m.bias)
    return 1000 * (time.perf_counter() - t0) / n


def cold_peak_rss_mb(engine: str, a) -> float | None:
    """Peak RSS growth of the first (cold) decode run, measured in a fresh child process."""
    cmd = [sys.executable, __file__, "--mem-child", engine, "--threads", str(a.threads),
           "--new-tokens", str(a.new_tokens), "--prompt-len", str(a.prompt_len), "--vocab", str(a.vocab)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])[0]
    except (IndexError, ValueError):
        print(f"memory child for {engine} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--quick", action="store_true", help="100 new tokens, 3 reps")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile engine")
    ap.add_argument("--mem-child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.new_tokens, a.reps = min(a.new_tokens, 100), min(a.reps, 3)
    torch.set_num_threads(a.threads)
    assert a.prompt_len + a.new_tokens <= 256, "prompt + new tokens must fit the 256 context"
    engines, ours = build_engines(a)
    if a.mem_child:  # child process: one cold run of one engine, peak RSS growth as JSON
        with torch.inference_mode():
            print(json.dumps(peak_rss_delta_mb(engines[a.mem_child])))
        return None
    cold = {k: cold_peak_rss_mb(k, a) for k in ("ours", "hf")}  # (a cold compiled run would time the compiler)
    shipped = Path(__file__).resolve().parents[1] / "assets" / "text-shakespeare"
    note = ("seeded random weights of the GPT-2 shape" +
            (f" ({shipped.name} is shipped but not used: the GPT-2 comparison needs HF's GPT-2 class)"
             if shipped.exists() else ""))

    with torch.inference_mode():
        outs, warmup_s = {}, {}
        for k, f in engines.items():  # warm-up (and compile), and the outputs to compare
            t0 = time.perf_counter()
            outs[k] = f()
            warmup_s[k] = time.perf_counter() - t0
        times = {k: [] for k in engines}
        for _ in range(a.reps):
            for k, f in engines.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        warm = {k: peak_rss_delta_mb(f) for k, f in engines.items()}
        floor = statistics.median(linear_floor_ms(ours) for _ in range(3))

    same = all(o == outs["hf"] for o in outs.values())
    first_diff = next((i for i, (x, y) in enumerate(zip(outs["ours"], outs["hf"])) if x != y), None)
    rows = {}
    for k in engines:
        med = statistics.median(times[k])
        rows[k] = dict(median_s=med, tokens_per_s=a.new_tokens / med, ms_per_token=1000 * med / a.new_tokens,
                       all_s=times[k], first_run_s=warmup_s[k], peak_rss_delta_mb_cold=cold.get(k),
                       peak_rss_delta_mb_warm=warm[k][0], speedup_vs_hf=(a.new_tokens / med) / (a.new_tokens / statistics.median(times["hf"])))
    speedup = rows["ours"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]

    print(f"GPT-2 shape 6L/384/6H, vocab {a.vocab}, prompt {a.prompt_len}, {a.new_tokens} new tokens, "
          f"batch 1, greedy, fp32, {a.threads} threads, median of {a.reps}")
    print(f"{'engine':<14}{'tokens/s':>10}{'ms/token':>10}{'vs hf':>8}{'first run s':>13}{'peak RSS +MiB cold':>20}{'warm':>8}")
    fmt = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
    for k, r in rows.items():
        print(f"{k:<14}{r['tokens_per_s']:>10.1f}{r['ms_per_token']:>10.2f}{r['speedup_vs_hf']:>7.2f}x{r['first_run_s']:>13.1f}"
              f"{fmt(r['peak_rss_delta_mb_cold']):>20}{fmt(r['peak_rss_delta_mb_warm']):>8}")
    print(f"speedup ours/hf: {speedup:.2f}x eager"
          + (f", {rows['ours+compile']['speedup_vs_hf']:.2f}x compiled" if "ours+compile" in rows else "")
          + f"   greedy outputs identical: {same}"
          + ("" if same else f" (first difference at token {first_diff})"))
    print(f"Linear layers alone: {floor:.2f} ms/token -> at zero overhead ours/hf could reach at most "
          f"{rows['hf']['ms_per_token'] / floor:.2f}x")
    method = (f"{warm['ours'][1]}; cold = first run in a fresh process after loading the model, "
              "warm = a run after the timed ones")
    print(f"memory: {method}")

    result = dict(command=" ".join([Path(sys.executable).name, *sys.argv]), machine=machine_info(a.threads),
                  shape=dict(n_layer=6, dim=384, n_head=6, vocab=a.vocab, block_size=256),
                  prompt_len=a.prompt_len, new_tokens=a.new_tokens, reps=a.reps, weights=note,
                  results=rows, speedup=speedup, outputs_identical=same, first_difference=first_diff,
                  memory_method=method, linear_floor_ms_per_token=floor,
                  max_speedup_at_zero_overhead=rows["hf"]["ms_per_token"] / floor)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()

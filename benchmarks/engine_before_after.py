"""Decode speed of plain text generation before and after a change, measured in one run (issue 17).

Checks the old commit out into a temporary git worktree and runs ``benchmarks/text_decode.py`` in
the old tree and in this one, alternating, ``--rounds`` times each. Every run also times HF
transformers' GPT-2 on the same weights, so each tree's speed is reported both in tokens/s and as
a ratio to HF measured in the same process (which cancels drift of the machine between runs).

    python benchmarks/engine_before_after.py [--before 3bc999c] [--rounds 3] [--new-tokens 100]

Writes benchmarks/results/engine_before_after.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402

BEFORE = "3bc999c"  # the last commit before the one-engine refactor


def one_run(tree: Path, a, out: Path) -> dict:
    cmd = [sys.executable, str(tree / "benchmarks" / "text_decode.py"), "--new-tokens", str(a.new_tokens),
           "--reps", str(a.reps), "--threads", str(a.threads), "--out", str(out)]
    if a.no_compile:
        cmd.append("--no-compile")
    subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=BEFORE, help="the commit to compare against (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default="engine_before_after", help="results/<name>.json")
    a = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for r in range(a.rounds):
                for name, tree in (("before", old), ("after", ROOT)):
                    runs[name].append(one_run(tree, a, Path(tmp) / f"{name}{r}.json"))
                    print(f"round {r + 1}/{a.rounds} {name}: ours {runs[name][-1]['results']['ours']['tokens_per_s']:.1f} tok/s")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    engines = [k for k in runs["after"][0]["results"] if k != "hf"]
    rows = {}
    for name in runs:
        for k in engines:
            tps = [r["results"][k]["tokens_per_s"] for r in runs[name]]
            vs_hf = [r["results"][k]["speedup_vs_hf"] for r in runs[name]]
            rows[f"{name}/{k}"] = dict(tokens_per_s=statistics.median(tps), all_tokens_per_s=tps,
                                       vs_hf=statistics.median(vs_hf), all_vs_hf=vs_hf,
                                       outputs_identical_to_hf=all(r["outputs_identical"] for r in runs[name]))
    print(f"\nGPT-2 shape 6L/384/6H, batch 1, greedy, {a.new_tokens} new tokens, {a.threads} threads; "
          f"median over {a.rounds} alternating runs of text_decode.py (each a median of {a.reps})")
    print(f"{'tree/engine':<22}{'tokens/s':>10}{'vs HF (same run)':>18}{'identical to HF':>17}")
    for k, r in rows.items():
        print(f"{k:<22}{r['tokens_per_s']:>10.1f}{r['vs_hf']:>17.2f}x{str(r['outputs_identical_to_hf']):>17}")
    change = {k: rows[f"after/{k}"]["vs_hf"] / rows[f"before/{k}"]["vs_hf"] for k in engines}
    for k, c in change.items():
        print(f"{k}: after/before = {c:.3f} (ratio of the HF-normalised speeds)")
    result = dict(before=a.before, rounds=a.rounds, new_tokens=a.new_tokens, threads=a.threads, rows=rows,
                  after_over_before=change)
    print(f"wrote {common.write_result(a.out, result)}")
    return result


if __name__ == "__main__":
    main()

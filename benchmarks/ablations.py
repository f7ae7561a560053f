"""Ablations of the seed papers' switches at equal training wall-clock (issue 8).

Every row is the shipped char recipe (configs/text_shakespeare.yaml: 4 x 128, context 64,
Muon) with one switch changed, trained through the one trainer for the same wall-clock
budget as the foundation's text benchmark (70 s), on two corpora:
  * tiny-shakespeare, char level: val nats/char on 400 fixed windows of the last 10%;
  * Debian fortunes, byte-level BPE (the shipped 2048-token tokenizer of
    assets/text-fortunes-bpe), context 128: val nats/token on 200 fixed windows.
EMO and its control are *fine-tuning* rows: they continue the same seed's baseline model for
20 s more, with CE+EMO or with CE alone (the named baseline for EMO is that CE row).
Each (row, corpus, seed) is one subprocess with one thread; ``--jobs 2`` runs two at once on
the two cores, so every row trains under the same conditions. Results are cached per job in
runs/ablations/ (``--force`` retrains).

Also measured: training tokens/s and greedy decode tokens/s (batch 1) of the char models, the mean
number of real experts per token (AdaMoE), degeneration of greedy 112-token continuations of 8 val
prompts by the BPE models (distinct-2/3 over word n-grams, rep-4 = share of repeated word 4-grams within a
continuation; Welleck et al. 2019, Su et al. 2022), contrastive search on the baseline, and
Set-Based Prompting's order (in)dependence on the baseline.

    python benchmarks/ablations.py --jobs 2          # ~35 min on 2 cores (3 seeds)
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import print_table, write_result  # noqa: E402

CACHE = Path(os.environ.get("ABLATION_CACHE", ROOT / "runs" / "ablations"))
BUDGET_S = float(os.environ.get("ABLATION_BUDGET_S", 70))       # the foundation text benchmark's budget
FT_BUDGET_S = float(os.environ.get("ABLATION_FT_BUDGET_S", 20))

# one switch per row, applied on top of the baseline recipe (dotted keys into the YAML recipe)
ROWS: dict[str, dict] = {
    "baseline (Muon, SwiGLU, causal)": {},
    "AdamW": {"train.optimizer": "adamw", "train.lr": 3e-3, "train.weight_decay": 0.1},
    "Lion": {"train.optimizer": "lion", "train.lr": 1e-3, "train.weight_decay": 0.3,  # lr = AdamW's / 3
             "train.beta2": 0.99},
    "Lion (lr 3e-4 = AdamW/10)": {"train.optimizer": "lion", "train.lr": 3e-4, "train.min_lr": 3e-5,
                                  "train.weight_decay": 1.0, "train.beta2": 0.99},
    "Primer (relu2 + qkv conv)": {"model.args.mlp": "relu2", "model.args.qkv_conv": 3},
    "AdaMoE (4 real + 4 null, top-2)": {"model.args.n_experts": 4, "model.args.n_null_experts": 4,
                                        "model.args.experts_per_tok": 2, "model.args.moe_intermediate_size": 176},
    "prefix-LM (non-causal decoder)": {"objective.prefix_lm": True},
    "MEAP (15% masked inputs)": {"objective.meap": 0.15},
    "scheduled sampling (p -> 0.25)": {"objective.scheduled_sampling": {"max_prob": 0.25, "ramp_steps": 300}},
    "fine-tune +20 s, CE": {"ft": "ce"},
    "fine-tune +20 s, CE+EMO": {"ft": "emo"},
}
BASE = "baseline (Muon, SwiGLU, causal)"
CORPORA = {
    "char": {"data": {"path": "../shared/data/tinyshakespeare.txt", "train_fraction": 0.9},
             "tokenizer": {"kind": "char"}, "windows": 400, "block": 64},
    "bpe": {"data": {"path": "/usr/share/games/fortunes/*.u8", "format": "fortune", "train_fraction": 0.9},
            "tokenizer": {"from": "assets/text-fortunes-bpe"}, "windows": 200, "block": 128},
}


def recipe(row: str, corpus: str, seed: int, out: Path) -> dict:
    from apps.text.recipe import load_config
    cfg = load_config(ROOT / "configs" / "text_shakespeare.yaml")
    c = CORPORA[corpus]
    cfg["data"], cfg["tokenizer"] = copy.deepcopy(c["data"]), copy.deepcopy(c["tokenizer"])
    cfg["model"]["args"]["block_size"] = c["block"]
    cfg["train"].update(out_dir=str(out / "run"), max_time_s=BUDGET_S, max_steps=100_000, seed=seed,
                        eval_every=0, ckpt_every=0, log_every=50, progress=False)
    cfg["eval"] = {"batches": 2, "batch_size": 16}
    sw = dict(ROWS[row])
    if "ft" in sw:  # continue the baseline model of this seed
        cfg["model"] = {"init_from": str(job_dir(BASE, corpus, seed) / "model"), "emo": sw.pop("ft") == "emo"}
        cfg["train"].update(max_time_s=FT_BUDGET_S, optimizer="adamw", lr=3e-4, min_lr=3e-4, warmup_steps=0)
        cfg.pop("tokenizer")
    for key, val in sw.items():
        d = cfg
        *path, last = key.split(".")
        for k in path:
            d = d.setdefault(k, {})
        d[last] = val
    return cfg


def job_dir(row: str, corpus: str, seed: int) -> Path:
    slug = "".join(ch if ch.isalnum() else "_" for ch in row.lower()).strip("_")
    return CACHE / corpus / slug / f"seed{seed}"


# ---- measurements --------------------------------------------------------------------------------
def windows(ids, block: int, n: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids) - block - 1, (n,), generator=g).tolist()
    x = torch.stack([ids[s:s + block] for s in starts])
    y = torch.stack([ids[s + 1:s + block + 1] for s in starts])
    return x, y


def val_losses(model, ids, block: int, n: int) -> dict:
    """Mean next-token loss over n fixed windows: every position (causal), and the second half
    given the first half as a prefix (bidirectional for a prefix-LM model, causal otherwise)."""
    import torch
    from backbone.masks import MaskSpec
    import torch.nn.functional as F
    x, y = windows(ids, block, n)
    full = half = 0.0
    lm = model.heads["lm"]
    ce = lambda h, t: F.cross_entropy(lm(h).flatten(0, 1).float(), t.flatten())  # noqa: E731  (not lm.loss: EMO's differs)
    with torch.no_grad():
        for xb, yb in zip(x.split(50), y.split(50)):
            full += float(ce(model(xb), yb)) * len(xb)
            mask = MaskSpec(prefix_len=block // 2) if model.args.prefix_lm else None
            h = model(xb, mask=mask)
            half += float(ce(h[:, block // 2 - 1:], yb[:, block // 2 - 1:])) * len(xb)
    return {"val": full / n, "val_2nd_half": half / n}


def degeneration(texts: list[str]) -> dict:
    """distinct-n over word n-grams of all texts; rep-4 = mean share of repeated 4-grams per text."""
    words = [t.split() for t in texts]
    out = {}
    for n in (2, 3):
        grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / max(1, len(grams))
    reps = []
    for w in words:
        g4 = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
        if g4:
            reps.append(1 - len(set(g4)) / len(g4))
    out["rep_4"] = sum(reps) / max(1, len(reps))
    return out


def continuations(model, tok, val_text: str, params) -> list[str]:
    from apps.text.model import generate_tokens
    import torch
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(len(val_text) - 200, (8,), generator=g).tolist()
    prompts = [tok.encode(val_text[s:s + 200])[:16] for s in starts]  # 16-token prompts
    out = []
    for p in prompts:
        toks = [int(t[0]) for t in generate_tokens(model, [p], params)]
        out.append(tok.decode([t for t in toks if t >= 0 and t < tok.vocab_size]))
    return out


def decode_tok_s(model, tok, val_text: str, n: int = 256) -> float:
    from backbone.generate import generate
    from backbone.sampling import SamplingParams
    p = tok.encode(val_text[:16])
    list(generate(model, [p], SamplingParams(temperature=0, max_new_tokens=16)))  # warm-up
    t = time.perf_counter()
    k = sum(1 for _ in generate(model, [p], SamplingParams(temperature=0, max_new_tokens=n)))
    return k / (time.perf_counter() - t)


def set_prompting_check(model, tok) -> dict:
    """Order sensitivity of a 3-option prompt: max total-variation distance of the next-token
    distribution over the 6 orders, and the share of option sets whose 24-token greedy
    continuation is the same in every order; plain concatenation vs Set-Based Prompting."""
    import torch
    from backbone.set_prompt import generate_set, set_logits
    from backbone.sampling import SamplingParams
    names = ["ROMEO", "JULIET", "MENENIUS", "CORIOLANUS", "GLOUCESTER", "LUCIO", "ISABELLA", "PETRUCHIO"]
    rng = torch.Generator().manual_seed(0)
    res = {"plain": {"tv": [], "same": []}, "set": {"tv": [], "same": []}}
    sp = SamplingParams(temperature=0, max_new_tokens=24)
    for _ in range(10):
        opts = [names[i] for i in torch.randperm(len(names), generator=rng)[:3].tolist()]
        prefix, suffix = tok.encode("Who speaks? "), tok.encode(".\n")
        for mode in ("plain", "set"):
            probs, outs = [], []
            for order in itertools.permutations(opts):
                o = [tok.encode(s + ", ") for s in order]
                if mode == "plain":
                    ids = prefix + sum(o, []) + suffix
                    probs.append(_plain_probs(model, ids))
                    outs.append(_plain_greedy(model, ids, sp))
                else:
                    probs.append(set_logits(model, prefix, o, suffix).softmax(-1))
                    outs.append(generate_set(model, prefix, o, suffix, sp))
            P = torch.stack(probs)
            res[mode]["tv"].append(float(0.5 * (P[:, None] - P[None]).abs().sum(-1).max()))
            res[mode]["same"].append(all(x == outs[0] for x in outs))
    return {m: {"max_tv": max(v["tv"]), "mean_tv": sum(v["tv"]) / len(v["tv"]),
                "same_output_share": sum(v["same"]) / len(v["same"])} for m, v in res.items()}


def _plain_probs(model, ids):
    import torch
    with torch.no_grad():
        h = model.backbone(input_ids=torch.tensor([ids]))
        return model.heads["lm"](h[0, -1]).float().softmax(-1)


def _plain_greedy(model, ids, sp):
    from backbone.generate import generate
    return [int(t[0]) for t in generate(model, [ids], sp)]


def run_job(row: str, corpus: str, seed: int) -> dict:
    """Train one (row, corpus, seed) and measure it; runs in its own process."""
    import torch
    from apps.text import recipe as train_text
    from backbone.sampling import SamplingParams
    from modalities.text import load_tokenizer
    torch.set_num_threads(1)
    out = job_dir(row, corpus, seed)
    cfg = recipe(row, corpus, seed, out)
    model, m = train_text.run(cfg, out=str(out / "model"))
    model.eval()
    tok = load_tokenizer(out / "model")
    text = train_text.read_corpus(cfg["data"])
    val_text = text[train_text.split_point(text, cfg["data"]):]
    ids = torch.tensor(tok.encode(val_text))
    c = CORPORA[corpus]
    r = {"row": row, "corpus": corpus, "seed": seed, "params": model.num_params(), "steps": m["step"],
         "train_s": round(m["train_time_s"], 1), "train_tok_s": m["tokens"] / m["train_time_s"],
         **val_losses(model, ids, c["block"], c["windows"])}
    if model.args.n_experts:
        with torch.no_grad():
            model(windows(ids, c["block"], 16)[0])
        r["real_experts_per_tok"] = float(torch.stack([l.mlp.real_per_token for l in model.backbone.layers]).mean())
    if corpus == "char":
        r["decode_tok_s"] = decode_tok_s(model, tok, val_text)
        if row == BASE:
            r["set_prompting"] = set_prompting_check(model, tok)
    else:  # degeneration on the BPE models: whole words, and a context (128) that holds a long continuation
        n = c["block"] - 16
        r.update({f"greedy_{k}": v for k, v in degeneration(
            continuations(model, tok, val_text, SamplingParams(temperature=0, max_new_tokens=n))).items()})
        if row == BASE:
            r.update({f"contrastive_{k}": v for k, v in degeneration(continuations(
                model, tok, val_text, SamplingParams(penalty_alpha=0.6, top_k=4, max_new_tokens=n))).items()})
    return r


# ---- the driver ----------------------------------------------------------------------------------
def launch(job: tuple, force: bool) -> dict:
    row, corpus, seed = job
    f = job_dir(row, corpus, seed) / "result.json"
    if f.is_file() and not force:
        return json.loads(f.read_text())
    f.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.time()
    p = subprocess.run([sys.executable, __file__, "--worker", row, corpus, str(seed)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"job {job} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    f.write_text(json.dumps(r))
    print(f"[{time.time() - t:5.0f}s] {corpus:4s} seed {seed} {row}: val {r['val']:.4f}", flush=True)
    return r


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(results: list[dict], rows: list[str], seeds: list[int]) -> list[dict]:
    table = []
    for row in rows:
        by = {c: [r for r in results if r["row"] == row and r["corpus"] == c] for c in CORPORA}
        ch, bp = by["char"], by["bpe"]
        if not ch:
            continue
        t = {"switch": row, "seeds": len(ch), "params": ch[0]["params"]}
        for key, src, name in [("val", ch, "char_val"), ("val_2nd_half", ch, "char_2nd_half"),
                               ("val", bp, "bpe_val"), ("train_tok_s", ch, "train_tok_s"),
                               ("decode_tok_s", ch, "decode_tok_s"), ("greedy_distinct_2", bp, "distinct_2"),
                               ("greedy_rep_4", bp, "rep_4"), ("real_experts_per_tok", ch, "real_experts_per_tok")]:
            xs = [r[key] for r in src if key in r]
            if xs:
                t[name], t[name + "_sd"] = mean_sd(xs)
        table.append(t)
    base = next((t for t in table if t["switch"] == BASE), None)
    for t in table:
        ref = next((x for x in table if x["switch"] == "fine-tune +20 s, CE"), base) if "EMO" in t["switch"] else base
        if ref and "char_val" in t:
            t["vs"] = ref["switch"]
            t["d_char_val"] = t["char_val"] - ref["char_val"]
            if "bpe_val" in t and "bpe_val" in ref:
                t["d_bpe_val"] = t["bpe_val"] - ref["bpe_val"]
            # a difference counts only if it exceeds the seed spread of both rows (2 sd of the mean)
            sd = max(t["char_val_sd"], ref["char_val_sd"])
            t["char_verdict"] = ("=" if t is ref or abs(t["d_char_val"]) <= 2 * sd / len(seeds) ** 0.5
                                 else ("better" if t["d_char_val"] < 0 else "worse"))
    return table


def markdown(table: list[dict], extra: dict) -> str:
    f = lambda t, k, d=3: f"{t[k]:.{d}f} ± {t[k + '_sd']:.{d}f}" if k in t else ""  # noqa: E731
    lines = ["| switch | char val (nats/char) | char 2nd half given 1st | BPE val (nats/token) | params | train tok/s | "
             "decode tok/s | distinct-2 | rep-4 | verdict (char) |", "|" + "---|" * 10]
    for t in table:
        lines.append(f"| {t['switch']} | {f(t, 'char_val')} | {f(t, 'char_2nd_half')} | {f(t, 'bpe_val')} | "
                     f"{t['params']:,} | {t.get('train_tok_s', 0):,.0f} | {t.get('decode_tok_s', 0):,.0f} | "
                     f"{f(t, 'distinct_2', 2)} | {f(t, 'rep_4', 2)} | {t.get('char_verdict', '')} |")
    cs = extra.get("contrastive")
    if cs:
        lines.append(f"| baseline + contrastive search (α 0.6, k 4) | | | | | | | "
                     f"{cs['distinct_2'][0]:.2f} ± {cs['distinct_2'][1]:.2f} | {cs['rep_4'][0]:.2f} ± {cs['rep_4'][1]:.2f} | |")
    return "\n".join(lines)


def main():
    global CACHE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=3, metavar=("ROW", "CORPUS", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), help="row names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="retrain cached jobs")
    ap.add_argument("--cache", default=None, help="folder of per-job results and models (default runs/ablations)")
    a = ap.parse_args()
    CACHE = Path(a.cache) if a.cache else CACHE
    os.environ["ABLATION_CACHE"] = str(CACHE)  # the workers read it
    if a.worker:
        print(json.dumps(run_job(a.worker[0], a.worker[1], int(a.worker[2]))))
        return
    unknown = set(a.rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {list(ROWS)}")
    rows = [BASE] + [r for r in a.rows if r != BASE]
    t0 = time.time()
    with ThreadPoolExecutor(a.jobs) as pool:  # the baselines first: the fine-tuning rows start from them
        results = list(pool.map(lambda j: launch(j, a.force), [(BASE, c, s) for s in a.seeds for c in CORPORA]))
        rest = [(r, c, s) for s in a.seeds for r in rows[1:] for c in CORPORA]
        results += list(pool.map(lambda j: launch(j, a.force), rest))
    table = summarise(results, rows, a.seeds)
    base_char = [r for r in results if r["row"] == BASE and r["corpus"] == "char"]
    base_bpe = [r for r in results if r["row"] == BASE and r["corpus"] == "bpe"]
    extra = {}
    if base_bpe and "contrastive_distinct_2" in base_bpe[0]:
        extra["contrastive"] = {k: mean_sd([r[f"contrastive_{k}"] for r in base_bpe]) for k in ("distinct_2", "rep_4")}
    if base_char and "set_prompting" in base_char[0]:
        extra["set_prompting"] = [r["set_prompting"] for r in base_char]
    print()
    print_table(table, ["switch", "char_val", "char_val_sd", "char_2nd_half", "bpe_val", "bpe_val_sd", "params",
                        "train_tok_s", "decode_tok_s", "distinct_2", "rep_4", "real_experts_per_tok", "char_verdict"])
    md = markdown(table, extra)
    print("\n" + md)
    if extra.get("set_prompting"):
        print("\nSet-Based Prompting (baseline, per seed):", json.dumps(extra["set_prompting"]))
    res = {"budget_s": BUDGET_S, "ft_budget_s": FT_BUDGET_S, "seeds": a.seeds, "threads_per_job": 1,
           "parallel_jobs": a.jobs, "table": table, "extra": extra, "runs": results, "markdown": md,
           "wall_s": round(time.time() - t0), "baseline": BASE,
           "note": "mean ± sd over seeds; verdict: difference vs the named baseline beyond 2 standard errors"}
    path = write_result("ablations", res)
    (path.parent / "ablations.md").write_text(md + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()

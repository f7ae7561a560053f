"""Decode speed of every fast-decoding option on the shipped CIF and text models, in one run.

For each model (assets/crystal-cif, assets/text-fortunes-bpe) and each method we decode 8
held-out prompts, at batch 1 (one after another) and at batch 8 (one ragged batch), greedy,
and report tokens/s, the draft acceptance rate, the speed-up over our own plain decoding and
whether the tokens are identical to plain greedy decoding. Exact drafters also get a sampling
test: 300 rows sampled with the drafter vs 300 plain, chi-square per position. Inexact
methods (BiLD rollback, early exit, FFN skipping) report their quality cost instead. The
anchor, in the same run: HF transformers ``generate`` on the same weights exported as a
Llama checkpoint, plain, with ``prompt_lookup_num_tokens`` and with assisted generation
(our draft model exported too).

    python -m benchmarks.decode_speed [--quick] [--threads 1]

Writes benchmarks/results/decode_speed.json.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from apps.text.model import generate_tokens  # noqa: E402
from apps.text.recipe import read_corpus, split_point  # noqa: E402
from backbone.container import OmniModel  # noqa: E402
from backbone.drafters import HeadDrafter, ModelDrafter, NgramTableDrafter, PromptLookupDrafter  # noqa: E402
from backbone.generate import generate  # noqa: E402
from backbone.sampling import SamplingParams  # noqa: E402
from backbone.skip import LayerSkip  # noqa: E402
from benchmarks import common  # noqa: E402
from modalities.text import load_tokenizer  # noqa: E402

warnings.filterwarnings("ignore")
CRYSTALS = ROOT / ".." / "shared" / "data" / "crystals"


def cif_prompts(tok, n: int, seed: int = 0) -> list[list[int]]:
    """``data_<formula>\\n`` of n/2 perov_5 and n/2 carbon_24 *test* structures (seeded)."""
    from pymatgen.core import Structure
    from modalities.crystal import make_prompt, read_cif_csv
    out = []
    for name in ("perov_5", "carbon_24"):
        cifs = read_cif_csv(CRYSTALS / name / "test.csv")
        for c in random.Random(seed).sample(cifs, n // 2):
            comp = Structure.from_str(c, fmt="cif").composition.formula.replace(" ", "")
            out.append(tok.encode(make_prompt(comp)))
    return out


def text_prompts(tok, val_text: str, n: int, seed: int = 0) -> list[list[int]]:
    """The first 8 tokens of n fortunes from the model's validation text (seeded)."""
    docs = [d for d in val_text.split("\n\n") if len(d) > 40][100:]  # the first 100 were used for tuning
    return [tok.encode(d)[:8] for d in random.Random(seed).sample(docs, n)]


def setup(name: str, a) -> dict:
    cfg = {"cif": dict(folder="assets/crystal-cif", config="configs/crystal_cif.yaml", new=a.cif_tokens,
                       ngram=dict(n=6, min_share=0.5), gamma_ngram=12, gamma=4),
           "text": dict(folder="assets/text-fortunes-bpe", config="configs/text_fortunes_bpe.yaml", new=a.text_tokens,
                        ngram=dict(n=5), gamma_ngram=4, gamma=3)}[name]
    import yaml
    folder = ROOT / cfg["folder"]
    model, tok = OmniModel.from_pretrained(folder), load_tokenizer(folder)
    draft = OmniModel.from_pretrained(ROOT / (cfg["folder"] + "-draft"))
    data = yaml.safe_load((ROOT / cfg["config"]).read_text())["data"]
    text = read_corpus(data)
    sp = split_point(text, data)
    # the n-gram table is seeded from the model's own training split (ADED builds it from a corpus)
    corpus = [tok.encode(d) for d in text[:sp].split("\n\n")[:-1] if d.strip()]
    stop = [tok.token_id("\n\n")] if name == "cif" else []
    prompts = cif_prompts(tok, a.prompts) if name == "cif" else text_prompts(tok, text[sp:], a.prompts)
    return dict(cfg, model=model, tok=tok, draft=draft, corpus=corpus, stop=stop, prompts=prompts)


def methods(s: dict) -> dict:
    """name -> (generate kwargs, exact by design?). Drafters are built once, outside the timing
    (the n-gram tables read the corpus here); ``generate_tokens`` resets them for every call."""
    m, g = s["model"], s["gamma"]
    aded, long_ngram = NgramTableDrafter(s["corpus"], n=3), NgramTableDrafter(s["corpus"], **s["ngram"])
    return {
        "plain": ({}, True),
        "plain+compile": ({"compile": True}, True),
        "prompt_lookup": ({"drafter": PromptLookupDrafter(), "gamma": g}, True),
        "ngram_aded_n3": ({"drafter": aded, "gamma": g}, True),
        "ngram_long": ({"drafter": long_ngram, "gamma": s["gamma_ngram"]}, True),
        "ngram_long+compile": ({"drafter": long_ngram, "gamma": s["gamma_ngram"], "compile": True}, True),
        "draft_model": ({"drafter": ModelDrafter(s["draft"]), "gamma": g}, True),
        "draft_model+fallback": ({"drafter": ModelDrafter(s["draft"], fallback=0.5), "gamma": 2 * g}, True),
        "draft_head": ({"drafter": HeadDrafter(m), "gamma": g}, True),
        "bild_rollback": ({"drafter": ModelDrafter(s["draft"], fallback=0.5), "gamma": 2 * g, "rollback": 2.0}, False),
        "early_exit": ({"skip": LayerSkip(mode="early_exit", min_layers=2)}, False),
        "ffn_skip": ({"skip": LayerSkip(mode="ffn", threshold=0.9)}, False),
        "contrastive": ({"contrastive": True}, False),
    }


def run_ours(s, prompts, kw: dict, stats: dict) -> list[list[int]]:
    kw = dict(kw)
    params = SamplingParams(temperature=0, max_new_tokens=s["new"], stop_tokens=s["stop"])
    if kw.pop("contrastive", False):
        params = SamplingParams(penalty_alpha=0.6, top_k=4, max_new_tokens=s["new"], stop_tokens=s["stop"])
    out = torch.stack(list(generate_tokens(s["model"], prompts, params, stats=stats, **kw)), 1)
    return [[int(t) for t in r if t >= 0] for r in out]


def decode_all(s, kw: dict, batch: int) -> tuple[list[list[int]], dict]:
    """Decode every prompt (in chunks of ``batch``); returns the outputs and the summed stats."""
    outs, tot = [], {}
    for i in range(0, len(s["prompts"]), batch):
        st = {}
        outs += run_ours(s, s["prompts"][i:i + batch], kw, st)
        for k, v in st.items():
            tot[k] = tot.get(k, 0) + v
    return outs, tot


def timed(engines: dict, reps: int) -> tuple[dict, dict]:
    """One untimed warm-up run of every engine (compiles), then ``reps`` rounds that run every
    engine once, interleaved so that drift in machine speed hits all of them alike.
    Returns ({key: median seconds}, {key: (outputs, stats) of the warm-up run})."""
    first = {}
    for k, fn in engines.items():
        first[k] = fn()
        print(f"  warm-up {k}", flush=True)
    times = {k: [] for k in engines}
    for _ in range(reps):
        for k, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}, first


def quality(s, name: str, outs: list[list[int]]) -> dict:
    """CIF: share of valid CIFs; text: mean NLL (nats/token) of the continuation under the full model."""
    if name == "cif":
        from modalities.crystal_checks import check_cif
        texts = [s["tok"].decode(p + o) for p, o in zip(s["prompts"], outs)]
        return {"valid_cif": sum(check_cif(t).valid for t in texts) / len(texts)}
    nll, n = 0.0, 0
    with torch.no_grad():
        for p, o in zip(s["prompts"], outs):
            ids = torch.tensor([p + o])
            logp = s["model"].heads["lm"](s["model"].backbone(ids)).log_softmax(-1)[0, len(p) - 1:-1]
            nll -= float(logp.gather(-1, torch.tensor(o)[:, None]).sum())
            n += len(o)
    return {"nll_full_model": nll / max(n, 1)}


def sampling_test(s, kw: dict, n_rows: int) -> dict:
    """n_rows rows of the first prompt sampled (T=1) with the drafter vs plain; chi-square
    homogeneity per position over the first 6 tokens; the smallest p-value is reported."""
    from scipy.stats import chi2_contingency
    params = lambda seed: SamplingParams(temperature=1.0, max_new_tokens=6, seed=seed)  # noqa: E731
    a = torch.stack(list(generate_tokens(s["model"], [s["prompts"][0]] * n_rows, params(1), **kw)), 1)
    b = torch.stack(list(generate(s["model"], [s["prompts"][0]] * n_rows, params(2))), 1)
    pmin = 1.0
    for j in range(a.shape[1]):
        vals = sorted(set(a[:, j].tolist()) | set(b[:, j].tolist()))
        if len(vals) < 2:
            continue
        table = [[int((x[:, j] == v).sum()) for v in vals] for x in (a, b)]
        pmin = min(pmin, float(chi2_contingency(table)[1]))
    return {"chi2_min_p": pmin, "rows": n_rows}


def hf_engines(s) -> dict:
    """HF transformers generate on the same weights (exported as Llama): plain at batch 1 and
    8, prompt lookup and assisted generation (batch 1 only in HF). {key: (batch, run)}."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    from backbone.hf_import import export_hf
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as d:
        export_hf(s["model"], Path(d) / "big", model_type="llama")
        export_hf(s["draft"], Path(d) / "small", model_type="llama")
        hf = AutoModelForCausalLM.from_pretrained(Path(d) / "big", dtype=torch.float32).eval()
        hf_small = AutoModelForCausalLM.from_pretrained(Path(d) / "small", dtype=torch.float32).eval()
    eos = s["stop"][0] if s["stop"] else None

    def cut(row: list[int]) -> list[int]:
        return row[:row.index(eos) + 1] if eos is not None and eos in row else row

    def gen(prompts, **kw):
        P = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
        am = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
        out = hf.generate(ids, attention_mask=am, max_new_tokens=s["new"], do_sample=False, pad_token_id=0,
                          eos_token_id=eos, min_new_tokens=None if eos is not None else s["new"], **kw)
        return [cut(r) for r in out[:, P:].tolist()]

    def engine(batch, kw):
        return lambda: ([o for i in range(0, len(s["prompts"]), batch) for o in gen(s["prompts"][i:i + batch], **kw)], {})

    return {"hf_plain": (1, engine(1, {})),
            "hf_prompt_lookup": (1, engine(1, {"prompt_lookup_num_tokens": s["gamma"]})),
            "hf_assisted": (1, engine(1, {"assistant_model": hf_small})),
            "hf_plain_b8": (8, engine(8, {}))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["cif", "text"], choices=["cif", "text"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--cif-tokens", type=int, default=256)
    ap.add_argument("--text-tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: one core per decode)")
    ap.add_argument("--sample-rows", type=int, default=300)
    ap.add_argument("--only", nargs="*", help="run only these methods (plus plain)")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--quick", action="store_true", help="4 prompts, 1 rep, 100 sampled rows")
    a = ap.parse_args(argv)
    if a.quick:
        a.prompts, a.reps, a.sample_rows = 4, 1, 100
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    result = {"threads": a.threads, "reps": a.reps, "prompts": a.prompts, "models": {}}
    rows = []
    for name in a.models:
        s = setup(name, a)
        ms = methods(s)
        if a.only:
            ms = {k: v for k, v in ms.items() if k == "plain" or k in a.only}
        engines = {(meth, b): (lambda kw=kw, b=b: decode_all(s, kw, b)) for meth, (kw, _) in ms.items() for b in (1, 8)}
        hf = {} if a.no_hf else hf_engines(s)
        engines.update({(k, b): fn for k, (b, fn) in hf.items()})
        with torch.inference_mode():
            secs, first = timed(engines, a.reps)
        ref = {b: first[("plain", b)][0] for b in (1, 8)}
        res = {}
        for (meth, batch), sec in secs.items():
            outs, st = first[(meth, batch)]
            n_tok = sum(map(len, outs))
            r = dict(model=name, method=meth, batch=batch, seconds=sec, tokens=n_tok, tokens_per_s=n_tok / sec,
                     speedup=None, identical=outs == ref[batch])
            if meth in ms:
                r["exact_by_design"] = ms[meth][1]
            if st.get("drafted"):
                r.update(acceptance=st["accepted"] / st["drafted"],
                         tokens_per_round=st["emitted"] / st["rounds"] / min(batch, len(s["prompts"])))
            if meth in ms and (not ms[meth][1] or meth == "plain"):
                with torch.inference_mode():
                    r.update(quality(s, name, outs))
                r["token_agreement"] = sum(sum(x == y for x, y in zip(o, p)) for o, p in zip(outs, ref[batch])) / \
                    max(1, sum(map(len, ref[batch])))
            res[f"{meth}@b{batch}"] = r
        for r in res.values():
            r["speedup"] = r["tokens_per_s"] / res[f"plain@b{r['batch']}"]["tokens_per_s"]
        with torch.inference_mode():
            for meth, (kw, exact) in ms.items():
                if exact and "drafter" in kw:
                    res[f"{meth}@b1"]["sampling"] = sampling_test(s, kw, a.sample_rows)
        hf_rows = {k: res[f"{k}@b{b}"] for k, (b, _) in hf.items()}
        for k, v in hf_rows.items():
            v["ours_plain_vs_hf"] = res[f"plain@b{v['batch']}"]["tokens_per_s"] / v["tokens_per_s"]
            v["ours_plain+compile_vs_hf"] = (res[f"plain+compile@b{v['batch']}"]["tokens_per_s"] / v["tokens_per_s"]
                                              if f"plain+compile@b{v['batch']}" in res else None)
        result["models"][name] = {"methods": res, "hf": hf_rows, "n_prompts": len(s["prompts"]), "new_tokens": s["new"]}
        rows += list(res.values())
    print()
    common.print_table([{**r, "p_sampling": (r.get("sampling") or {}).get("chi2_min_p")} for r in rows],
                       ["model", "method", "batch", "tokens_per_s", "speedup", "acceptance", "tokens_per_round",
                        "identical", "p_sampling", "valid_cif", "nll_full_model", "token_agreement"])
    for name, m in result["models"].items():
        for k, v in m["hf"].items():
            print(f"{name}: ours plain / {k}: {v['ours_plain_vs_hf']:.2f}x eager"
                  + (f", {v['ours_plain+compile_vs_hf']:.2f}x compiled" if v["ours_plain+compile_vs_hf"] else ""))
    path = common.write_result("decode_speed", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

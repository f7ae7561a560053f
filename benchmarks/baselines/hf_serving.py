"""Outside anchor for the serving benchmark: Hugging Face transformers' own batching on OUR weights.

``export_llama`` writes assets/text-shakespeare as a LlamaForCausalLM folder (backbone/hf_import.py
``export_hf``); ``check_same_model`` greedy-decodes one prompt with HF and with backbone/generate.py
and requires identical tokens. Two HF engines then serve N requests that all arrive at once
(float32, CPU, default torch threads, one warm-up first, model load and warm-up not timed):

* ``hf_static``: one left-padded ``model.generate`` call over all N prompts (classic static batch);
  every row makes exactly ``max_new_tokens`` (no eos), tokens = N * max_new_tokens.
* ``hf_continuous``: transformers 5.x continuous batching (paged KV cache, FIFO scheduler, a
  background generation thread). ``generate_batch`` is ``continuous_batching_context_manager`` +
  ``add_requests`` + a ``get_result`` loop; we drive that same manager ourselves so the timed window
  is add_requests -> last result, and report ``generate_batch``'s own end-to-end time beside it
  (it also pays manager setup, warm-up and a ~0.1 s thread join per call). Tokens = those returned.

Caveats. On CPU continuous batching runs, but with no flash attention and no CUDA graphs: the
model is loaded with attn_implementation="sdpa" and CB keeps "sdpa" over the paged cache with an
explicit (max_batch_tokens x readable tokens) mask; "paged|eager" is the other CPU option. Without
psutil CB cannot size its cache on CPU and its defaults (max_batch_tokens=8192) allocate a huge
mask (~12 s setup), so we size it to the workload (page_size 64, N+4 blocks, max_batch_tokens = all
prompt tokens so prefill is one step, as in the static batch). CB is built for GPUs with flash
kernels; on a 2-core CPU with a 0.8M-parameter model both HF paths are bound by Python/dispatch
overhead per step, so this anchors "what HF gives out of the box", not the best HF can do.
Sampling RNG streams differ between the two engines and from ours (same settings, not same tokens).
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from backbone.container import OmniModel  # noqa: E402
from backbone.generate import generate  # noqa: E402
from backbone.hf_import import export_hf  # noqa: E402
from backbone.sampling import SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ATTN = "sdpa"


def export_llama(src="assets/text-shakespeare", out=None) -> Path:
    """Export ``src`` (an OmniAR folder) as a HF Llama folder in ``out`` (default: a new temp dir)."""
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="hf_llama_"))
    return export_hf(OmniModel.from_pretrained(ROOT / src if not Path(src).is_absolute() else src), out, "llama")


def _load(folder):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                attn_implementation=ATTN).eval()


def _gen_config(max_new_tokens: int, temperature: float, **kw):
    from transformers import GenerationConfig
    sample = temperature > 0
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample,
                            temperature=temperature if sample else None, top_k=None, top_p=None, **kw)


@torch.no_grad()
def _static_run(hf, prompts, max_new_tokens, temperature, pad_id=0) -> list[list[int]]:
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    gc = _gen_config(max_new_tokens, temperature, min_new_tokens=max_new_tokens,
                     pad_token_id=pad_id, eos_token_id=None)
    out = hf.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    return out[:, L:].tolist()


def hf_static(folder, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> dict:
    """All prompts in ONE left-padded ``generate`` call; every row makes exactly max_new_tokens."""
    hf = _load(folder)
    _static_run(hf, prompts[:1], 4, temperature)  # warm-up
    torch.manual_seed(seed)
    t = time.perf_counter()
    rows = _static_run(hf, prompts, max_new_tokens, temperature)
    wall = time.perf_counter() - t
    n = len(rows) * max_new_tokens
    assert all(len(r) == max_new_tokens for r in rows)
    return {"tokens": n, "wall_s": wall, "tokens_per_s": n / wall, "errors": 0,
            "note": f"static batch generate, {ATTN}, B={len(prompts)}"}


def _cb_config(prompts, seed):
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    return ContinuousBatchingConfig(page_size=64, num_blocks=len(prompts) + 4, seed=seed,
                                    max_batch_tokens=max(64, sum(len(p) for p in prompts)),
                                    max_requests_per_batch=len(prompts), auto_switch_to_flash=False)


def _cb_collect(mgr, prompts, max_new_tokens) -> tuple[list[list[int]], int]:
    ids = mgr.add_requests(inputs=prompts, max_new_tokens=max_new_tokens)
    res = {}
    while len(res) < len(ids):
        r = mgr.get_result(timeout=1)
        if r is None and not mgr.is_running():
            break
        if r is not None and r.is_finished():
            res[r.request_id] = r
    errors = sum(1 for i in ids if i not in res or res[i].error is not None)
    return [list(res[i].generated_tokens) if i in res else [] for i in ids], errors


@torch.no_grad()
def _cb_run(hf, prompts, max_new_tokens, temperature, seed, warmup=True):
    from transformers.generation.continuous_batching.utils import logger as cb_logger
    cb_logger.setLevel(logging.CRITICAL)  # "install psutil" on every call; real failures come back as errors
    gc = _gen_config(max_new_tokens, temperature, eos_token_id=-1, pad_token_id=0)  # -1: no eos
    with hf.continuous_batching_context_manager(generation_config=gc, warmup=True,
                                                continuous_batching_config=_cb_config(prompts, seed)) as mgr:
        if warmup:
            _cb_collect(mgr, prompts[:1], 4)
        t = time.perf_counter()
        rows, errors = _cb_collect(mgr, prompts, max_new_tokens)
        wall = time.perf_counter() - t
    return rows, errors, wall


def hf_continuous(folder, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> dict:
    """The same requests through transformers' continuous batching (all submitted at once)."""
    try:
        hf = _load(folder)
        if not hasattr(hf, "generate_batch"):
            return {"error": "this transformers has no continuous batching (generate_batch)"}
        rows, errors, wall = _cb_run(hf, prompts, max_new_tokens, temperature, seed)
        # the one-call API, end to end (manager setup + warm-up + run + thread join), for reference
        gc = _gen_config(max_new_tokens, temperature, eos_token_id=-1, pad_token_id=0)
        t = time.perf_counter()
        out = hf.generate_batch(inputs=prompts, generation_config=gc, max_new_tokens=max_new_tokens,
                                continuous_batching_config=_cb_config(prompts, seed))
        gb_wall = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 -- any failure here means "cannot run on this machine"
        return {"error": f"continuous batching failed on {torch.device('cpu')}: {type(e).__name__}: {e}"}
    n = sum(len(r) for r in rows)
    gb_n = sum(len(o.generated_tokens) for o in out.values())
    return {"tokens": n, "wall_s": wall, "tokens_per_s": n / wall, "errors": errors,
            "generate_batch_wall_s": gb_wall, "generate_batch_tokens_per_s": gb_n / gb_wall,
            "note": f"continuous batching, {hf.config._attn_implementation} over paged cache, no cuda graphs"}


def check_same_model(folder, src="assets/text-shakespeare", prompt: list[int] | None = None) -> bool:
    """Greedy 20 tokens from a ~16-token prompt: HF generate, HF continuous batching and ours must agree."""
    prompt = prompt or _prompts(1)[0]
    ours = OmniModel.from_pretrained(ROOT / src)
    mine = [int(t[0]) for t in generate(ours, [prompt], SamplingParams(temperature=0, max_new_tokens=20))]
    hf = _load(folder)
    static = _static_run(hf, [prompt], 20, 0.0)[0]
    cb = _cb_run(hf, [prompt], 20, 0.0, seed=0, warmup=False)[0][0]
    ok = mine == static == cb
    if not ok:
        print(f"  mismatch:\n  ours   {mine}\n  hf     {static}\n  hf-cb  {cb}")
    return ok


def _prompts(n: int, length: int = 16, src="assets/text-shakespeare") -> list[list[int]]:
    """``n`` prompts of ``length`` tokens: windows of tinyshakespeare at spread offsets (asset tokenizer)."""
    from modalities.text import load_tokenizer
    tok = load_tokenizer(ROOT / src)
    data = ROOT.parent / "shared/data/tinyshakespeare.txt"
    text = data.read_text() if data.is_file() else "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    step = max(1, (len(text) - length) // max(n, 1))
    return [tok.encode(text[i * step: i * step + length])[:length] for i in range(n)]


if __name__ == "__main__":
    import transformers
    from benchmarks.common import print_table
    t0 = time.perf_counter()
    folder = export_llama()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"exported to {folder}; check_same_model (greedy, ours == HF generate == HF CB): "
          f"{check_same_model(folder)}")
    rows = []
    for n in (1, 4, 16):
        ps = _prompts(n)
        for name, fn in (("hf_static", hf_static), ("hf_continuous", hf_continuous)):
            r = fn(folder, ps, max_new_tokens=48, temperature=0.8, seed=0)
            rows.append({"engine": name, "N": n, **r})
    print_table(rows, ["engine", "N", "tokens", "wall_s", "tokens_per_s", "errors",
                       "generate_batch_tokens_per_s", "error"])
    print(f"total {time.perf_counter() - t0:.1f} s")
    shutil.rmtree(folder, ignore_errors=True)

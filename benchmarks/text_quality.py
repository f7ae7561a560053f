"""Tiny-shakespeare char-level val loss at equal wall-clock: our recipe vs nanoGPT's CPU recipe.

Both run through our own trainer in this one process, on this machine:
  * baseline "nanoGPT recipe": 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations,
    lr 1e-3 -> 1e-4, warmup 100, beta2 0.99, dropout 0, GPT-2 blocks (LayerNorm, GELU, learned
    positions, tied embeddings, no linear biases) as nanoGPT's README command trains it
    (nanoGPT reports val 1.88 for it).
  * ours: configs/text_shakespeare.yaml, trained for at most the baseline's measured wall-clock
    (max_time_s; the LR schedule follows elapsed time).
Val loss (nats/char) is measured on the same fixed random windows of the last 10% of the text,
at each model's own context and at context 64 (the baseline's), so the two can be compared
like for like.

    python benchmarks/text_quality.py            # ~3 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apps.text import recipe as train_text  # noqa: E402
from benchmarks.common import print_table, write_result  # noqa: E402
from modalities.text import make_tokenizer  # noqa: E402

NANOGPT_RECIPE = {
    "data": {"path": "../shared/data/tinyshakespeare.txt", "train_fraction": 0.9},
    "tokenizer": {"kind": "char"},
    "model": {"preset": "nano-gpt2", "args": {"qkv_bias": False, "out_bias": False, "mlp_bias": False,
                                              "mlp": "gelu", "block_size": 64}},
    "train": {"max_steps": 2000, "batch_size": 12, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
              "beta2": 0.99, "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 0, "ckpt_every": 0,
              "log_every": 100, "seed": 1337},
    "eval": {"batches": 2, "batch_size": 12},
}


@torch.no_grad()
def val_loss(model, tokenizer, text: str, block: int, n_windows: int, seed: int = 0) -> float:
    """Mean next-char loss (nats) over n fixed random windows of length ``block`` of ``text``."""
    model.eval()
    ids = torch.tensor(tokenizer.encode(text))
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids) - block - 1, (n_windows,), generator=g)
    total = 0.0
    for chunk in starts.split(64):
        x = torch.stack([ids[s:s + block] for s in chunk.tolist()])
        y = torch.stack([ids[s + 1:s + block + 1] for s in chunk.tolist()])
        loss, _ = model(x, targets={"lm": y})
        total += float(loss) * len(chunk)
    return total / n_windows


def run_one(name, cfg, out_dir, val_text, tok, n_windows):
    cfg = copy.deepcopy(cfg)
    cfg["train"]["out_dir"] = str(out_dir / name)
    cfg["train"]["progress"] = False
    t = time.time()
    model, m = train_text.run(cfg)
    row = {"model": name, "params": model.num_params(), "context": model.args.block_size,
           "steps": m["step"], "train_s": round(m["train_time_s"], 1), "tokens": m["tokens"],
           "tok_per_s": round(m["tokens"] / m["train_time_s"]),
           "val_loss": val_loss(model, tok, val_text, model.args.block_size, n_windows),
           "val_loss_ctx64": val_loss(model, tok, val_text, 64, n_windows),
           "wall_incl_setup_s": round(time.time() - t, 1)}
    print(f"[{name}] {row}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/text_shakespeare.yaml")
    ap.add_argument("--windows", type=int, default=1000, help="val windows per loss estimate")
    ap.add_argument("--budget-s", type=float, help="our wall-clock budget (default: the baseline's)")
    ap.add_argument("--out", default="/tmp/omniar_text_quality")
    ap.add_argument("--skip-baseline", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    text = train_text.resolve("../shared/data/tinyshakespeare.txt").read_text()
    val_text = text[int(len(text) * 0.9):]
    tok = make_tokenizer("char", text)  # what the recipe builds: one id per character of the corpus
    out = Path(a.out)
    rows = []
    if not a.skip_baseline:
        rows.append(run_one("nanoGPT recipe (our trainer)", NANOGPT_RECIPE, out, val_text, tok, a.windows))
    budget = a.budget_s or (rows[0]["train_s"] if rows else 70.0)
    ours = train_text.load_config(a.config)
    ours["train"] = {**ours["train"], "max_time_s": budget, "eval_every": 0, "ckpt_every": 0}
    rows.append(run_one(f"ours ({Path(a.config).name}, <= {budget:.0f}s)", ours, out, val_text, tok, a.windows))
    print()
    print_table(rows, ["model", "params", "context", "steps", "train_s", "tok_per_s", "val_loss", "val_loss_ctx64"])
    target = 1.70
    res = {"rows": rows, "budget_s": budget, "target_val_loss": target,
           "published_nanogpt_cpu_recipe": {"val_loss": 1.88, "note": "nanoGPT README; 1.886 in 70 s measured on this machine type (issue)"},
           "meets_target": rows[-1]["val_loss"] <= target,
           "note": "val = last 10% of tinyshakespeare, fixed random windows; val_loss at each model's own context"}
    print(f"\nours {rows[-1]['val_loss']:.4f} nats/char (target <= {target}) in {rows[-1]['train_s']} s; wrote",
          write_result("text_quality", res))


if __name__ == "__main__":
    main()

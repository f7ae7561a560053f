"""Recipe: add a Chimera/EAGLE-style draft head to a trained model (``omniar train draft-head``).

    omniar train draft-head --config configs/crystal_cif_drafthead.yaml

The config names the model folder (``model``), the data the model was trained on (same
``data`` section as its own recipe), the head's size and the trainer settings. Everything but
the new head is frozen, so the backbone and LM head stay bit-for-bit the same; the finished
model (old weights + ``heads.draft``) is written to ``out`` by the shared recipe runner, with the
draft-head command in ``meta.train_command`` and the base model's record in ``meta.base_model``.
"""
from __future__ import annotations

import re

import torch

from apps.text import recipe as train_text
from apps.text.recipe import read_corpus, resolve, split_point
from backbone.container import OmniModel, part
from backbone.train import TrainConfig, run_recipe
from heads.draft import DraftHead
from modalities.text import TextLMTask, load_tokenizer


class DraftTask:
    """The model's own training windows; the target of the draft head is the window itself."""

    def __init__(self, inner: TextLMTask):
        self.inner = inner

    @staticmethod
    def _map(b: dict) -> dict:
        return {"input_ids": b["input_ids"], "targets": {"draft": b["input_ids"]}}

    def train_batch(self, step: int, micro: int, rows: slice) -> dict:
        return self._map(self.inner.train_batch(step, micro, rows))

    def eval_batches(self) -> list[dict]:
        return [self._map(b) for b in self.inner.eval_batches()]


def add_draft_head(model: OmniModel, **kwargs) -> OmniModel:
    """Add (or replace) ``heads.draft`` and freeze everything else."""
    model.add_head("draft", part(DraftHead, dim=model.args.dim, vocab_size=model.args.vocab_size, **kwargs))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("heads.draft."))
    return model


def build(cfg: dict, tcfg: TrainConfig) -> tuple[OmniModel, DraftTask, object]:
    """The draft head's part of ``run_recipe``: the trained model with a new head, and its own
    training windows (the model's train/val split)."""
    folder = resolve(cfg["model"])
    model = OmniModel.from_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    meta = model.config["meta"]
    if "base_model" not in meta:  # the runner records this recipe's command and metrics in their place
        meta["base_model"] = {"folder": str(cfg["model"]), "train_command": meta.pop("train_command", None),
                              "final_metrics": meta.pop("final_metrics", None)}
    for stale in ("draft_head_command", "draft_head_metrics"):  # an older head's record (shipped models)
        meta.pop(stale, None)
    add_draft_head(model, **cfg.get("head", {}))
    data = cfg["data"]
    text = read_corpus(data)
    split = split_point(text, data)
    train_ids = torch.tensor(tokenizer.encode(text[:split]), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(text[split:]), dtype=torch.long)
    start = tokenizer.token_id("data_") if tokenizer.kind == "cif" else None
    ev = cfg.get("eval", {})
    task = DraftTask(TextLMTask(train_ids, val_ids, cfg.get("block_size", model.args.block_size), tcfg.batch_size,
                                ev.get("batches", 10), ev.get("batch_size"), seed=tcfg.seed, start_token=start))
    return model, task, tokenizer


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    """Train the draft head as the config says; returns the model (all parameters trainable again)
    and the final metrics."""
    model, metrics = run_recipe(cfg, build, resolve(out) if out else None, device, resume)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, metrics


def load_config(path) -> dict:
    """The draft-head recipe: same sections as a text config, where ``model`` names the folder."""
    cfg = train_text.load_config(path)
    if not re.fullmatch(r"[\w./-]+", str(cfg["model"])):
        raise ValueError(f"{path}: 'model' must be the checkpoint folder the head is trained on")
    return cfg

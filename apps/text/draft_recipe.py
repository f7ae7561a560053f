"""Recipe: add a Chimera/EAGLE-style draft head to a trained model (``omniar train draft-head``).

    omniar train draft-head --config configs/crystal_cif_drafthead.yaml

The config names the model folder (``model``), the data the model was trained on (same
``data`` section as its own recipe), the head's size and the trainer settings. Everything but
the new head is frozen, so the backbone and LM head stay bit-for-bit the same; the finished
model (old weights + ``heads.draft``) is written to ``out`` (atomically, by the shared trainer's
save_pretrained) with the command in ``meta.draft_head_command``.
"""
from __future__ import annotations

import re
import shlex
import sys

import torch

from apps.text import recipe as train_text
from apps.text.recipe import read_corpus, resolve, split_point
from backbone.container import OmniModel, part
from backbone.train import TrainConfig, train
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
    spec = part(DraftHead, dim=model.args.dim, vocab_size=model.args.vocab_size, **kwargs)
    model.config["heads"]["draft"] = spec
    model.heads["draft"] = DraftHead(**spec["kwargs"])
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("heads.draft."))
    return model


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[OmniModel, dict]:
    folder = resolve(cfg["model"])
    model = OmniModel.from_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    add_draft_head(model, **cfg.get("head", {}))
    data = cfg["data"]
    text = read_corpus(data)
    split = split_point(text, data)  # the model's own train/val split
    train_ids = torch.tensor(tokenizer.encode(text[:split]), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(text[split:]), dtype=torch.long)
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    start = tokenizer.token_id("data_") if tokenizer.kind == "cif" else None
    block = cfg.get("block_size", model.args.block_size)
    ev = cfg.get("eval", {})
    task = DraftTask(TextLMTask(train_ids, val_ids, block, tcfg.batch_size, ev.get("batches", 10),
                                ev.get("batch_size"), seed=tcfg.seed, start_token=start))
    if "train" in sys.argv:
        model.config["meta"]["draft_head_command"] = "omniar " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    metrics = train(model, task, tcfg, device=device, resume=resume, tokenizer=tokenizer)
    if out:
        model.config["meta"]["draft_head_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for p in model.parameters():
            p.requires_grad_(True)
        model.save_pretrained(resolve(out), tokenizer)
    return model, metrics


def load_config(path) -> dict:
    """The draft-head recipe: same sections as a text config, where ``model`` names the folder."""
    cfg = train_text.load_config(path)
    if not re.fullmatch(r"[\w./-]+", str(cfg["model"])):
        raise ValueError(f"{path}: 'model' must be the checkpoint folder the head is trained on")
    return cfg

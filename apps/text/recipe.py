"""Recipe: train a text LM from a YAML config (``omniar train text --config ...``).

The config names the data, the tokenizer, the model preset and the trainer settings; the
finished model is written to ``out`` with its tokenizer and the exact command in its config.
"""
from __future__ import annotations

import copy
import glob
import random
import re
from pathlib import Path

import torch
import yaml

from backbone.container import OmniModel, part
from backbone.train import TrainConfig, run_recipe
from backbone.transformer import ModelArgs
from heads.lm import LMHead
from modalities.crystal import END, cif_corpus, parse_composition
from modalities.text import TextLMTask, load_tokenizer, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def resolve(path: str) -> Path:
    """Paths in configs are relative to the project root (data lives in ../shared/data)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else ROOT / p


DATA_KEYS = {"path", "format", "train_fraction", "props", "symprec", "shuffle_seed"}


def read_corpus(data: dict) -> str:
    """The training text: ``data.path`` is a file, a glob or a list of them, concatenated in
    sorted file order. ``data.format: fortune`` turns the '%' lines that separate the entries of
    fortune(6) files into blank lines."""
    if not isinstance(data, dict) or "path" not in data:
        raise ValueError("the config's data: section needs a path (a file, a glob or a list of them)")
    unknown = set(data) - DATA_KEYS
    if unknown:
        raise ValueError(f"unknown data settings {sorted(unknown)}; known: {sorted(DATA_KEYS)}")
    tf = data.get("train_fraction", 0.9)
    if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 < tf < 1:
        raise ValueError(f"data setting train_fraction must be a number in (0, 1), got {tf!r}")
    paths = data["path"] if isinstance(data["path"], list) else [data["path"]]
    files = sorted({f for p in paths for f in (glob.glob(str(resolve(p))) if glob.has_magic(p) else [resolve(p)])})
    missing = [str(f) for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"training text {missing or data['path']} not found")
    fmt = data.get("format", "plain")
    if fmt == "cif_csv":
        # CrystaLLM: canonical CIFs (modalities/crystal.py), shuffled by seed, one blank line apart
        cifs = cif_corpus(files, props=data.get("props", False), symprec=data.get("symprec", 0.1),
                          cache_dir=ROOT / "runs" / "cache")
        random.Random(data.get("shuffle_seed", 0)).shuffle(cifs)
        return "".join(c + END[1:] for c in cifs)
    text = "".join(Path(f).read_text(encoding="utf-8") for f in files)
    if fmt == "fortune":
        return re.sub(r"(?m)^%$", "", text)
    if fmt != "plain":
        raise ValueError(f"unknown data format {fmt!r}; choose 'plain', 'fortune' or 'cif_csv'")
    return text


def split_point(text: str, data: dict) -> int:
    """nanoGPT: first 90% train, last 10% val, cut between characters (each part is tokenized
    on its own); CIF corpora are cut between whole CIFs."""
    split = int(len(text) * data.get("train_fraction", 0.9))
    if data.get("format") == "cif_csv":
        split = text.index("data_", split) if "data_" in text[split:] else len(text)
    return split


def load_config(path: str | Path, required=("data", "model", "train")) -> dict:
    """A YAML recipe; FileNotFoundError / ValueError (naming the missing sections) if unusable."""
    path = resolve(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ValueError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    missing = sorted(set(required) - set(cfg)) if isinstance(cfg, dict) else list(required)
    if missing:
        raise ValueError(f"{path}: the config needs {', '.join(repr(m) for m in missing)}")
    return cfg


def build_text_model(cfg: dict, vocab_size: int, meta: dict | None = None) -> OmniModel:
    """The recipe's model: a preset with ``args`` overrides, or (``init_from``) the architecture
    and weights of an existing checkpoint, to fine-tune it (its vocabulary may be one larger than
    the tokenizer's: a MEAP model's [MASK]). ``emo: true`` gives the LM head the EMO loss, its
    transport cost frozen from the starting weights (heads/lm.py)."""
    m = dict(cfg["model"])
    init_from, emo = m.pop("init_from", None), bool(m.pop("emo", False))
    obj_args = {"prefix_lm": True} if cfg.get("objective", {}).get("prefix_lm") else {}
    if init_from:
        src = OmniModel.from_pretrained(resolve(init_from))
        if src.heads["lm"].vocab_size not in (vocab_size, vocab_size + 1):
            raise ValueError(f"{init_from} has a vocabulary of {src.heads['lm'].vocab_size}, the recipe {vocab_size}")
        config = copy.deepcopy(src.config)
        config["heads"]["lm"]["kwargs"]["emo"] = emo
        config["backbone"].update(obj_args)
        config["meta"] = {**(meta or {}), "init_from": str(init_from)}
        model = OmniModel(config)
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        if unexpected or set(missing) - {"heads.lm.cost_embedding", "heads.lm.proj.weight"}:
            raise ValueError(f"{init_from} does not match: missing {missing}, unexpected {unexpected}")
    else:
        args = ModelArgs.from_name(m.pop("preset", "mini"), vocab_size=vocab_size, **{**m.pop("args", {}), **obj_args})
        tie = m.pop("tie_embeddings", True)
        if m:
            raise ValueError(f"unknown model settings {sorted(m)}")
        model = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=vocab_size, tie=tie, emo=emo)},
                                meta=meta or {})
    if emo:
        model.heads["lm"].freeze_cost_embedding()
    return model


def text_tokenizer(cfg: dict, text: str, split: int):
    """The recipe's tokenizer: trained on the corpus (``kind`` char | bpe | cif), or another
    checkpoint's (``from``: a draft model must share the big one's ids; fine-tuning keeps its own)."""
    tk = cfg.get("tokenizer", {"kind": "char"})
    if cfg["model"].get("init_from") and "from" not in tk:
        tk = {"from": cfg["model"]["init_from"]}
    if "from" in tk:
        return load_tokenizer(resolve(tk["from"]))
    return make_tokenizer(tk.get("kind", "char"), text[:split] if tk.get("kind") == "bpe" else text,
                          tk.get("vocab_size", 2048), tk.get("special_tokens"))


def build(cfg: dict, tcfg: TrainConfig) -> tuple[OmniModel, TextLMTask, object]:
    """The text task's part of ``run_recipe``: corpus, tokenizer, model and token-window batches."""
    data = cfg["data"]
    text = read_corpus(data)
    split = split_point(text, data)
    tokenizer = text_tokenizer(cfg, text, split)
    train_ids = torch.tensor(tokenizer.encode(text[:split]), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(text[split:]), dtype=torch.long)
    objective = cfg.get("objective", {})
    mask_id = tokenizer.vocab_size if objective.get("meap") else None  # MEAP's [MASK]: one id past the tokenizer's
    vocab = tokenizer.vocab_size + (mask_id is not None)
    model = build_text_model(cfg, vocab, meta={
        "task": cfg.get("task", "text"), "tokenizer": tokenizer.kind, "data": data["path"],
        "data_format": data.get("format", "plain"), "props": data.get("props", False),
        "train_fraction": data.get("train_fraction", 0.9),
        **({"objective": objective} if objective else {}),
        **({"mask_token_id": mask_id} if mask_id is not None else {})})
    start = tokenizer.token_id("data_") if tokenizer.kind == "cif" else None
    if tokenizer.kind == "cif":  # the generator refuses prompts for larger cells than it has seen
        model.config["meta"]["max_atoms"] = max(
            int(parse_composition(f).num_atoms) for f in re.findall(r"^data_(\S+)$", text[:split], re.M))
    ev = cfg.get("eval", {})
    task = TextLMTask(train_ids, val_ids, model.args.block_size, tcfg.batch_size, ev.get("batches", 20),
                      ev.get("batch_size"), seed=tcfg.seed, start_token=start, objective=objective, mask_id=mask_id)
    return model, task, tokenizer


def run(cfg: dict, out: str | None = None, resume: bool = False, device: str = "cpu") -> tuple[OmniModel, dict]:
    """Train as the config says; returns the model and the final metrics."""
    return run_recipe(cfg, build, out, device, resume)

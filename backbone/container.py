"""The model container: backbone + named input adapters + named heads, saved as one folder.

A folder holds ``config.json`` (naming every part) and ``model.safetensors`` (+ tokenizer files
written by the modality). One checkpoint may carry several heads. Adding a modality means
adding a file in modalities/ and one in heads/; the container imports them by dotted name
from the config, restricted to this project's packages (so a config can't import arbitrary code).
"""
from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from .transformer import ModelArgs, Transformer

ALLOWED_PACKAGES = ("backbone.", "heads.", "modalities.")


def part(cls: type, **kwargs) -> dict:
    """Config entry for an adapter or head: ``part(LMHead, dim=384, vocab_size=65)``."""
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": kwargs}


def _import_class(path: str) -> type:
    if not path.startswith(ALLOWED_PACKAGES):
        raise ValueError(f"refusing to import {path!r}: parts must live in {ALLOWED_PACKAGES}")
    module, name = path.rsplit(".", 1)
    obj = getattr(importlib.import_module(module), name, None)
    # only nn.Module classes defined in this project: a config must not be able to call an
    # arbitrary function that happens to be importable from an allowed module
    # (e.g. backbone.container.atomic_write_text would write any file at load time)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)
            and obj.__module__.startswith(ALLOWED_PACKAGES)):
        raise ValueError(f"refusing to import {path!r}: not an nn.Module class defined in {ALLOWED_PACKAGES}")
    return obj


class OmniModel(nn.Module):
    """config = {"backbone": ModelArgs fields, "adapters": {name: part}, "heads": {name: part},
    "meta": free-form (tokenizer kind, training command, ...)}."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.config.setdefault("adapters", {})
        self.config.setdefault("heads", {})
        self.config.setdefault("meta", {})
        self.args = ModelArgs(**self.config["backbone"])
        self.backbone = Transformer(self.args)
        self.adapters = nn.ModuleDict({n: _import_class(p["class"])(**p.get("kwargs", {}))
                                       for n, p in self.config["adapters"].items()})
        self.heads = nn.ModuleDict({n: _import_class(p["class"])(**p.get("kwargs", {}))
                                    for n, p in self.config["heads"].items()})
        for head in self.heads.values():
            self._attach(head)

    def _attach(self, head: nn.Module):
        """A head that shares parts of the model takes them here, once every part exists
        (``head.attach(model)``: a tied LM head's weight, a draft head's frozen embedding and LM head)."""
        if hasattr(head, "attach"):
            head.attach(self)

    def add_head(self, name: str, spec: dict) -> nn.Module:
        """Add (or replace) head ``name`` from a ``part`` spec, in the config too; returns it."""
        self.config["heads"][name] = spec
        self.heads[name] = _import_class(spec["class"])(**spec.get("kwargs", {}))
        self._attach(self.heads[name])
        return self.heads[name]

    @classmethod
    def build(cls, args: ModelArgs, heads: dict[str, dict], adapters: dict[str, dict] | None = None,
              meta: dict | None = None) -> "OmniModel":
        return cls({"backbone": args.to_dict(), "heads": heads, "adapters": adapters or {}, "meta": meta or {}})

    def forward(self, input_ids: Tensor | None = None, targets: dict | None = None,
                loss_weights: dict[str, float] | None = None, adapter_inputs: dict | None = None,
                scheduled_sampling: float = 0.0, **backbone_kwargs):
        """Backbone forward, plus the weighted sum of head losses when ``targets`` is given.

        adapter_inputs: {adapter_name: raw input} for continuous modalities; the adapter turns
            it into the (B, T, D) ``embeds`` of the backbone (one adapter per call).

        targets: {head_name: target} where target is either (B, T) for heads that score every
            position (LM: -100 = ignore), or a pair (select (B, T) bool, target (N, ...)) for heads
            that predict at selected positions only (image patches, series segments).
        scheduled_sampling: probability p of replacing each input token (after the first) by
            the model's own sample for it, drawn in a first, gradient-free pass over the clean
            input (batch-scheduled sampling, Cen et al. 2024 "Bridging the Training-Inference
            Gap in LLMs by Leveraging Self-Generated Tokens"; Bengio et al. 2015). Targets stay
            the ground truth. Needs token input and an "lm" head.
        A mixture-of-experts backbone adds its load-balancing loss as "moe_aux" (training only,
            weight ``moe_aux_weight``).
        Returns h (B, T, D) without targets, else (loss scalar, {head_name: loss}).
        """
        if scheduled_sampling > 0 and self.training:
            input_ids = self.mix_own_samples(input_ids, scheduled_sampling, backbone_kwargs)
        if adapter_inputs:
            if len(adapter_inputs) != 1:
                raise ValueError("give one adapter input per call")
            (name, raw), = adapter_inputs.items()
            backbone_kwargs["embeds"] = self.adapters[name](raw)
        h = self.backbone(input_ids=input_ids, **backbone_kwargs)
        if not targets:
            return h
        losses = {}
        for name, tgt in targets.items():
            if isinstance(tgt, (tuple, list)):
                sel, tgt = tgt
                losses[name] = self.heads[name].loss(h[sel], tgt)
            else:
                losses[name] = self.heads[name].loss(h, tgt)
        w = dict(loss_weights or {})
        if self.training and self.args.n_experts:
            aux = [layer.mlp.aux_loss for layer in self.backbone.layers if layer.mlp.aux_loss is not None]
            if aux:
                losses["moe_aux"] = torch.stack(aux).mean()
                w.setdefault("moe_aux", self.args.moe_aux_weight)
        total = sum(w.get(n, 1.0) * l for n, l in losses.items())
        return total, losses

    @torch.no_grad()
    def mix_own_samples(self, input_ids: Tensor, p: float, backbone_kwargs: dict, head: str = "lm") -> Tensor:
        """(B, T) ids -> (B, T) ids where each token t >= 1 is, with probability p, replaced by a
        sample from the model's prediction at t-1 (made from the clean prefix, temperature 1)."""
        if input_ids is None or head not in self.heads:
            raise ValueError("scheduled sampling needs token input_ids and an 'lm' head")
        was = self.training
        self.eval()  # the proposal pass: no dropout, no MoE aux bookkeeping
        logits = self.heads[head](self.backbone(input_ids=input_ids, **backbone_kwargs)[:, :-1]).float()
        self.train(was)
        own = torch.multinomial(logits.softmax(-1).flatten(0, 1), 1).view_as(input_ids[:, 1:])  # (B, T-1)
        swap = torch.rand(own.shape, device=own.device) < p
        mixed = input_ids.clone()
        mixed[:, 1:] = torch.where(swap, own, input_ids[:, 1:])
        return mixed

    # ---- checkpoint I/O (safetensors only; nothing is unpickled) -------------------------------
    def save_pretrained(self, folder: str | os.PathLike, tokenizer=None) -> Path:
        """Write config.json + model.safetensors (+ tokenizer files) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "model.safetensors.tmp"
        save_model(self, str(tmp))  # drops tied duplicates, load_model restores them
        os.replace(tmp, folder / "model.safetensors")
        atomic_write_text(folder / "config.json", json.dumps(self.config, indent=2))
        if tokenizer is not None:
            tokenizer.save(folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device=None, dtype: torch.dtype | None = None) -> "OmniModel":
        """Load a folder written by ``save_pretrained``. Raises FileNotFoundError with the path."""
        folder = Path(folder)
        for f in ("config.json", "model.safetensors"):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder / f} not found: not an OmniAR checkpoint folder "
                                        "(expected config.json + model.safetensors; nothing is downloaded)")
        config = read_config(folder / "config.json")
        header = read_safetensors_header(folder / "model.safetensors")
        try:                   # the shapes the config implies, with no memory allocated (a huge dim is cheap)
            with torch.device("meta"):
                skeleton = cls(config)
        except (TypeError, KeyError, ValueError, AttributeError, ImportError) as e:
            raise ValueError(f"{folder / 'config.json'} does not describe a model this code can build: "
                             f"{type(e).__name__}: {e}") from None
        check_weights_match(skeleton, header, folder / "model.safetensors")
        model = cls(config)
        load_model(model, str(folder / "model.safetensors"), strict=True)
        bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(f"{folder / 'model.safetensors'} holds NaN or infinite weights in {len(bad)} "
                             f"tensor(s), e.g. {bad[0]}: the checkpoint is broken; re-train or re-export it")
        model.eval()
        return model.to(device=device, dtype=dtype) if (device or dtype) else model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def read_config(path: Path) -> dict:
    """config.json -> dict; ValueError naming the file for bad JSON or a wrong top-level shape."""
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict):
        raise ValueError(f"{path} needs a JSON object with a 'backbone' object (the model's sizes)")
    for key in ("heads", "adapters"):
        parts = config.get(key, {})
        if not isinstance(parts, dict) or not all(isinstance(p, dict) and isinstance(p.get("class"), str)
                                                   for p in parts.values()):
            raise ValueError(f"{path}: '{key}' must map names to {{\"class\": ..., \"kwargs\": {{...}}}}")
    return config


def read_safetensors_header(path: Path) -> dict:
    """The tensor table of a safetensors file, {name: (dtype, shape)}, read without loading any
    tensor; ValueError for a file that is not safetensors, is truncated or is inconsistent."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, 100_000_000):
            raise ValueError(f"{path} is not a safetensors file (bad or truncated header)")
        try:
            table = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path} is not a safetensors file (its header is not a table)")
    out, end = {}, 0
    for name, t in table.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (_, b) = t["dtype"], [int(x) for x in t["shape"]], t["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: the header entry of {name!r} is malformed") from None
        out[name] = (dtype, tuple(shape))
        end = max(end, int(b))
    if 8 + n + end > size:
        raise ValueError(f"{path} is truncated: its header promises {8 + n + end} bytes, the file has {size}")
    return out


def check_weights_match(skeleton: nn.Module, header: dict, path: Path):
    """Compare the tensors a config implies (``skeleton``, built on the meta device) with a file's
    header before anything is allocated: ValueError naming missing, unexpected or mis-shaped ones.
    Tied tensors (saved once) count as present when one of their names is."""
    groups: dict[int, list[str]] = {}
    shapes = {}
    for name, t in skeleton.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
        shapes[name] = tuple(t.shape)
    missing = [names[0] for names in groups.values() if not any(n in header for n in names)]
    extra = [n for n in header if n not in shapes]
    wrong = [f"{n} {list(header[n][1])} (config says {list(shapes[n])})" for n in header
             if n in shapes and header[n][1] != shapes[n]]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape, e.g. {wrong[0]}")
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} not in the config's model, e.g. {extra[0]}")
    if problems:
        raise ValueError(f"{path} does not match config.json: tensors " + "; ".join(problems))


def atomic_write_text(path: str | os.PathLike, text: str):
    """Write via a temp file + rename so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

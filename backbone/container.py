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
        model = cls(json.loads((folder / "config.json").read_text()))
        load_model(model, str(folder / "model.safetensors"), strict=True)
        model.eval()
        return model.to(device=device, dtype=dtype) if (device or dtype) else model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def atomic_write_text(path: str | os.PathLike, text: str):
    """Write via a temp file + rename so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

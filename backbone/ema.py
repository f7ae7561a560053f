"""An exponential moving average of a model's weights, which the trainer ships instead of the last
step's weights when ``ema > 0`` (as MAR and DiT do: diffusion samplers are sensitive to the step
noise of the last update, and an average over the final few thousand steps samples cleaner).

The shadow is float32 and lives on the model's device; its decay warms up as
``min(decay, (1 + n) / (10 + n))`` after n updates (the schedule of timm's ModelEmaV2 with
warmup, and of TF's ExponentialMovingAverage with num_updates), so an early snapshot is an
average of the steps so far rather than of the random init.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """Shadow copies of ``model``'s floating-point parameters, updated after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer setting ema must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.names = [n for n, p in model.named_parameters() if p.is_floating_point()]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module):
        """shadow <- d * shadow + (1 - d) * weights, with the warmed-up decay d."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.shadow.values()), [p.detach().float() for p in self._params(model)], 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module):
        """Put the averaged weights into ``model`` (in its dtype)."""
        for p, s in zip(self._params(model), self.shadow.values()):
            p.copy_(s)

    @contextmanager
    def applied(self, model: nn.Module):
        """Run a block (evaluation, a checkpoint's model folder) with the averaged weights, then put
        the training weights back exactly."""
        saved = [p.detach().clone() for p in self._params(model)]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, s in zip(self._params(model), saved):
                    p.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: the shadow under its parameter names, and the update count."""
        return {**{f"shadow/{n}": s.detach().cpu().contiguous() for n, s in self.shadow.items()},
                "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]):
        missing = [n for n in self.names if f"shadow/{n}" not in tensors]
        if missing or "updates" not in tensors:
            raise ValueError(f"the checkpoint's EMA state does not match the model (missing {missing[:3]})")
        for n in self.names:
            self.shadow[n].copy_(tensors[f"shadow/{n}"])
        self.updates = int(tensors["updates"])

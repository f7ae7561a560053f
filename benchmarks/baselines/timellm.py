"""Time-LLM (Jin et al. 2024, "Time-LLM: Time Series Forecasting by Reprogramming Large Language
Models"): a forecaster that keeps a text model FROZEN and learns only to talk to it.

    series (B, L) -> RevIN -> patches (B, N, P) -> patch embedding (B, N, d_model)
      -> reprogramming: cross-attention onto V' text prototypes      (B, N, D)
      -> [prompt-as-prefix token embeddings (B, Tp, D); patches]      (B, Tp+N, D)
      -> frozen text backbone -> hidden states at the N patch positions
      -> first d_ff features, flattened -> linear -> (B, H)   (one model for all horizons)

A baseline for apps/forecast/ (AutoTimes-style: a backbone trained on series), run by
benchmarks/forecast_timellm.py: here the
backbone is the text model of assets/text-fortunes-bpe and only the patch embedding, the
reprogramming layer and the output projection train. The text weights are never updated.

Differences from the paper's code, on purpose: the patch embedding is linear (the paper uses a
kernel-3 Conv1d); normalisation statistics are those of modalities.timeseries.instance_stats
(missing values allowed, a std floor for constant series); the "top-5 lags" are the five
highest autocorrelation peaks in lags 1..L/2 (the paper's code takes a plain top-k of the
circular autocorrelation, which returns lag 0 and its neighbours); the trend is the sign of a
least-squares slope; the prompt is terse, and when it does not fit in the text model's context
(block_size) beside the patches, the description and then the task are dropped (``fit_prompt``;
``prompt_fit`` counts how often)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from backbone.container import OmniModel, atomic_write_text
from backbone.masks import MaskSpec
from modalities.text import load_tokenizer
from modalities.timeseries import MIN_SCALE

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DESCRIPTION = "Hourly electricity transformer load and oil temperature."


def instance_norm(x: Tensor) -> tuple[Tensor, Tensor]:
    """RevIN statistics (Kim et al. 2022; Time-LLM's input embedding) with instance_stats' semantics:
    x (B, L) with NaN for missing -> mean, std (B, 1) over the observed values (population std),
    std floored at MIN_SCALE * (1 + |mean|). A row with no observation gets mean 0."""
    obs = ~torch.isnan(x)
    xd = torch.where(obs, x, 0).double()
    n = obs.sum(-1, keepdim=True)
    mean = xd.sum(-1, keepdim=True) / n.clamp(min=1)
    var = (torch.where(obs, xd - mean, 0) ** 2).sum(-1, keepdim=True) / n.clamp(min=1)
    std = torch.where(n > 1, var.sqrt(), 0.0)
    std = torch.maximum(std, MIN_SCALE * (1 + mean.abs()))
    return mean.to(x.dtype), std.to(x.dtype)


def series_stats(z: Tensor, obs: Tensor, top_k: int = 5) -> dict[str, Tensor]:
    """The prompt's input statistics (Time-LLM's Prompt-as-Prefix) of normalised series.
    z (B, L) with 0 where unobserved, obs (B, L) bool -> min, max, median, slope (B,), lags (B, k)."""
    L = z.shape[-1]
    none = ~obs.any(-1, keepdim=True)
    obs = obs | none                                                      # an empty row: stats of zeros
    zn = torch.where(obs, z, float("nan"))
    lo = torch.where(obs, z, float("inf")).amin(-1)
    hi = torch.where(obs, z, float("-inf")).amax(-1)
    med = zn.nanmedian(-1).values
    t = torch.arange(L, dtype=z.dtype, device=z.device).expand_as(z)     # least-squares slope sign
    n = obs.sum(-1, keepdim=True)
    tc = torch.where(obs, t - (t * obs).sum(-1, keepdim=True) / n, 0)
    slope = (tc * torch.where(obs, z, 0)).sum(-1)
    # autocorrelation by FFT (Wiener-Khinchin); zero-padded to 2L, so linear, not circular
    f = torch.fft.rfft(z.float(), n=2 * L)
    ac = torch.fft.irfft(f * f.conj(), n=2 * L)[:, :L // 2 + 1]          # (B, L/2+1): lags 0..L/2
    ac = ac / ac[:, :1].clamp(min=1e-8)
    mid = ac[:, 1:-1]                                                     # lags 1..L/2-1
    peak = (mid > ac[:, :-2]) & (mid >= ac[:, 2:])
    k = min(top_k, mid.shape[-1])
    lags = (mid + 4.0 * peak).topk(k, -1).indices + 1                    # peaks first, by height
    return {"min": lo, "max": hi, "median": med, "slope": slope, "lags": lags}


class ReprogrammingLayer(nn.Module):
    """Patch reprogramming (Time-LLM): multi-head cross-attention with patch
    embeddings as queries and text prototypes as keys and values, out to the text model's dim.
    patches (B, N, d_model), prototypes (V', D) -> (B, N, D)."""

    def __init__(self, d_model: int, n_heads: int, d_llm: int, d_keys: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.n_heads, self.d_keys = n_heads, d_keys or d_llm // n_heads
        self.query = nn.Linear(d_model, self.d_keys * n_heads)
        self.key = nn.Linear(d_llm, self.d_keys * n_heads)
        self.value = nn.Linear(d_llm, self.d_keys * n_heads)
        self.out = nn.Linear(self.d_keys * n_heads, d_llm)
        self.dropout = dropout

    def forward(self, patches: Tensor, prototypes: Tensor) -> Tensor:
        B, N, _ = patches.shape
        S, H, E = prototypes.shape[0], self.n_heads, self.d_keys
        q = self.query(patches).view(B, N, H, E).transpose(1, 2)                   # (B, H, N, E)
        k = self.key(prototypes).view(S, H, E).transpose(0, 1).expand(B, H, S, E)  # (B, H, V', E)
        v = self.value(prototypes).view(S, H, E).transpose(0, 1).expand(B, H, S, E)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, H * E))                    # (B, N, D)


class TimeLLM(nn.Module):
    """x (B, L) context (NaN = missing) -> (B, horizon) forecast in the input's units.

    text_model: a text OmniModel (its backbone and token embeddings are used, frozen);
    tokenizer: its tokenizer (``encode(str) -> ids``); text_model_path: its folder, recorded
    in the saved config so ``from_pretrained`` can find it again.
    """

    def __init__(self, text_model: OmniModel, tokenizer, lookback: int, horizon: int = 720,
                 patch_len: int = 16, stride: int = 8, d_model: int = 32, n_heads: int = 8,
                 d_keys: int | None = None, n_prototypes: int = 100, d_ff: int = 128, dropout: float = 0.1,
                 description: str = DEFAULT_DESCRIPTION, top_k_lags: int = 5, text_model_path: str | None = None):
        super().__init__()
        self.config = dict(lookback=lookback, horizon=horizon, patch_len=patch_len, stride=stride,
                           d_model=d_model, n_heads=n_heads, d_keys=d_keys, n_prototypes=n_prototypes, d_ff=d_ff,
                           dropout=dropout, description=description, top_k_lags=top_k_lags,
                           text_model=None if text_model_path is None else str(text_model_path))
        self.llm, self.tokenizer = text_model.backbone, tokenizer
        self.llm.requires_grad_(False).eval()                # frozen: never trained, never in train mode
        D, V = self.llm.args.dim, self.llm.args.vocab_size
        # Time-LLM pads the end with `stride` copies of the last value, then unfolds
        self.n_patches = (lookback + stride - patch_len) // stride + 1
        self.prompt_budget = self.llm.args.block_size - self.n_patches
        if self.prompt_budget < 0:
            raise ValueError(f"{self.n_patches} patches do not fit the text model's context of "
                             f"{self.llm.args.block_size}: raise stride or patch_len")
        if d_ff > D:
            raise ValueError(f"d_ff={d_ff} exceeds the text model's dim {D}")
        self.patch_embed = nn.Linear(patch_len, d_model)                       # (B, N, P) -> (B, N, d_model)
        self.mapping = nn.Linear(V, n_prototypes)                              # V -> V' text prototypes
        self.reprogram = ReprogrammingLayer(d_model, n_heads, D, d_keys, dropout)
        self.head = nn.Linear(self.n_patches * d_ff, horizon)                  # FlattenHead of the paper
        self.drop = nn.Dropout(dropout)
        self.prompt_fit = dict.fromkeys(("full", "no_description", "statistics_only", "cut"), 0)

    def train(self, mode: bool = True) -> "TimeLLM":
        super().train(mode)
        self.llm.eval()
        return self

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---- Prompt-as-Prefix (Time-LLM) ---------------------------------------------------------
    def prompt_parts(self, z: Tensor, obs: Tensor) -> list[tuple[str, str, str]]:
        """Normalised series z (B, L), obs (B, L) -> per series (dataset description, task,
        input statistics: min, max, median, trend, top lags), as in the paper's prompt."""
        s = series_stats(z, obs, self.config["top_k_lags"])
        task = f"Forecast the next {self.config['horizon']} steps."
        out = []
        for i in range(z.shape[0]):
            lags = " ".join(str(int(l)) for l in s["lags"][i])
            stats = (f"min {float(s['min'][i]):.2f} max {float(s['max'][i]):.2f} "
                     f"median {float(s['median'][i]):.2f} trend {'up' if s['slope'][i] > 0 else 'down'} lags {lags}")
            out.append((self.config["description"], task, stats))
        return out

    def prompts(self, z: Tensor, obs: Tensor) -> list[str]:
        """The full prompt texts (B strings); see ``prompt_parts``."""
        return [" ".join(p for p in parts if p) for parts in self.prompt_parts(z, obs)]

    def fit_prompt(self, parts: tuple[str, str, str]) -> list[int]:
        """Token ids of the longest prompt that fits the context left by the patches: the whole
        prompt, else without the description, else the statistics alone, else their last tokens."""
        for kind, keep in (("full", parts), ("no_description", parts[1:]), ("statistics_only", parts[2:])):
            ids = self.tokenizer.encode(" ".join(p for p in keep if p))
            if len(ids) <= self.prompt_budget:
                self.prompt_fit[kind] += 1
                return ids
        self.prompt_fit["cut"] += 1
        return ids[len(ids) - self.prompt_budget:]

    def embed_prompts(self, parts: list[tuple[str, str, str]]) -> tuple[Tensor, Tensor]:
        """Tokenise (``fit_prompt``) and embed with the frozen table, left-padded to the longest:
        -> embeds (B, Tp, D), valid (B, Tp) bool."""
        ids = [self.fit_prompt(p) for p in parts]
        Tp = max(len(i) for i in ids)
        dev = self.llm.tok_embeddings.weight.device
        tok = torch.zeros(len(ids), Tp, dtype=torch.long, device=dev)
        valid = torch.zeros(len(ids), Tp, dtype=torch.bool, device=dev)
        for r, i in enumerate(ids):
            if i:
                tok[r, Tp - len(i):] = torch.tensor(i, device=dev)
                valid[r, Tp - len(i):] = True
        return self.llm.tok_embeddings(tok), valid                              # (B, Tp, D), (B, Tp)

    # ---- forward ------------------------------------------------------------------------------
    def forward_normalised(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L') -> forecast (B, horizon) in instance-normalised units, mean, std (B, 1).
        A context longer than ``lookback`` keeps its end; a shorter one is left-padded (missing)."""
        L = self.config["lookback"]
        x = x.float()
        x = x[:, -L:] if x.shape[1] >= L else F.pad(x, (L - x.shape[1], 0), value=float("nan"))
        mean, std = instance_norm(x)                                           # (B, 1)
        obs = ~torch.isnan(x)
        z = torch.where(obs, (x - mean) / std, 0.0)                            # (B, L), missing = the mean
        P, S = self.config["patch_len"], self.config["stride"]
        zp = torch.cat([z, z[:, -1:].expand(-1, S)], 1)                        # (B, L+S) ReplicationPad
        patches = zp.unfold(1, P, S)                                           # (B, N, P)
        e = self.drop(self.patch_embed(patches))                               # (B, N, d_model)
        W = self.llm.tok_embeddings.weight                                     # (V, D), frozen
        prototypes = self.mapping(W.t()).t()                                   # (V', D)
        r = self.reprogram(e, prototypes)                                      # (B, N, D)
        p, valid = self.embed_prompts(self.prompt_parts(z, obs))               # (B, Tp, D), (B, Tp)
        h = torch.cat([p.to(r.dtype), r], 1)                                   # (B, Tp+N, D)
        mask = None
        if not valid.all():  # left padding: pads are never attended (RoPE is relative, so no shift)
            mask = MaskSpec(attention_mask=torch.cat([valid, torch.ones_like(r[..., 0], dtype=torch.bool)], 1))
        h = self.llm(embeds=h, mask=mask)[:, -self.n_patches:, :self.config["d_ff"]]  # (B, N, d_ff)
        y = self.head(self.drop(h.flatten(1)))                                 # (B, horizon)
        return y, mean, std

    def forward(self, x: Tensor, horizon: int | None = None) -> Tensor:
        """x (B, L) -> (B, horizon) in the input's units (RevIN denormalisation)."""
        y, mean, std = self.forward_normalised(x)
        return (y * std + mean)[:, :horizon or self.config["horizon"]]

    def loss(self, x: Tensor, y: Tensor, normalised: bool = False) -> Tensor:
        """MSE after denormalisation, as the paper trains; ``normalised``: in each series'
        instance-normalised units instead (scale-free, for series of mixed scales). Missing
        targets are skipped. x (B, L), y (B, H <= horizon)."""
        pred, mean, std = self.forward_normalised(x)
        pred = pred[:, :y.shape[1]]
        obs = ~torch.isnan(y)
        err = pred - (y - mean) / std if normalised else pred * std + mean - y
        return (torch.where(obs, err, 0.0) ** 2).sum() / obs.sum().clamp(min=1)

    @torch.no_grad()
    def predict(self, context: np.ndarray, horizon: int | None = None, batch_size: int = 256) -> np.ndarray:
        """context (N, L) array -> (N, horizon) float64 forecasts, batched, in eval mode."""
        was = self.training
        self.eval()
        dev = self.head.weight.device
        try:
            out = [self(torch.as_tensor(np.asarray(context[i:i + batch_size]), dtype=torch.float32, device=dev),
                        horizon).double().cpu().numpy() for i in range(0, len(context), batch_size)]
        finally:
            self.train(was)
        return np.concatenate(out)

    # ---- checkpoint I/O: only the trainable weights (safetensors) + config.json -------------------
    def save_pretrained(self, folder: str | os.PathLike, meta: dict | None = None) -> Path:
        if self.config["text_model"] is None:
            raise ValueError("give text_model_path at construction so the checkpoint can name its text model")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("llm.")}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(weights, str(tmp))
        os.replace(tmp, folder / WEIGHTS_FILE)
        cfg = {"class": "benchmarks.baselines.timellm.TimeLLM", "kwargs": self.config,
               "text_model_sha256": _sha256(_resolve(self.config["text_model"]) / WEIGHTS_FILE), "meta": meta or {}}
        atomic_write_text(folder / CONFIG_FILE, json.dumps(cfg, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, text_model: str | os.PathLike | None = None,
                        device=None) -> "TimeLLM":
        """Load the trainable weights from ``folder`` and the frozen text model from the folder
        its config names (or ``text_model``); ValueError if that text model's weights changed."""
        folder = Path(folder)
        for f in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder / f} not found: not a TimeLLM checkpoint folder")
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        kwargs = dict(cfg["kwargs"])
        name = str(text_model or kwargs.pop("text_model"))
        kwargs.pop("text_model", None)
        path = _resolve(name)
        if _sha256(path / WEIGHTS_FILE) != cfg["text_model_sha256"]:
            raise ValueError(f"{path} is not the text model this TimeLLM was trained on (weights differ)")
        model = cls(OmniModel.from_pretrained(path), load_tokenizer(path), text_model_path=name, **kwargs)
        state = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("llm.")] + list(unexpected)
        if bad:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match the config: {bad[:5]}")
        model.eval()
        return model.to(device) if device else model


def _resolve(name: str) -> Path:
    """A text-model folder: as given, else (a relative path) inside this repository."""
    path = Path(name)
    return REPO / path if not path.is_absolute() and not path.is_dir() and (REPO / path).is_dir() else path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

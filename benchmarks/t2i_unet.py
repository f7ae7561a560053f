"""UNet text-to-image baseline for GenEval-lite (issue 3): a small diffusers UNet2DConditionModel
trained with DDPM (Ho et al. 2020) on the same synthetic shape scenes as apps/t2i/recipe.py, sampled
with DDIM (Song et al. 2021) and classifier-free guidance (Ho & Salimans 2022).

Conditioning: caption words (apps.t2i.data.WordVocab ids) -> nn.Embedding + learned positions (+ one
small transformer layer so "red" can bind to the "circle" after it) -> cross-attention. Every
caption is ``<bos> words <pad>...`` up to ``max_len``; the empty caption ``<bos> <pad>...`` is the
null condition, trained with probability ``caption_drop`` as in ShapesT2ITask.

Prediction target: v (Salimans & Ho 2022), not epsilon. With a cosine schedule and "trailing"
DDIM spacing the first sampling step is at SNR ~ 0, where an epsilon model's x0 estimate is
ill-conditioned (x0 = (x_t - sigma eps) / alpha, alpha ~ 0); v stays well-scaled at every noise
level, which matters for 25-step DDIM on flat-colour images with CFG 3. CFG on v is the same
guidance as on eps (both are affine in the model output for a fixed x_t).

    python benchmarks/t2i_unet.py --seconds 1500 --out runs/t2i_unet
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apps.t2i.data import BOS, MAX_PROMPTS, PAD, WordVocab, encode_prompts  # noqa: E402
from backbone.container import atomic_write_text  # noqa: E402
from heads.diffusion import cfg_schedule as ramp  # noqa: E402
from modalities.image_shapes import caption, grammar_words, make_scenes  # noqa: E402

# ~1.7M parameters: sized for a CPU budget (batch 32: 1.3-1.9 s/step on one busy thread, ~800-1,100 steps in
# 1500 s); (64, 128, 128) is ~6.9M and ~3.7 s/step. Cross-attention at 16x16 and 8x8.
UNET_DEFAULT = dict(block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=64,
                    attention_head_dim=4, norm_num_groups=8,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                clip_sample=True)


class UNetT2I(nn.Module):
    """Caption-conditioned UNet2DConditionModel on 32x32 RGB; pixels in [-1, 1] inside."""
    MAX_PROMPTS = MAX_PROMPTS

    def __init__(self, words: list[str] | None = None, max_len: int = 16, text_layers: int = 1, **unet_kw):
        super().__init__()
        self.vocab = WordVocab(words if words is not None else grammar_words())
        unet = {**UNET_DEFAULT, **unet_kw}
        d = unet["cross_attention_dim"]
        self.config = {"words": self.vocab.itos, "max_len": max_len, "text_layers": text_layers,
                       **{k: list(v) if isinstance(v, tuple) else v for k, v in unet.items()}}
        self.max_len = max_len
        self.tok_emb = nn.Embedding(self.vocab.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.text = nn.ModuleList(nn.TransformerEncoderLayer(d, max(1, d // 32), 2 * d, 0.0, batch_first=True,
                                                             norm_first=True) for _ in range(text_layers))
        self.text_norm = nn.LayerNorm(d)
        self.unet = UNet2DConditionModel(sample_size=32, in_channels=3, out_channels=3, **unet)

    def ids(self, captions: list[list[int]]) -> Tensor:
        """Word-id lists (empty = null caption) -> (B, max_len) long: <bos> words <pad>..."""
        rows = [[BOS, *c] for c in captions]
        if max(map(len, rows)) > self.max_len:
            raise ValueError(f"a caption has more than {self.max_len - 1} words")
        return torch.tensor([r + [PAD] * (self.max_len - len(r)) for r in rows])

    def encode_text(self, ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L, cross_attention_dim) cross-attention states."""
        h = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        for layer in self.text:
            h = layer(h)
        return self.text_norm(h)

    def forward(self, x: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        """x (B, 3, 32, 32) noisy pixels, t (B,) timesteps, ids (B, L) -> (B, 3, 32, 32) model output (v)."""
        return self.unet(x, t, encoder_hidden_states=self.encode_text(ids)).sample

    @torch.no_grad()
    def text_to_image(self, prompts: list[str], steps: int = 25, cfg: float = 3.0, temperature: float = 1.0,
                      seed: int = 0, cfg_schedule: str = "constant") -> Tensor:
        """Prompts -> (B, 3, 32, 32) in [0, 1], as ImageModel.text_to_image.

        DDIM with eta = 0 from x_T = temperature * N(0, I) (temperature 0: one deterministic image
        per prompt); each step's model output is guided as ``null + scale (cond - null)``
        (Ho & Salimans 2022), ``scale`` constant or, with "linear", ramped 1 -> cfg over the steps."""
        ramp(cfg_schedule, cfg, 0.0)                                  # validates the schedule name
        caps = encode_prompts(self.vocab, prompts, steps, cfg, temperature)   # ValueError naming the problem
        dev, B = next(self.parameters()).device, len(caps)
        guided = cfg != 1.0 or cfg_schedule != "constant"
        ids = self.ids(caps + ([[]] * B if guided else [])).to(dev)
        ctx = self.encode_text(ids)                                   # (B or 2B, L, d)
        sched = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing")
        sched.set_timesteps(steps, device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        x = temperature * torch.randn(B, 3, 32, 32, generator=gen, device=dev)
        was_training = self.training
        self.eval()
        for i, t in enumerate(sched.timesteps):
            out = self.unet(x.repeat(1 + guided, 1, 1, 1), t, encoder_hidden_states=ctx).sample
            if guided:
                scale = ramp(cfg_schedule, cfg, i / max(1, steps - 1))
                out = out[B:] + scale * (out[:B] - out[B:])
            x = sched.step(out, t, x, eta=0.0).prev_sample
        self.train(was_training)
        return ((x.clamp(-1, 1) + 1) / 2).float().cpu()


def _batch(model: UNetT2I, g: np.random.Generator, batch_size: int, caption_drop: float) -> tuple[Tensor, Tensor]:
    """A fresh training batch -> (images (B, 3, 32, 32) in [-1, 1], caption ids (B, L)); prompts are
    caption(shown), dropped to the null caption with probability caption_drop (as ShapesT2ITask)."""
    scenes = make_scenes(batch_size, "train", int(g.integers(2**31)))
    x = torch.tensor(np.stack([im for _, _, im in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    caps = [[] if g.random() < caption_drop else model.vocab.encode(caption(shown)) for shown, _, _ in scenes]
    return x, model.ids(caps)


def train_unet(seconds: float, batch_size: int = 32, lr: float = 5e-4, seed: int = 0, caption_drop: float = 0.1,
               out: str | None = None, max_steps: int | None = None, ema: float = 0.995, warmup: int = 100,
               log_every: int = 50, device: str | None = None, **model_kw) -> UNetT2I:
    """Train for ``seconds`` of wall-clock (or ``max_steps``) on fresh make_scenes batches: DDPM
    (Ho et al. 2020) forward noising x_t = alpha_t x0 + sigma_t eps via DDPMScheduler.add_noise,
    MSE on v, AdamW with linear warm-up, EMA of the weights (the returned/saved model is the EMA;
    decay 0.995, a ~200-step horizon, because a CPU budget gives only ~1-2k steps).
    ``model_kw`` go to UNetT2I (e.g. a tiny UNet for tests). Saves to ``out`` when given."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = UNetT2I(**model_kw).to(device).train()
    sched = DDPMScheduler(**SCHEDULE)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    avg = EMAModel(model.parameters(), decay=ema) if ema > 0 else None
    step, loss_ema, t0 = 0, float("nan"), time.time()
    while time.time() - t0 < seconds and (max_steps is None or step < max_steps):
        x0, ids = _batch(model, np.random.default_rng([seed, step]), batch_size, caption_drop)
        x0, ids = x0.to(device), ids.to(device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), device=device)
        pred = model(sched.add_noise(x0, noise, t), t, ids)
        loss = nn.functional.mse_loss(pred, sched.get_velocity(x0, noise, t))   # v = alpha eps - sigma x0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warm.step()
        if avg is not None:
            avg.step(model.parameters())
        step += 1
        loss_ema = loss.item() if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * loss.item()
        if log_every and step % log_every == 0:
            print(f"step {step}  loss {loss.item():.4f}  (smoothed {loss_ema:.4f})  {time.time() - t0:.0f}s",
                  flush=True)
    if avg is not None:
        avg.copy_to(model.parameters())
    model.eval()
    model.train_info = {"steps": step, "final_loss": loss_ema, "seconds": time.time() - t0, "batch_size": batch_size,
                        "lr": lr, "seed": seed, "caption_drop": caption_drop, "ema": ema, "device": device}
    if out:
        save_unet(model, out)
    return model


def save_unet(model: UNetT2I, folder: str):
    """model.safetensors + config.json (each written to a temp file, then os.replace)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    cfg = {"model": model.config, "schedule": SCHEDULE, "train": getattr(model, "train_info", {})}
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=1))


def load_unet(folder: str, device: str = "cpu") -> UNetT2I:
    """A folder written by save_unet -> UNetT2I in eval mode (safetensors only)."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())["model"]
    kw = {k: tuple(v) if isinstance(v, list) and k != "words" else v for k, v in cfg.items()}
    model = UNetT2I(**kw)
    load_model(model, str(folder / "model.safetensors"), device="cpu")
    return model.to(device).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1500)
    ap.add_argument("--out", default="runs/t2i_unet")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption-drop", type=float, default=0.1)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    m = train_unet(a.seconds, a.batch_size, a.lr, a.seed, a.caption_drop, out=a.out, device=a.device)
    print(f"done: {m.train_info['steps']} steps in {m.train_info['seconds']:.0f}s, final loss "
          f"{m.train_info['final_loss']:.4f}; saved to {a.out}")


if __name__ == "__main__":
    main()

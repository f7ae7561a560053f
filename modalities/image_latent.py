"""Images as backbone inputs through a KL autoencoder: latent p x p patches, one token each.

The latent diffusion recipe (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", LDM) compresses images with a KL-regularised autoencoder and models the
latents; MAR (Li et al. 2024) does the same with LDM's KL-16 VAE (16x downsampling, 16 latent
channels) and its per-token diffusion head. ``LatentTokenizer`` wraps a diffusers
``AutoencoderKL`` behind the ``PatchTokenizer`` interface (modalities/image.py):

    images (B, C, H, W) in [0, 1] -> VAE posterior mean * scaling_factor -> latents (B, c, h, w)
    -> p x p latent patches in raster order, channel-major (c, p, p) -> tokens (B, N, c*p*p)

with h = H / down, N = (h / p) ** 2. ``scaling_factor`` is 1 / std of the latents of a data
batch, as Stable Diffusion set its 0.18215, so tokens have about unit variance.

The VAE is either loaded from a local diffusers folder (nothing is downloaded) or trained here
with ``train_autoencoder``: L1 reconstruction + a tiny KL term (LDM's weight 1e-6). LDM also
uses LPIPS and a patch GAN; both are left out (CPU budget, no pretrained LPIPS weights), so
reconstructions are blurrier than LDM's at the same compression.

    python -m modalities.image_latent --steps 2000 --out runs/vae-shapes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from modalities.image import PatchTokenizer, grid
from modalities.image_shapes import shapes_data

TOKENIZER_FILE = "tokenizer.json"   # patch / size / sample, next to diffusers' config.json


def small_autoencoder_config(size: int = 32, channels: int = 3, latent_channels: int = 4, down: int = 2,
                             width: int = 32, attention: bool = True) -> dict:
    """A tiny ``AutoencoderKL`` config: log2(down) downsamples, block widths width * (1, 2, 4, 4, ...)
    capped at 4 * width, one resnet per block, width / 4 norm groups (4 channels a group as
    in SD's VAE: 128 / 32). size 32, down 2 -> latents
    (4, 16, 16). ``attention``: the mid-block self-attention of LDM's VAE (slow on CPU)."""
    if down < 1 or down & (down - 1):
        raise ValueError(f"down must be a power of two, got {down}")
    if size % down:
        raise ValueError(f"image size {size} is not divisible by the downsampling factor {down}")
    n = int(math.log2(down)) + 1
    widths = tuple(width * min(2 ** i, 4) for i in range(n))
    return {"in_channels": channels, "out_channels": channels, "latent_channels": latent_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(widths), "layers_per_block": 1, "norm_num_groups": max(1, width // 4),
            "sample_size": size, "scaling_factor": 1.0, "mid_block_add_attention": attention}


class LatentTokenizer:
    """Images (B, C, H, W) in [0, 1] <-> tokens (B, N, c*p*p) through a frozen ``AutoencoderKL``,
    N = (size / (down * p)) ** 2, c = latent channels."""

    def __init__(self, vae, patch: int = 1, size: int | None = None, sample: bool = False):
        cfg = vae.config
        self.vae = vae.eval().requires_grad_(False)
        self.down = 2 ** (len(cfg.block_out_channels) - 1)
        self.patch, self.channels, self.sample = int(patch), int(cfg.in_channels), bool(sample)
        self.size = int(size or cfg.sample_size)
        self.latent_channels = int(cfg.latent_channels)
        if self.patch < 1:
            raise ValueError(f"need patch >= 1, got {patch}")
        self._pix = PatchTokenizer(patch=self.down * self.patch, channels=self.channels, size=self.size)
        self.latent_size = self.size // self.down
        self.n_side = self.latent_size // self.patch
        self.n_tokens = self.n_side ** 2
        self.token_dim = self.latent_channels * self.patch ** 2

    @property
    def scale(self) -> float:
        """The VAE's ``scaling_factor`` (latents * scale = tokens)."""
        return float(self.vae.config.scaling_factor)

    def __repr__(self) -> str:
        return (f"LatentTokenizer(patch={self.patch}, channels={self.channels}, size={self.size}, down={self.down}, "
                f"latent_channels={self.latent_channels}, scale={self.scale:.4g})")

    def grid(self) -> Tensor:
        """(N, 2) (row, col) of each token."""
        return grid(self.n_side)

    def _check_images(self, images) -> Tensor:
        return self._pix._check_images(images)       # same checks and messages as PatchTokenizer

    # ---- tokens <-> images ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, N, c*p*p) float32 tokens on the images' device:
        posterior mean (or a sample if ``sample``) * scaling_factor, p x p latent patches."""
        x = self._check_images(images)
        p, n, c = self.patch, self.n_side, self.latent_channels
        vae_x = (x * 2 - 1).to(self.vae.device, self.vae.dtype)            # VAE convention: [-1, 1]
        post = self.vae.encode(vae_x).latent_dist
        z = (post.sample(generator) if self.sample else post.mean) * self.scale           # B, c, h, w
        z = z.reshape(-1, c, n, p, n, p).permute(0, 2, 4, 1, 3, 5)                        # B, row, col, c, p, p
        return z.reshape(-1, n * n, c * p * p).float().to(x.device)

    def latents(self, tokens: Tensor) -> Tensor:
        """(B, N, c*p*p) tokens -> (B, c, h, w) scaled latents (inverse of the patchify)."""
        if (not isinstance(tokens, Tensor) or tokens.ndim != 3
                or tuple(tokens.shape[1:]) != (self.n_tokens, self.token_dim)):
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be (B, {self.n_tokens}, {self.token_dim}), got {got}")
        p, n, c = self.patch, self.n_side, self.latent_channels
        return tokens.reshape(-1, n, n, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, n * p, n * p)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """(B, N, c*p*p) tokens -> (B, C, H, W) float32 images clamped to [0, 1], on the tokens' device."""
        z = self.latents(tokens).to(self.vae.device, self.vae.dtype) / self.scale
        x = self.vae.decode(z).sample
        return ((x.float() + 1) / 2).clamp(0, 1).to(tokens.device)

    # ---- conversions (pixels only: delegated to a PatchTokenizer of the same size) --------------
    def from_uint8(self, images) -> Tensor:
        return self._pix.from_uint8(images)

    def to_pil(self, images) -> list:
        return self._pix.to_pil(images)

    def from_pil(self, images, resize: bool = False) -> Tensor:
        return self._pix.from_pil(images, resize)

    # ---- folders --------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"patch": self.patch, "size": self.size, "sample": self.sample}

    def save_pretrained(self, folder) -> Path:
        """Write the diffusers folder (config.json + diffusion_pytorch_model.safetensors) and
        tokenizer.json atomically: into a sibling temp folder, then renamed over ``folder``."""
        folder = Path(folder)
        tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
        for d in (tmp, old):
            shutil.rmtree(d, ignore_errors=True)
        self.vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / TOKENIZER_FILE).write_text(json.dumps(self.config(), indent=2))
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        return folder

    @classmethod
    def from_pretrained(cls, folder, device=None, **overrides) -> "LatentTokenizer":
        """Load a local diffusers ``AutoencoderKL`` folder (never the hub); tokenizer.json, if
        present, gives patch / size / sample, and keyword ``overrides`` win over it."""
        from diffusers import AutoencoderKL  # heavy and optional: only latent models need it
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder / 'config.json'} not found: not a diffusers AutoencoderKL folder "
                                    "(expected config.json + diffusion_pytorch_model.safetensors; nothing is downloaded)")
        vae = AutoencoderKL.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        kw = json.loads((folder / TOKENIZER_FILE).read_text()) if (folder / TOKENIZER_FILE).is_file() else {}
        return cls(vae.to(device) if device else vae, **{**kw, **overrides})


# ---- training (LDM's autoencoder objective without LPIPS / GAN) -----------------------------------
def train_autoencoder(images_fn, steps: int, out=None, lr: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0,
                      device: str = "cpu", batch_size: int = 32, config: dict | None = None, patch: int = 1,
                      log_every: int = 0) -> LatentTokenizer:
    """Train a small ``AutoencoderKL`` (``config``: default ``small_autoencoder_config`` at the
    data's size and channels) on ``images_fn(n, seed) -> (n, C, H, W)`` in [0, 1]; batch ``step``
    uses seed ``seed * 1_000_003 + step``. Loss (Rombach et al. 2022): L1 of the reconstruction of a
    posterior sample + ``kl_weight`` * KL summed over latent elements / pixel values per image (the
    ratio of LDM's summed losses). Then scaling_factor = 1 / std of 8 held-aside batches (seeds
    from seed * 1_000_003 + 1_000_000) of posterior-mean latents. Saved to ``out`` (atomic) if
    given. The result's ``.train_log`` holds (step, loss, l1, kl) per step."""
    from diffusers import AutoencoderKL  # heavy and optional: only latent models need it
    torch.manual_seed(seed)
    probe = images_fn(2, seed)
    if config is None:
        config = small_autoencoder_config(size=probe.shape[-1], channels=probe.shape[1])
    vae = AutoencoderKL(**config).to(device).train()
    tok = LatentTokenizer(vae, patch=patch, size=probe.shape[-1])             # checks the data shapes
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=0.0)   # LDM's betas
    log = []
    for step in range(steps):
        x = tok._check_images(images_fn(batch_size, seed * 1_000_003 + step)).to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / x[0].numel()                                  # per image, per pixel value
        loss = l1 + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append((step, loss.item(), l1.item(), kl.item()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {log[-1][1]:.4f}  l1 {log[-1][2]:.4f}  kl {log[-1][3]:.3f}", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        xs = [tok._check_images(images_fn(batch_size, seed * 1_000_003 + 1_000_000 + i)) for i in range(8)]
        z = torch.cat([vae.encode(x.to(device) * 2 - 1).latent_dist.mean for x in xs])
    vae.register_to_config(scaling_factor=float(1 / z.float().std().clamp_min(1e-8)))
    tok.train_log = log
    if out:
        tok.save_pretrained(out)
    return tok


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (inf when identical)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train a small AutoencoderKL on the shapes data (LDM-style, L1 + KL).")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default=None, help="folder to save the diffusers AutoencoderKL + tokenizer.json")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--latent-channels", type=int, default=4)
    ap.add_argument("--down", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--no-attention", action="store_true", help="drop the mid-block attention (faster on CPU)")
    ap.add_argument("--patch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    cfg = small_autoencoder_config(32, 3, a.latent_channels, a.down, a.width, not a.no_attention)
    tok = train_autoencoder(lambda n, s: shapes_data(n, "train", s)[0], a.steps, a.out, a.lr, a.kl_weight, a.seed,
                            a.device, a.batch_size, cfg, a.patch, log_every=max(1, a.steps // 20))
    held = shapes_data(256, "test", 12345)[0]                        # make_scenes test split
    pix = PatchTokenizer()
    print(f"{tok}: {tok.n_tokens} tokens x {tok.token_dim}  (pixel {pix.n_tokens} x {pix.token_dim})")
    print(f"held-out PSNR: latent round trip {psnr(tok.decode(tok.encode(held)), held):.2f} dB, "
          f"pixel round trip {psnr(pix.decode(pix.encode(held)), held):.2f} dB")
    if a.out:
        print(f"saved {a.out}")


if __name__ == "__main__":
    main()

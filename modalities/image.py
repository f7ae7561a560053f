"""Images as backbone inputs: non-overlapping p x p pixel patches, one continuous token each.

MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization") models
continuous tokens with a per-token diffusion head and shows that raw pixel patches work as
tokens; at 32x32 with p = 4 an RGB image is 64 tokens of 48 numbers, in raster order (row by
row, left to right), each token laid out channel-major (C, p, p) as in MAR's ``patchify``.

Values are shifted and scaled by fixed constants, never by data statistics:
``x = (pixel - 0.5) / SCALE`` with pixels in [0, 1]. SCALE = 0.25 maps [0, 1] to [-2, 2] and
gives the synthetic shapes data (modalities/image_shapes.py, mostly white background) a standard
deviation of about 1.0 over all token values (about 0.9 per token dimension; mean about +1.6).
0.5 would give the usual [-1, 1] but a standard deviation of only about 0.5.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

SCALE = 0.25   # pixels [0, 1] -> tokens [-2, 2]; std ~1.0 on the shapes data set (see above)
SHIFT = 0.5


def grid(n_side: int) -> Tensor:
    """(N, 2) long tensor of each token's (row, col) in raster order, N = n_side ** 2."""
    if not isinstance(n_side, int) or n_side < 1:
        raise ValueError(f"n_side must be a positive int, got {n_side!r}")
    r = torch.arange(n_side)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)


class PatchTokenizer:
    """Images (B, C, H, W) in [0, 1] <-> tokens (B, N, C*p*p), N = (size / p) ** 2."""

    def __init__(self, patch: int = 4, channels: int = 3, size: int = 32, scale: float = SCALE):
        if patch < 1 or size < 1 or channels not in (1, 3):
            raise ValueError(f"need patch >= 1, size >= 1 and 1 or 3 channels, got {patch}, {size}, {channels}")
        if size % patch:
            raise ValueError(f"image size {size} is not divisible by the patch size {patch}")
        self.patch, self.channels, self.size, self.scale = patch, channels, size, float(scale)
        self.n_side = size // patch
        self.n_tokens = self.n_side ** 2
        self.token_dim = channels * patch * patch

    def __repr__(self) -> str:
        return f"PatchTokenizer(patch={self.patch}, channels={self.channels}, size={self.size}, scale={self.scale})"

    def grid(self) -> Tensor:
        """(N, 2) (row, col) of each token."""
        return grid(self.n_side)

    def _check_images(self, images) -> Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a tensor (B, C, H, W), got {type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got {images.dtype} (use from_uint8)")
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images must be (B, {self.channels}, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.patch or W % self.patch:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {self.patch}")
        if (H, W) != (self.size, self.size):
            raise ValueError(f"expected {self.size}x{self.size} images, got {H}x{W}")
        if torch.isnan(images).any():
            raise ValueError("images contain NaN")
        if images.numel() and (images.min() < -1e-6 or images.max() > 1 + 1e-6):
            raise ValueError(f"images must be in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
        return images

    def encode(self, images) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, N, C*p*p) tokens, raster order, (x - 0.5) / scale."""
        x = self._check_images(images)
        B, C, p, n = x.shape[0], self.channels, self.patch, self.n_side
        x = x.reshape(B, C, n, p, n, p).permute(0, 2, 4, 1, 3, 5)     # B, row, col, C, p, p
        return (x.reshape(B, n * n, C * p * p) - SHIFT) / self.scale

    def decode(self, tokens: Tensor) -> Tensor:
        """(B, N, C*p*p) tokens -> (B, C, H, W) images clamped to [0, 1]; exact inverse of encode."""
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tuple(tokens.shape[1:]) != (self.n_tokens, self.token_dim):
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be (B, {self.n_tokens}, {self.token_dim}), got {got}")
        B, C, p, n = tokens.shape[0], self.channels, self.patch, self.n_side
        x = (tokens * self.scale + SHIFT).reshape(B, n, n, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(B, C, n * p, n * p).clamp(0, 1)

    # ---- conversions ----------------------------------------------------------------------------
    def from_uint8(self, images) -> Tensor:
        """uint8 (B, H, W, C) or (H, W, C) arrays (as modalities/image_shapes.py draws them) ->
        float (B, C, H, W) in [0, 1]."""
        a = np.asarray(images)
        if a.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {a.dtype}")
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != self.channels:
            raise ValueError(f"expected (B, H, W, {self.channels}) pixels, got {a.shape}")
        return self._check_images(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)

    def to_pil(self, images) -> list:
        """(B, C, H, W) or (C, H, W) float in [0, 1] -> list of PIL images (rounded to uint8)."""
        if isinstance(images, Tensor) and images.ndim == 3:
            images = images[None]
        x = self._check_images(images.detach().cpu() if isinstance(images, Tensor) else images)
        a = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(im[..., 0] if self.channels == 1 else im, "L" if self.channels == 1 else "RGB")
                for im in a]

    def from_pil(self, images, resize: bool = False) -> Tensor:
        """List of PIL images -> (B, C, H, W) float in [0, 1]. Converted to RGB (or L); a wrong
        size is an error unless ``resize=True`` (then box-filter resizing to size x size)."""
        if isinstance(images, Image.Image):
            images = [images]
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError(f"expected a non-empty list of PIL images, got {type(images).__name__}")
        out = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise ValueError(f"item {i} is not a PIL image (got {type(im).__name__})")
            if im.size != (self.size, self.size):
                if not resize:
                    raise ValueError(f"item {i}: expected {self.size}x{self.size}, got {im.size[0]}x{im.size[1]} "
                                     "(pass resize=True to resize)")
                im = im.resize((self.size, self.size), Image.Resampling.BOX)
            a = np.asarray(im.convert("L" if self.channels == 1 else "RGB"), dtype=np.uint8)
            out.append(a[..., None] if a.ndim == 2 else a)
        return self.from_uint8(np.stack(out))

"""Pixel-patch tokens (modalities/image.py): exact layout, round trip, scale, clear errors."""
import numpy as np
import pytest
import torch

from modalities.image import PatchTokenizer, grid
from modalities.image_shapes import make_dataset


@pytest.fixture(scope="module")
def tok():
    return PatchTokenizer()


def test_tokens_are_raster_order_channel_major_patches(tok):
    x = torch.rand(2, 3, 32, 32)
    t = tok.encode(x)
    assert t.shape == (2, 64, 48) and tok.n_tokens == 64 and tok.token_dim == 48
    for r, c in [(0, 0), (0, 7), (3, 5), (7, 7)]:
        patch = x[1, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1)      # (C, p, p) flattened
        torch.testing.assert_close(t[1, 8 * r + c], (patch - 0.5) / tok.scale)
    assert grid(8)[8 * 3 + 5].tolist() == [3, 5] and tok.grid().shape == (64, 2)


def test_round_trip_is_exact(tok):
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(tok.decode(tok.encode(x)), x, rtol=0, atol=1e-7)   # float32 ulp
    levels = torch.arange(256.0).div(255).repeat(12).reshape(1, 3, 32, 32)      # every uint8 level
    assert torch.equal((tok.decode(tok.encode(levels)) * 255).round(), levels * 255)
    assert tok.decode(tok.encode(x) * 10).min() == 0 and tok.decode(tok.encode(x) * 10).max() == 1  # clamped
    pil = tok.to_pil(levels)
    assert pil[0].size == (32, 32) and pil[0].mode == "RGB"
    assert torch.equal(tok.from_pil(pil), levels)
    g = PatchTokenizer(patch=2, channels=1, size=8)
    y = torch.rand(3, 1, 8, 8)
    assert g.encode(y).shape == (3, 16, 4)
    torch.testing.assert_close(g.decode(g.encode(y)), y, rtol=0, atol=1e-7)


def test_shapes_data_is_roughly_unit_variance(tok):
    imgs = np.stack([im for *_, im in make_dataset(500, "train", seed=0)])
    t = tok.encode(tok.from_uint8(imgs))
    assert 0.85 < t.std().item() < 1.2                     # documented: ~1.03
    assert 0.7 < t.std(0).mean().item() < 1.1              # per token dimension: ~0.89
    assert t.abs().max() <= 2.0


@pytest.mark.parametrize("bad, msg", [
    (torch.rand(2, 3, 30, 30), "not divisible"), (torch.rand(2, 3, 16, 16), "expected 32x32"),
    (torch.rand(3, 32, 32), r"\(B, 3, H, W\)"), (torch.rand(2, 1, 32, 32), r"\(B, 3, H, W\)"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"), (torch.rand(1, 3, 32, 32) * 3, r"\[0, 1\]"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"), ("an image", "tensor")])
def test_bad_images_give_clear_errors(tok, bad, msg):
    with pytest.raises(ValueError, match=msg):
        tok.encode(bad)


def test_bad_tokens_and_pil_inputs(tok):
    from PIL import Image
    with pytest.raises(ValueError, match=r"\(B, 64, 48\)"):
        tok.decode(torch.zeros(1, 63, 48))
    with pytest.raises(ValueError, match="not divisible"):
        PatchTokenizer(patch=5)
    with pytest.raises(ValueError, match="not a PIL image"):
        tok.from_pil([np.zeros((32, 32, 3))])
    with pytest.raises(ValueError, match="expected 32x32, got 64x48"):
        tok.from_pil([Image.new("RGB", (64, 48))])
    assert tok.from_pil([Image.new("L", (64, 48), 255)], resize=True).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="NaN"):
        tok.to_pil(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="list of PIL"):
        tok.from_pil([])

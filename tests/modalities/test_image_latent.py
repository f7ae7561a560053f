"""LatentTokenizer: a tiny diffusers AutoencoderKL behind the PatchTokenizer interface."""
import pytest
import torch

from modalities.image_latent import LatentTokenizer, small_autoencoder_config, train_autoencoder
from modalities.image_shapes import shapes_data

TINY = small_autoencoder_config(size=32, channels=3, latent_channels=4, down=2, width=16, attention=False)


def shapes(n, seed):
    return shapes_data(n, "train", seed)[0]


def held_out_l1(tok) -> float:
    x = shapes_data(16, "test", 7)[0]
    return float((tok.decode(tok.encode(x)) - x).abs().mean())


@pytest.fixture(scope="module")
def trained():
    return train_autoencoder(shapes, steps=20, batch_size=8, config=TINY, seed=0)


def test_config_shapes():
    assert TINY["block_out_channels"] == [16, 32] and TINY["norm_num_groups"] == 4
    cfg = small_autoencoder_config(size=32, down=4)
    assert cfg["block_out_channels"] == [32, 64, 128] and cfg["norm_num_groups"] == 8
    with pytest.raises(ValueError, match="power of two"):
        small_autoencoder_config(down=3)


def test_training_lowers_reconstruction_loss(trained):
    untrained = train_autoencoder(shapes, steps=0, batch_size=8, config=TINY, seed=0)   # same init
    log = trained.train_log
    assert len(log) == 20
    assert sum(l for _, _, l, _ in log[-5:]) < sum(l for _, _, l, _ in log[:5])
    assert held_out_l1(trained) < held_out_l1(untrained)


def test_scaling_factor_gives_unit_std(trained):
    assert trained.scale > 0 and trained.scale == trained.vae.config.scaling_factor
    tokens = trained.encode(shapes(32, 999))
    assert 0.5 < float(tokens.std()) < 2.0


def test_encode_decode_shapes(trained):
    assert (trained.size, trained.channels, trained.down) == (32, 3, 2)
    assert (trained.n_tokens, trained.token_dim) == (16 * 16, 4)
    x = shapes(3, 1)
    tokens = trained.encode(x)
    assert tokens.shape == (3, 256, 4) and tokens.dtype == torch.float32
    assert trained.grid().shape == (256, 2)
    y = trained.decode(tokens)
    assert y.shape == (3, 3, 32, 32) and float(y.min()) >= 0 and float(y.max()) <= 1
    with pytest.raises(ValueError, match=r"tokens must be \(B, 256, 4\)"):
        trained.decode(tokens[:, :10])


def test_patchify_round_trip(trained):
    tok2 = LatentTokenizer(trained.vae, patch=2)
    assert (tok2.n_tokens, tok2.token_dim) == (64, 16)
    x = shapes(2, 3)
    t1, t2 = trained.encode(x), tok2.encode(x)
    # the same latents, regrouped: token (r, c) of p=2 holds latent pixels 2r..2r+1, 2c..2c+1
    assert torch.equal(trained.latents(t1), tok2.latents(t2))
    assert torch.allclose(tok2.decode(t2), trained.decode(t1), atol=1e-6)


def test_save_load_round_trip(trained, tmp_path):
    folder = trained.save_pretrained(tmp_path / "vae")
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "vae.tmp").exists()
    trained.save_pretrained(folder)                                   # overwriting works
    loaded = LatentTokenizer.from_pretrained(folder)
    assert loaded.scale == trained.scale and loaded.n_tokens == trained.n_tokens
    x = shapes(4, 5)
    assert torch.equal(loaded.encode(x), trained.encode(x))


def test_sample_option_is_stochastic(trained):
    tok = LatentTokenizer(trained.vae, sample=True)
    x = shapes(2, 6)
    a = tok.encode(x, generator=torch.Generator().manual_seed(0))
    b = tok.encode(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == b.shape and not torch.equal(a, b)


def test_missing_folder_names_it(tmp_path):
    missing = tmp_path / "no-such-vae"
    with pytest.raises(FileNotFoundError, match="no-such-vae"):
        LatentTokenizer.from_pretrained(missing)


@pytest.mark.parametrize("bad, msg", [
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.rand(1, 3, 16, 16), "expected 32x32"),
    (torch.rand(1, 3, 31, 31), "not divisible"),
    (torch.rand(1, 1, 32, 32), r"\(B, 3, H, W\)"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float in"),
    (torch.rand(1, 3, 32, 32) * 2, r"in \[0, 1\]"),
])
def test_bad_images(trained, bad, msg):
    with pytest.raises(ValueError, match=msg):
        trained.encode(bad)

"""The diffusers UNet text-to-image baseline (benchmarks/t2i_unet.py): training runs, the
safetensors round trip is exact, sampling returns images in [0, 1], unknown words are named."""
import pytest
import torch

from benchmarks.t2i_unet import UNetT2I, load_unet, train_unet

TINY = dict(block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32, attention_head_dim=2,
            norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i_unet")
    model = train_unet(seconds=30, batch_size=4, max_steps=2, out=str(out), log_every=0, device="cpu", **TINY)
    return model, out


def test_trains_and_saves(trained):
    model, out = trained
    assert model.train_info["steps"] == 2 and model.train_info["final_loss"] > 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.tmp"))


def test_round_trip_and_range(trained):
    model, out = trained
    loaded = load_unet(str(out))
    prompts = ["a red circle", "a blue square above a yellow triangle"]
    a = model.text_to_image(prompts, steps=3, cfg=3.0, seed=1)
    b = loaded.text_to_image(prompts, steps=3, cfg=3.0, seed=1)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    c = loaded.text_to_image(prompts, steps=3, cfg=3.0, seed=2, cfg_schedule="linear")
    assert c.shape == (2, 3, 32, 32) and not torch.equal(a, c)
    assert loaded.text_to_image("a circle", steps=2, cfg=1.0).shape == (1, 3, 32, 32)


def test_unknown_word_named():
    model = UNetT2I(**TINY)
    with pytest.raises(ValueError, match="'dragon'"):
        model.text_to_image(["a red dragon"], steps=2)
    with pytest.raises(ValueError, match="cfg schedule"):
        model.text_to_image(["a red circle"], steps=2, cfg_schedule="cosine")

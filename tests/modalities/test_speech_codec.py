"""The codec wrapper around the encodec package's classes: shapes, training step, folders, and
loading official EnCodec weights from a local safetensors file (a state dict made here)."""
import pytest
import torch
from safetensors.torch import save_file

from modalities.speech_codec import Codec

TINY = dict(n_filters=4, dimension=8, ratios=[4, 4], n_q=3, bins=16, lstm=0, mel_scales=[128, 256])


@pytest.fixture
def codec(seed):
    return Codec(TINY)


def test_encode_decode_shapes(codec):
    codec.eval()
    wav = 0.1 * torch.randn(2, 1, 1000)
    codes = codec.encode(wav)
    assert codes.shape == (2, 3, 63) and codes.dtype == torch.long    # ceil(1000 / 16)
    assert 0 <= codes.min() and codes.max() < 16
    assert codec.decode(codes).shape == (2, 1, 63 * 16)
    assert codec.decode(codes[:, :1]).shape == (2, 1, 63 * 16)        # fewer levels decode too
    assert codec.encode(wav[0, 0]).shape == (1, 3, 63)
    with pytest.raises(ValueError, match="codes must lie"):
        codec.decode(codes + 16)
    with pytest.raises(ValueError, match="wav must be"):
        codec.encode(torch.randn(2, 2, 100))


def test_training_step_lowers_the_loss(codec):
    wav = 0.2 * torch.sin(torch.arange(2048) / 7.0)[None, None].repeat(4, 1, 1)
    opt = torch.optim.Adam(codec.parameters(), 1e-2)
    first = None
    for _ in range(40):
        loss, parts = codec(wav)
        assert set(parts) == {"mel", "wave", "commit"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.6 * first   # measured 0.35


def test_folder_round_trip(codec, tmp_path):
    codec(0.1 * torch.randn(2, 1, 512))       # k-means initialises the codebooks
    codec.eval().save_pretrained(tmp_path / "c")
    back = Codec.from_pretrained(tmp_path / "c")
    wav = 0.1 * torch.randn(1, 1, 800)
    assert torch.equal(back.encode(wav), codec.encode(wav))
    with pytest.raises(FileNotFoundError, match="codec folder"):
        Codec.from_pretrained(tmp_path / "nothing")


def test_loads_official_encodec_state_dict(tmp_path, seed):
    """The official 24 kHz architecture, built by the encodec package itself, with random weights
    and codebooks standing in for the real checkpoint (which cannot be downloaded here)."""
    from encodec import EncodecModel
    ref = EncodecModel.encodec_model_24khz(pretrained=False).eval()
    state = {k: (torch.randn_like(v) if k.endswith("_codebook.embed") else v).contiguous()
             for k, v in ref.state_dict().items() if not k.endswith(".inited")}
    ref.load_state_dict(state, strict=False)
    save_file(state, str(tmp_path / "encodec_24khz.safetensors"))
    ours = Codec.from_encodec_state(tmp_path / "encodec_24khz.safetensors")
    wav = 0.1 * torch.randn(1, 1, 2560)
    ref.set_target_bandwidth(24.0)
    want = ref.encode(wav)[0][0]
    got = ours.encode(wav)
    assert got.shape == (1, 32, 8) and torch.equal(got, want)
    assert torch.allclose(ours.decode(got), ref.decode([(want, None)]), atol=1e-5)
    with pytest.raises(ValueError, match="no pickles"):
        Codec.from_encodec_state(tmp_path / "encodec_24khz.th")
    save_file({"encoder.bogus": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        Codec.from_encodec_state(tmp_path / "bad.safetensors")

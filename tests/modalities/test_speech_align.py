"""The CTC phoneme recogniser and forced aligner (modalities/speech_align.py): shapes, the folder
round trip, bad input, and alignment of an espeak-ng clip. Audio comes from ``synth``."""
import json

import numpy as np
import pytest
import torch

from modalities.speech_align import CTCRecognizer
from modalities.speech_corpus import PAUSE, SAMPLE_RATE, synth

PHONEMES = ["_", "a", "b", "d", "eɪ", "h", "l", "n", "oʊ", "s", "t", "æ", "ð", "ə", "ɚ", "ɛ", "ɛɹ", "ɪ", "ɹ"]


def tiny_ctc(phonemes=PHONEMES):
    torch.manual_seed(0)
    return CTCRecognizer(phonemes, channels=32, blocks=2, hidden=32).eval()


# ---- CTC recogniser -------------------------------------------------------------------------------
def test_ctc_forward_shapes_and_transcribe():
    model = tiny_ctc()
    wav = torch.randn(2, SAMPLE_RATE) * 0.1
    lp, n = model(wav, torch.tensor([SAMPLE_RATE, SAMPLE_RATE // 2]))
    assert lp.shape == (2, 51, len(PHONEMES) + 1) and n.tolist() == [51, 26]     # 20 ms frames (+1: centred)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 51), atol=1e-5)
    hyps = model.transcribe([wav[0].numpy(), wav[1, :800]])   # a 50 ms clip is padded, not refused
    assert len(hyps) == 2 and all(set(h) <= set(PHONEMES) for h in hyps)


def test_ctc_save_load_round_trip(tmp_path):
    model = tiny_ctc()
    model.features.mean.fill_(-3.0)                      # a fitted buffer must travel too
    model.save_pretrained(tmp_path / "ctc", note="x")
    cfg = json.loads((tmp_path / "ctc" / "config.json").read_text())
    assert cfg["kind"] == "speech-ctc" and cfg["config"]["phonemes"] == PHONEMES and cfg["meta"] == {"note": "x"}
    loaded = CTCRecognizer.from_pretrained(tmp_path / "ctc")
    wav = torch.randn(1, 8000) * 0.1
    assert torch.equal(model(wav, torch.tensor([8000]))[0], loaded(wav, torch.tensor([8000]))[0])
    with pytest.raises(FileNotFoundError):
        CTCRecognizer.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("bad,message", [([np.zeros(0, np.float32)], "empty"),
                                         ([np.array([0.1, np.nan] * 800, np.float32)], "NaN"),
                                         ([np.zeros((2, 1600), np.float32)], "mono"),
                                         ([], "no clips")])
def test_bad_audio_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_ctc().transcribe(bad)


def test_forced_alignment_on_an_untrained_model():
    model = tiny_ctc()
    wav, events = synth("Hello there, the ladder.", "en-us")
    phonemes = [p for p, _ in events] + [PAUSE]           # runs of two pauses, mid-sentence and at the end
    assert set(phonemes) <= set(PHONEMES)
    starts = model.align(wav, phonemes)
    assert len(starts) == len(phonemes) and starts[0] == 0
    assert all(a <= b for a, b in zip(starts, starts[1:])) and starts[-1] < len(wav)
    assert all(s % (model.frame_hop // 2) == 0 for s, p in zip(starts, phonemes) if p != PAUSE)   # half frames
    with pytest.raises(ValueError, match="too short"):
        model.align(wav[:3200], phonemes)
    with pytest.raises(ValueError, match="not in the recogniser"):
        model.align(wav, ["ʒ"])

"""Quality of the shipped speech checkpoints on fixed inputs. The reference clips are made here by
espeak-ng (a Debian package the Makefile installs), on sentences outside the training corpus."""
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.speech_corpus import HELDOUT_VOICE, synth

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SENTENCES = ["The small dog ran across the green field.", "Please bring me a glass of cold water.",
             "We will meet again next summer by the lake."]


@pytest.fixture(scope="module")
def ctc():
    from modalities.speech_checks import CTCRecognizer
    return CTCRecognizer.from_pretrained(ASSETS / "speech-ctc")


@pytest.fixture(scope="module")
def refs():
    """[(wav, phonemes)] for each sentence in the held-out voice and in a training voice."""
    out = []
    for voice in (HELDOUT_VOICE, "en+m2"):
        for s in SENTENCES:
            wav, events = synth(s, voice, 170)
            out.append((torch.from_numpy(wav), [p for p, _ in events]))
    return out


def test_ctc_reads_espeak_speech(ctc, refs):
    from modalities.speech_checks import phoneme_error_rate
    per = phoneme_error_rate([p for _, p in refs], ctc.transcribe([w for w, _ in refs]))
    assert per < 0.05, per


def test_codec_resynthesis_stays_intelligible(ctc, refs):
    from modalities.speech_checks import phoneme_error_rate
    from modalities.speech_codec import Codec
    codec = Codec.from_pretrained(ASSETS / "speech-codec")
    resyn = [codec.decode(codec.encode(w))[0, 0, :len(w)] for w, _ in refs]
    per = phoneme_error_rate([p for _, p in refs], ctc.transcribe(resyn))
    mel = float(np.mean([float(codec.mel_loss(x[None, None], w[None, None])) for x, (w, _) in zip(resyn, refs)]))
    assert per < 0.3, per
    assert mel < 1.5, mel


def test_speaker_encoder_tells_voices_apart(refs):
    from modalities.speech_checks import SpeakerEncoder
    enc = SpeakerEncoder.from_pretrained(ASSETS / "speech-speaker")
    e = enc.embed([w for w, _ in refs])                     # 3 held-out-voice clips, then 3 of en+m2
    same = [float(e[i] @ e[j]) for i, j in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]]
    diff = [float(e[i] @ e[j]) for i in range(3) for j in range(3, 6)]
    assert min(same) > 0.6 and max(diff) < 0.4, (same, diff)

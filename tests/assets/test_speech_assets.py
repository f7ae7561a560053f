"""Quality of the shipped speech checkpoints on fixed inputs. The reference clips are made here by
espeak-ng (a Debian package the Makefile installs), on sentences outside the training corpus."""
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.tts.model import SpeechModel
from benchmarks.metrics.speech_asr import phoneme_error_rate
from benchmarks.metrics.speech_checks import SpeakerEncoder
from modalities.speech_align import CTCRecognizer
from modalities.speech_codec import Codec
from modalities.speech_corpus import HELDOUT_VOICE, phonemes_of, synth

ASSETS = Path(__file__).resolve().parents[2] / "assets"
RALLE_PER_MAX = 0.6   # measured 0.44 (CTC phoneme error rate; espeak-ng's own audio: 0.01)
CLONE_MARGIN = 0.2    # measured cosine 0.41 prompted vs 0.08 unprompted
SENTENCES = ["The small dog ran across the green field.", "Please bring me a glass of cold water.",
             "We will meet again next summer by the lake."]


@pytest.fixture(scope="module")
def ctc():
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
    per = phoneme_error_rate([p for _, p in refs], ctc.transcribe([w for w, _ in refs]))
    assert per < 0.05, per


def test_codec_resynthesis_stays_intelligible(ctc, refs):
    codec = Codec.from_pretrained(ASSETS / "speech-codec")
    resyn = [codec.decode(codec.encode(w))[0, 0, :len(w)] for w, _ in refs]
    per = phoneme_error_rate([p for _, p in refs], ctc.transcribe(resyn))
    mel = float(np.mean([float(codec.mel_loss(x[None, None], w[None, None])) for x, (w, _) in zip(resyn, refs)]))
    assert per < 0.3, per
    assert mel < 1.5, mel


def test_speaker_encoder_tells_voices_apart(refs):
    enc = SpeakerEncoder.from_pretrained(ASSETS / "speech-speaker")
    e = enc.embed([w for w, _ in refs])                     # 3 held-out-voice clips, then 3 of en+m2
    same = [float(e[i] @ e[j]) for i, j in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]]
    diff = [float(e[i] @ e[j]) for i in range(3) for j in range(3, 6)]
    assert min(same) > 0.6 and max(diff) < 0.4, (same, diff)


@pytest.fixture(scope="module")
def tts():
    return SpeechModel.from_pretrained(ASSETS / "speech-tts")


def test_ralle_speaks_new_sentences(tts, ctc):
    """RALL-E on sentences it never saw, fixed seeds: the CTC recogniser reads most phonemes, and
    each clip stops exactly where the predicted durations say."""
    outs = [tts.synthesize(s, seed=i) for i, s in enumerate(SENTENCES)]
    for o in outs:
        assert o.n_frames == sum(o.durations) and len(o.wav) == o.n_frames * tts.hop
    per = phoneme_error_rate([phonemes_of(s) for s in SENTENCES], ctc.transcribe([o.wav for o in outs]))
    assert per < RALLE_PER_MAX, per


def test_voice_prompt_moves_towards_the_held_out_voice(tts, refs):
    """A clip of the held-out voice (never trained on) as prompt: the speech is closer to that voice
    than the unprompted model's, by the speaker encoder's cosine."""
    enc = SpeakerEncoder.from_pretrained(ASSETS / "speech-speaker")
    text = "Good morning, how are you today?"
    wav, events = synth(text, HELDOUT_VOICE, 170)
    real = enc.embed([w for w, _ in refs[:3]])                      # held-out voice, other sentences
    kw = dict(prompt_wav=wav, prompt_text=text, prompt_starts=[s for _, s in events])
    prompted = enc.embed([tts.synthesize(s, seed=i, **kw).wav for i, s in enumerate(SENTENCES)])
    plain = enc.embed([tts.synthesize(s, seed=i).wav for i, s in enumerate(SENTENCES)])
    sim_p, sim_0 = float((prompted @ real.T).mean()), float((plain @ real.T).mean())
    assert sim_p > sim_0 + CLONE_MARGIN, (sim_p, sim_0)

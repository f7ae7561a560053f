"""Speech evaluation (benchmarks/metrics/speech_checks.py, benchmarks/metrics/speech_asr.py): WER / PER
arithmetic, PocketSphinx on espeak-ng clips, the speaker encoder (shapes, folders, bad input) and
seconds-long training smoke runs of both evaluation models. Audio comes from ``synth``, never from runs/."""
import numpy as np
import pytest
import torch

from benchmarks.metrics.speech_asr import edit_ops, normalize_words, phoneme_error_rate, pocketsphinx_wer, wer
from benchmarks.metrics.speech_checks import (SpeakerEncoder, calibrate, eer, speaker_similarity, train_ctc,
                                              train_speaker)
from modalities.speech_align import CTCRecognizer
from modalities.speech_corpus import PAUSE, synth

PHONEMES = ["_", "a", "b", "d", "eɪ", "h", "l", "n", "oʊ", "s", "t", "æ", "ð", "ə", "ɚ", "ɛ", "ɛɹ", "ɪ", "ɹ"]


class FakeCorpus:
    """The two methods of modalities.speech_corpus.Corpus the trainers use, over synthesised clips."""

    def __init__(self, plan):
        self.items, self._audio = [], {}
        for k, (split, text, speaker) in enumerate(plan):
            wav, events = synth(text, speaker, rate=170)
            self.items.append({"id": f"{split}-{k}", "split": split, "text": text, "speaker": speaker,
                               "phonemes": [p for p, _ in events], "starts": [s for _, s in events], "n": len(wav)})
            self._audio[f"{split}-{k}"] = torch.from_numpy(wav)

    def rows(self, split):
        return [r for r in self.items if r["split"] == split]

    def audio(self, row):
        return self._audio[row["id"]]


@pytest.fixture(scope="module")
def corpus():
    texts = ["The cat sat on the mat.", "Open the door, please.", "She sells sea shells.", "Nine old men ran home."]
    plan = [("train", t, s) for t in texts for s in ("en-us", "en-us+m3")]
    plan += [("val", texts[0], "en-us"), ("test", texts[1], "en-us"), ("test", texts[2], "en-us"),
             ("test", texts[1], "en-us+m3"), ("test", texts[3], "en-us+m3"),
             ("voice", texts[2], "en-us+f3"), ("voice", texts[3], "en-us+f3")]
    return FakeCorpus(plan)


def tiny_speaker():
    torch.manual_seed(0)
    return SpeakerEncoder(["en-us", "en-us+m3", "en+f2"], channels=32, blocks=2, dim=16).eval()


# ---- WER / PER ------------------------------------------------------------------------------------
def test_edit_ops_golden():
    assert edit_ops("a b c d".split(), "a x c d e".split()) == dict(hits=3, substitutions=1, deletions=0, insertions=1)
    assert edit_ops("a b c".split(), "a c".split()) == dict(hits=2, substitutions=0, deletions=1, insertions=0)
    assert edit_ops([], "a b".split()) == dict(hits=0, substitutions=0, deletions=0, insertions=2)
    assert edit_ops("a b".split(), []) == dict(hits=0, substitutions=0, deletions=2, insertions=0)


def test_wer_golden_and_normalisation():
    assert normalize_words("'Tis so, Sir!  Don't-stop.") == ["tis", "so", "sir", "don't", "stop"]
    assert wer(["the cat sat", "a b"], ["the cat sat down", "b"]) == pytest.approx(2 / 5)
    assert wer(["'Tis so, Sir!"], ["tis so sir"]) == 0.0
    assert wer([["x"]], [["y", "z"]]) == 2.0             # lists of words; insertions can push it past 1
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no tokens"):
        wer([""], ["a"])


def test_phoneme_error_rate_ignores_pauses():
    ref = [[PAUSE, "h", "ə", PAUSE, "l", "oʊ", PAUSE]]
    assert phoneme_error_rate(ref, [["h", "ə", "l", "oʊ"]]) == 0.0
    assert phoneme_error_rate(ref, [["h", PAUSE, "ə", PAUSE, PAUSE, "l", "oʊ"]]) == 0.0
    assert phoneme_error_rate(ref, [["h", "ɪ", "l", "oʊ", PAUSE]]) == pytest.approx(1 / 4)


def test_eer_golden():
    assert eer(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2])) == 0.0
    assert eer(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])) == 1.0
    assert eer(torch.tensor([0.9, 0.8, 0.3, 0.7]), torch.tensor([0.1, 0.2, 0.75, 0.0])) == pytest.approx(0.25)


# ---- PocketSphinx ---------------------------------------------------------------------------------
def test_pocketsphinx_reads_espeak_clips_with_the_grammar():
    refs = ["Open the door please.", "The cat sat on the mat zorblax."]
    wavs = [synth(t, "en-us", rate=150)[0] for t in refs]
    res = pocketsphinx_wer(wavs, refs)
    assert res["wer"] < 0.5, res                          # one error is the OOV word, which cannot be read
    assert res["n_words"] == 11 and len(res["hyps"]) == 2
    assert res["oov"] == ["zorblax"] and res["oov_tokens"] == 1 and res["vocab_size"] == 8
    assert res["substitutions"] + res["deletions"] + res["insertions"] == round(res["wer"] * 11)
    assert pocketsphinx_wer(wavs, refs) == res            # seeded dither: deterministic


def test_pocketsphinx_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        pocketsphinx_wer([np.zeros(0, np.float32)], ["hello"])
    with pytest.raises(ValueError, match="1 clips but 2"):
        pocketsphinx_wer([np.zeros(1600, np.float32)], ["hello", "there"])
    with pytest.raises(ValueError, match="CMUdict"):
        pocketsphinx_wer([np.zeros(1600, np.float32)], ["zorblax"])


# ---- speaker encoder ------------------------------------------------------------------------------
def test_speaker_encoder_shapes_similarity_and_round_trip(tmp_path):
    model = tiny_speaker()
    wavs = [np.random.default_rng(k).normal(0, 0.1, n).astype(np.float32) for k, n in enumerate((16000, 9000, 400))]
    emb = model.embed(wavs)
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert model.logits(emb).shape == (3, 3)
    sim = speaker_similarity(model, wavs, wavs)
    assert sim.shape == (3,) and torch.allclose(sim, torch.ones(3), atol=1e-5)
    assert speaker_similarity(model, wavs, wavs[:1]).shape == (3,)   # one reference for all
    with pytest.raises(ValueError, match="references"):
        speaker_similarity(model, wavs, wavs[:2])
    model.save_pretrained(tmp_path / "spk")
    assert torch.equal(SpeakerEncoder.from_pretrained(tmp_path / "spk").embed(wavs), emb)


@pytest.mark.parametrize("bad,message", [([np.zeros(0, np.float32)], "empty"),
                                         ([np.array([0.1, np.nan] * 800, np.float32)], "NaN"),
                                         ([np.zeros((2, 1600), np.float32)], "mono"),
                                         ([], "no clips")])
def test_speaker_encoder_refuses_bad_audio(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_speaker().embed(bad)


def test_speaker_encoder_refuses_a_ctc_folder(tmp_path):
    torch.manual_seed(0)
    CTCRecognizer(PHONEMES, channels=32, blocks=2, hidden=32).save_pretrained(tmp_path / "ctc")
    with pytest.raises(ValueError, match="speech-ctc"):
        SpeakerEncoder.from_pretrained(tmp_path / "ctc")


# ---- training smoke runs --------------------------------------------------------------------------
def test_train_ctc_smoke(corpus, tmp_path, seed):
    state = torch.get_rng_state()
    model = train_ctc(corpus, tmp_path / "ctc", seconds=2, channels=32, blocks=1, hidden=32)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.meta["steps"] >= 1 and 0 <= model.meta["val_per"] and "voice_per" in model.meta
    loaded = CTCRecognizer.from_pretrained(tmp_path / "ctc")
    assert loaded.phonemes == sorted({p for r in corpus.rows("train") for p in r["phonemes"]})
    assert loaded.meta == model.meta


def test_train_speaker_smoke_and_calibrate(corpus, tmp_path, seed):
    model = train_speaker(corpus, tmp_path / "spk", seconds=2, channels=32, blocks=2, dim=16)
    assert model.speakers == ["en-us", "en-us+m3"]        # the held-out voice is never a class
    cal = calibrate(model, corpus)
    for k in ("same_mean", "diff_mean", "voice_same_mean", "voice_diff_mean"):
        assert -1 <= cal[k] <= 1
    for k in ("eer", "voice_eer", "all_eer", "accuracy"):
        assert 0 <= cal[k] <= 1
    assert cal["n_test"] == 4 and cal["n_voice"] == 2
    assert SpeakerEncoder.from_pretrained(tmp_path / "spk").meta["eer"] == round(cal["eer"], 4)

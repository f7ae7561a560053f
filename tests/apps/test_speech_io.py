"""apps/tts/checks.py: text and reference-clip checks, sentence splitting; apps/tts/model.py:
sentence-by-sentence speech (``speak``) and ``omniar tts`` on a fake SpeechModel (tests/apps/fake_speech.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from apps.tts.checks import check_settings, check_text, check_voice_prompt, read_reference, split_sentences
from apps.tts.model import speak
from fake_speech import FakeSpeechModel, patch_from_pretrained  # tests/apps/fake_speech.py

SR = 16000


def tone(seconds: float, sr: int = SR, hz: float = 220.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ---- text -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    (None, "must be a string, got NoneType"),
    (42, "must be a string, got int"),
    ("", "is empty"),
    ("  \n\t ", "is empty"),
    ("a" * 301, "301 characters long; the limit is 300"),
    ("!!!", "nothing to pronounce"),
    ("---", "nothing to pronounce"),
    ("... ?", "nothing to pronounce"),
])
def test_bad_text_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_text(text)


def test_good_text_is_collapsed_and_digits_are_pronounceable():
    assert check_text("  Hello \n\n  world.\x00 ") == "Hello world."
    assert check_text("123") == "123"
    assert check_text("a" * 300) == "a" * 300
    with pytest.raises(ValueError, match="the limit is 20"):
        check_text("a long sentence that is over twenty", max_chars=20)


def test_split_sentences_at_sentence_ends():
    assert split_sentences("One. Two! Three? Four; five") == ["One.", "Two!", "Three?", "Four;", "five"]
    assert split_sentences("Pi is 3.14 today.  Next\nline.") == ["Pi is 3.14 today.", "Next line."]
    assert split_sentences("... Hello. !!! ") == ["Hello."]       # punctuation alone says nothing
    assert split_sentences("!!!") == [] and split_sentences("   ") == []


def test_split_sentences_cuts_long_sentences_under_the_limit():
    clause = "the rain in the plain falls mainly on the hills"
    long = ", ".join([clause] * 12) + "."
    pieces = split_sentences(long, 120)
    assert len(pieces) > 1 and all(len(p) <= 120 for p in pieces)
    assert " ".join(pieces) == long                                  # nothing lost, cut at commas
    assert all(p.endswith(",") or p.endswith(".") for p in pieces)
    words = " ".join(["word"] * 200)                                  # no punctuation: at spaces
    assert all(len(p) <= 50 for p in split_sentences(words, 50)) and " ".join(split_sentences(words, 50)) == words
    assert split_sentences("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]   # one huge word: hard cut
    with pytest.raises(ValueError, match="must be a string"):
        split_sentences(None)


# ---- reference clips ------------------------------------------------------------------------------
def test_int16_mono_at_16k_is_scaled_not_resampled():
    pcm = (tone(2.0) * 32767).astype(np.int16)
    x = read_reference((SR, pcm))
    assert x.dtype == np.float32 and x.shape == (32000,)
    np.testing.assert_allclose(x, pcm / 32768.0, atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k(sr):
    x = read_reference((sr, tone(2.0, sr)))
    assert x.dtype == np.float32 and abs(len(x) - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * SR / len(x) - 220.0) < 2.0     # the tone survives at its pitch


@pytest.mark.parametrize("layout", ["(T, C)", "(C, T)"])
def test_stereo_becomes_mono(layout):
    left, right = tone(1.5, 44100, amp=0.4), tone(1.5, 44100, amp=0.2)
    stereo = (np.stack([left, right], 1) * 32767).astype(np.int16)
    x = read_reference((44100, stereo if layout == "(T, C)" else stereo.T))
    assert x.ndim == 1 and abs(len(x) - 24000) <= 1
    assert 0.25 < np.abs(x).max() < 0.35                              # the mean of the channels


def test_other_dtypes_and_loud_floats():
    assert read_reference((SR, (tone(1.2) * 2**31).astype(np.int32))).max() == pytest.approx(0.5, abs=1e-3)
    u8 = (tone(1.2) * 127 + 128).astype(np.uint8)
    assert read_reference((SR, u8)).max() == pytest.approx(0.5 * 127 / 128, abs=0.01)
    loud = read_reference((SR, tone(1.2).astype(np.float64) * 8000))   # float beyond full scale
    assert np.abs(loud).max() == pytest.approx(1.0)


def test_files_of_any_rate_and_channels(tmp_path):
    wav, flac = tmp_path / "ref.wav", tmp_path / "ref.flac"
    sf.write(wav, np.stack([tone(3.0, 44100)] * 2, 1), 44100, subtype="PCM_16")
    sf.write(flac, tone(2.0, 8000), 8000)
    assert abs(len(read_reference(wav)) - 48000) <= 1
    assert abs(len(read_reference(str(flac))) - 32000) <= 1


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("this is not audio"), "cannot read ref.wav as audio"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20), "cannot read ref.wav as audio"),
    (lambda p: p.write_bytes(b""), "cannot read ref.wav as audio"),
    (lambda p: None, "not found"),
    (lambda p: sf.write(p, tone(0.5), SR), "0.50 s long; it must be 1 to 10 s"),
    (lambda p: sf.write(p, tone(60.0, 8000), 8000), "60.00 s long; it must be 1 to 10 s"),
    (lambda p: sf.write(p, np.zeros(SR * 2, np.float32), SR), "silent"),
])
def test_bad_files_are_clear_errors(tmp_path, make, message):
    path = tmp_path / "ref.wav"
    make(path)
    with pytest.raises(ValueError, match=message) as e:
        read_reference(path)
    assert "Traceback" not in str(e.value)


@pytest.mark.parametrize("source, message", [
    (None, "no reference audio"),
    ([1, 2, 3], "must be a file path or"),
    ((SR, np.full(SR * 2, np.nan, np.float32)), "NaN or infinite"),
    ((SR, np.r_[tone(2.0), np.inf].astype(np.float32)), "NaN or infinite"),
    ((SR, np.full(SR * 2, 3e-5, np.float32)), "silent"),
    ((SR, np.zeros(0, np.int16)), "0.00 s long; it must be 1 to 10 s"),
    ((SR, tone(0.99)), "0.99 s long; it must be 1 to 10 s"),
    ((44100, tone(10.5, 44100)), "10.50 s long; it must be 1 to 10 s"),
    ((0, tone(2.0)), "sample rate must be a whole number of Hz from 4000 to 192000, got 0"),
    ((1_000_000, tone(2.0)), "sample rate must be"),
    (("16k", tone(2.0)), "sample rate must be"),
    ((SR, np.zeros((2, 2, SR), np.float32)), "must be mono"),
    ((SR, np.array(["a", "b"])), "must hold numbers"),
])
def test_bad_arrays_are_clear_errors(source, message):
    with pytest.raises(ValueError, match=message):
        read_reference(source)


def test_custom_length_limits_are_stated():
    with pytest.raises(ValueError, match="it must be 3 to 5 s"):
        read_reference((SR, tone(2.0)), min_s=3, max_s=5)


def test_voice_prompt_needs_clip_and_transcript():
    assert check_voice_prompt(None, None) == (None, None) and check_voice_prompt(None, "  ") == (None, None)
    with pytest.raises(ValueError, match="needs its transcript"):
        check_voice_prompt((SR, tone(2.0)), "")
    with pytest.raises(ValueError, match="no voice prompt clip"):
        check_voice_prompt(None, "hello there")
    wav, text = check_voice_prompt((SR, tone(2.0)), " hello   there ")
    assert wav.shape == (32000,) and text == "hello there"


@pytest.mark.parametrize("seed, temperature, message", [
    (-1, 1.0, "seed must be a whole number from 0"), (1.5, 1.0, "seed must be"), ("abc", 1.0, "seed must be"),
    (float("nan"), 1.0, "seed must be"), (0, 0, "temperature must be above 0"), (0, 2.5, "at most 2"),
    (0, float("nan"), "temperature must be"), (0, "hot", "temperature must be a number"),
])
def test_bad_settings(seed, temperature, message):
    with pytest.raises(ValueError, match=message):
        check_settings(seed, temperature)


def test_good_settings():
    assert check_settings(3.0, "0.7") == (3, 0.7) and check_settings(None, 2) == (None, 2.0)


# ---- speaking sentence by sentence ---------------------------------------------------------------
def test_speak_joins_sentences_with_a_pause():
    model = FakeSpeechModel()
    one = model.synthesize("Hello there.", seed=5)
    r = speak(model, "Hello there. Good morning!", seed=5, pause_s=0.3)
    assert [c["text"] for c in model.calls[1:]] == ["Hello there.", "Good morning!"]
    assert all(c["seed"] == 5 for c in model.calls)
    two = model.synthesize("Good morning!", seed=5)
    k = len(one.phonemes)
    assert one.phonemes[-1] == "_" and r.phonemes == one.phonemes + two.phonemes   # its own '_' grows
    assert len(r.phonemes) == len(r.durations) == len(r.pitch) == len(r.pitch_hz)
    assert len(r.wav) == sum(r.durations) * 320 == r.n_frames * 320   # frames and samples agree
    assert r.durations[k - 1] == one.durations[-1] + 15 and r.pitch[k - 1] == 0 and math.isnan(r.pitch_hz[k - 1])
    np.testing.assert_array_equal(r.wav[len(one.wav):len(one.wav) + 4800], 0)


def test_speak_adds_a_pause_phoneme_when_a_sentence_ends_without_one():
    class NoTrailingPause(FakeSpeechModel):
        def synthesize(self, text, *a, **k):
            r = super().synthesize(text, *a, **k)
            n = r.durations[-1] * self.hop
            return type(r)(r.wav[:-n], r.sample_rate, r.phonemes[:-1], r.durations[:-1], r.pitch[:-1], r.pitch_hz[:-1],
                           r.n_frames - r.durations[-1])
    model = NoTrailingPause()
    one = model.synthesize("Hello there.")
    r = speak(model, "Hello there. Good morning!")
    k = len(one.phonemes)
    assert r.phonemes[k] == "_" and r.durations[k] == 15 and r.pitch[k] == 0 and math.isnan(r.pitch_hz[k])
    assert len(r.wav) == sum(r.durations) * 320 == r.n_frames * 320


def test_speak_valle_has_no_prosody_and_passes_the_prompt():
    model = FakeSpeechModel(prosody=False)
    ref = tone(2.0)
    r = speak(model, "One. Two.", ref, "a prompt", seed=7, temperature=0.5)
    assert r.durations == [] and r.pitch == [] and r.pitch_hz == [] and r.phonemes.count("_") == 2
    assert len(r.wav) == sum(len(FakeSpeechModel().synthesize(t, seed=7).wav) for t in ("One.", "Two.")) + 4800
    assert all(c["prompt_wav"] is ref and c["prompt_text"] == "a prompt" and c["temperature"] == 0.5
               for c in model.calls)
    with pytest.raises(ValueError, match="nothing to pronounce"):
        speak(model, "?!")


# ---- omniar tts -----------------------------------------------------------------------------------
def run_cli(argv, capsys):
    from apps.cli import main
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_writes_a_wav(tmp_path, monkeypatch, capsys):
    model = FakeSpeechModel()
    loaded = patch_from_pretrained(monkeypatch, model)
    long = " ".join(f"Sentence number {i} is here." for i in range(20))   # > 300 characters
    rc, out, err = run_cli(["tts", long, "-o", str(tmp_path / "sub" / "out.wav"), "--model", "m", "--seed", "3"],
                           capsys)
    assert rc == 0, err
    assert loaded == [("m", "cpu")] and len(model.calls) == 20 and all(c["seed"] == 3 for c in model.calls)
    wav, sr = sf.read(tmp_path / "sub" / "out.wav")
    assert sr == 16000 and wav.ndim == 1
    assert len(wav) == sum(len(model.synthesize(c["text"], seed=3).wav) for c in model.calls[:20]) + 19 * 4800
    assert "wrote" in out and "20 sentences" in out


def test_cli_voice_prompt(tmp_path, monkeypatch, capsys):
    model = FakeSpeechModel()
    patch_from_pretrained(monkeypatch, model)
    ref = tmp_path / "ref.wav"
    sf.write(ref, tone(2.0, 22050), 22050)
    rc, _, err = run_cli(["tts", "Hi.", "-o", str(tmp_path / "o.wav"), "--voice-prompt", str(ref),
                          "--prompt-text", "the clip's words"], capsys)
    assert rc == 0, err
    assert model.calls[0]["prompt_wav"].shape == (32000,) and model.calls[0]["prompt_text"] == "the clip's words"


@pytest.mark.parametrize("extra, message", [
    (["", "-o", "o.wav"], "the text is empty"),
    (["!!!", "-o", "o.wav"], "nothing to pronounce"),
    (["Hi.", "-o", "o.mp3"], "-o must name a .wav file"),
    (["Hi.", "-o", "o.wav", "--voice-prompt", "REF"], "--voice-prompt needs --prompt-text"),
    (["Hi.", "-o", "o.wav", "--prompt-text", "words"], "--prompt-text needs --voice-prompt"),
    (["Hi.", "-o", "o.wav", "--voice-prompt", "BAD", "--prompt-text", "w"], "cannot read bad.wav as audio"),
    (["Hi.", "-o", "o.wav", "--voice-prompt", "nope.wav", "--prompt-text", "w"], "not found"),
    (["Hi.", "-o", "o.wav", "--temperature", "nan"], "temperature must be"),
])
def test_cli_errors_exit_2_before_loading(tmp_path, monkeypatch, capsys, extra, message):
    loaded = patch_from_pretrained(monkeypatch, FakeSpeechModel())
    sf.write(tmp_path / "ref.wav", tone(2.0), SR)
    (tmp_path / "bad.wav").write_text("not audio")
    monkeypatch.chdir(tmp_path)
    extra = [{"REF": "ref.wav", "BAD": "bad.wav"}.get(x, x) for x in extra]
    rc, _, err = run_cli(["tts", *extra], capsys)
    assert rc == 2 and message in err and "Traceback" not in err
    assert loaded == []


def test_cli_missing_model_folder_is_exit_2(tmp_path, monkeypatch, capsys):
    import apps.cli
    patch_from_pretrained(monkeypatch, FakeSpeechModel())

    def missing(cls, folder="assets/speech-tts", codec=None, device=None):
        raise FileNotFoundError(f"text-to-speech checkpoint folder {folder} not found")
    monkeypatch.setattr("apps.tts.model.SpeechModel.from_pretrained", classmethod(missing))
    rc, _, err = run_cli(["tts", "Hi.", "-o", str(tmp_path / "o.wav"), "--model", "nowhere"], capsys)
    assert rc == 2 and "nowhere not found" in err
    assert apps.cli.build_parser().parse_args(["demo", "--speech-model", "x"]).speech_model == "x"

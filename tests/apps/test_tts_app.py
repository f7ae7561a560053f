"""The speech app on a fake SpeechModel (tests/apps/fake_speech.py): handlers, the prosody plot, the
launcher's Speech tab, and the app as a real loopback server driven by headless Chromium."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import dataclasses

import numpy as np
import pytest
import soundfile as sf

from fake_speech import FakeSpeechModel, patch_from_pretrained  # tests/apps/fake_speech.py

GOOD = dict(text="Hello world. How are you?", ref=None, transcript="", seed=0, temperature=1.0)


def clip(seconds=2.0, sr=22050):
    return (sr, (0.3 * np.sin(2 * np.pi * 200 * np.arange(int(seconds * sr)) / sr) * 32767).astype(np.int16))


def test_speak_returns_audio_plot_and_note():
    from matplotlib.figure import Figure
    from apps.tts.app import make_synthesize_fn
    model = FakeSpeechModel()
    (sr, pcm), plot, note = make_synthesize_fn(model)(*GOOD.values())
    assert sr == 16000 and pcm.dtype == np.int16 and pcm.ndim == 1 and len(pcm) > 0
    assert plot["visible"] is True and isinstance(plot["value"], Figure)
    top, bottom = plot["value"].axes
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    assert labels[:3] == ["h", "ə", "l"] and "_" in labels                 # espeak's IPA, pauses as _
    assert len(top.patches) == len(labels)                                 # one duration bar per phoneme
    assert "default voice" in note and "phonemes" in note
    assert [c["text"] for c in model.calls] == ["Hello world.", "How are you?"]


def test_valle_shows_a_note_instead_of_a_plot():
    from apps.tts.app import NO_PROSODY, make_synthesize_fn
    (_, pcm), plot, note = make_synthesize_fn(FakeSpeechModel(prosody=False))(*GOOD.values())
    assert len(pcm) > 0 and plot["visible"] is False and NO_PROSODY in note


def test_voice_prompt_reaches_the_model(tmp_path):
    from apps.tts.app import make_synthesize_fn
    model = FakeSpeechModel()
    path = tmp_path / "ref.flac"
    sf.write(path, clip(3.0, 44100)[1], 44100)
    for ref in (clip(), str(path)):
        make_synthesize_fn(model)(*{**GOOD, "text": "Hi.", "ref": ref, "transcript": "some words"}.values())
    assert [c["prompt_wav"].shape for c in model.calls] == [(32000,), (48000,)]
    assert model.calls[0]["prompt_text"] == "some words"
    _, _, note = make_synthesize_fn(model)(*{**GOOD, "ref": clip(), "transcript": "w"}.values())
    assert "reference voice" in note


@pytest.mark.parametrize("bad, message", [
    (dict(text=""), "the text is empty"),
    (dict(text="   "), "the text is empty"),
    (dict(text="!!!"), "nothing to pronounce"),
    (dict(text="a" * 301), "the limit is 300"),
    (dict(ref=clip(0.4), transcript="hi"), "0.40 s long; it must be 1 to 10 s"),
    (dict(ref=clip(12.0), transcript="hi"), "it must be 1 to 10 s"),
    (dict(ref=(16000, np.zeros(32000, np.int16)), transcript="hi"), "silent"),
    (dict(ref=clip()), "needs its transcript"),
    (dict(transcript="words"), "no voice prompt clip"),
    (dict(seed=-3), "seed must be"),
    (dict(temperature=0), "temperature must be above 0"),
])
def test_bad_input_is_a_clear_error(bad, message):
    import gradio as gr
    from apps.tts.app import make_synthesize_fn
    model = FakeSpeechModel()
    with pytest.raises(gr.Error) as e:
        make_synthesize_fn(model)(*{**GOOD, **bad}.values())
    assert message in e.value.message and "Traceback" not in e.value.message
    assert model.calls == []


def test_malformed_upload_is_a_clear_error(tmp_path):
    import gradio as gr
    from apps.tts.app import make_synthesize_fn
    (tmp_path / "voice.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(gr.Error, match="cannot read voice.wav as audio"):
        make_synthesize_fn(FakeSpeechModel())(*{**GOOD, "ref": str(tmp_path / "voice.wav"), "transcript": "w"}.values())


def test_model_failure_is_named_not_traced():
    import gradio as gr
    from apps.tts.app import make_synthesize_fn
    model = FakeSpeechModel()
    model.synthesize = lambda *a, **k: 1 / 0
    with pytest.raises(gr.Error, match="speech synthesis failed \\(ZeroDivisionError"):
        make_synthesize_fn(model)(*GOOD.values())


def test_build_demo_does_no_work():
    from apps.tts.app import build_demo
    model = FakeSpeechModel()
    demo = build_demo(model)
    assert model.calls == [] and "tts" in {d.api_name for d in demo.fns.values()}


def test_load_app_and_launcher_tab(tmp_path, monkeypatch, capsys):
    from apps import launcher
    from apps.tts import app as tts_app
    with pytest.raises(FileNotFoundError, match="omniar train tts --config configs/tts_ralle.yaml"):
        tts_app.load_app(tmp_path / "nope")
    folder = tmp_path / "speech"
    folder.mkdir()
    for f in tts_app.CHECKPOINT_FILES:
        (folder / f).write_text("{}")
    loaded = patch_from_pretrained(monkeypatch, FakeSpeechModel())
    assert tts_app.load_app(folder, "cpu") is not None and loaded == [(str(folder), "cpu")]

    spec = next(s for s in launcher.APPS if s.tab == "Speech")
    assert spec.optional and spec.flag == "--speech-model" and spec.default == "assets/speech-tts"
    missing = str(tmp_path / "missing")
    monkeypatch.setattr(launcher, "APPS", [dataclasses.replace(spec, default=missing)])
    assert launcher.load_apps(argparse.Namespace(speech_model=missing, device="cpu")) == {}
    assert "note: no Speech tab" in capsys.readouterr().err                # default missing: skipped
    with pytest.raises(FileNotFoundError, match="typo"):                   # named on the command line: error
        launcher.load_apps(argparse.Namespace(speech_model=str(tmp_path / "typo"), device="cpu"))
    assert set(launcher.load_apps(argparse.Namespace(speech_model=str(folder), device="cpu"))) == {"Speech"}


# ---- the app behind the launcher's tabs, in a browser ---------------------------------------------
@pytest.fixture(scope="module")
def page():
    from app_server import browser_tab, free_port  # tests/apps/app_server.py
    from apps.launcher import build_launcher
    from apps.tts.app import build_demo
    for k in ("NO_PROXY", "no_proxy"):
        os.environ[k] = "127.0.0.1,localhost"
    demo = build_launcher({"Speech": build_demo(FakeSpeechModel())})
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, ssr_mode=False,
                prevent_thread_lock=True, quiet=True)
    try:
        with browser_tab(f"http://127.0.0.1:{port}/", "Speech") as pg:
            yield pg
    finally:
        demo.close()


@pytest.mark.slow
def test_browser_text_to_audio_and_plot(page):
    from playwright.sync_api import expect
    page.locator("#tts-text textarea").fill("Good morning. The sun is out.")
    page.get_by_role("button", name="Speak").click()
    expect(page.locator("#tts-plot img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#tts-audio audio").first).to_be_attached(timeout=30_000)     # none before a result
    assert page.locator("#tts-audio a[download]").first.get_attribute("href").endswith(".wav")
    expect(page.locator("#tts-note")).to_contain_text("phonemes")
    assert "Traceback" not in page.content()


@pytest.mark.slow
def test_browser_empty_text_shows_the_reason(page):
    from playwright.sync_api import expect
    page.locator("#tts-text textarea").fill("")
    page.get_by_role("button", name="Speak").click()
    expect(page.get_by_text("the text is empty").first).to_be_visible(timeout=30_000)
    assert "Traceback" not in page.content()

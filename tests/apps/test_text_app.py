"""The text app: handler unit tests, then the launcher as a real server on loopback, driven by
a browser (playwright + Debian chromium) and by gradio_client. A tiny random char-level model
stands in for the trained checkpoint; nothing here touches the network."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from apps.text.model import stream_text
from backbone.container import OmniModel
from backbone.sampling import SamplingParams
from modalities.text import CharTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TEXT = ("ROMEO: But soft, what light through yonder window breaks?\n"
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n")
OOV = "\u2603"  # a snowman: not in the tiny vocabulary
GOOD = dict(prompt="ROMEO:", temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
            max_new_tokens=20, seed=0, stop="")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_tiny_lm) -> Path:
    tok = CharTokenizer.train(TEXT)
    folder = tmp_path_factory.mktemp("text-ckpt")
    make_tiny_lm(tok.vocab_size).save_pretrained(folder, tokenizer=tok)
    return folder


@pytest.fixture(scope="module")
def model_tok(ckpt):
    return OmniModel.from_pretrained(ckpt), load_tokenizer(ckpt)


# ---- no server ---------------------------------------------------------------------------------
def test_generate_fn_streams_the_same_text_as_stream_text(model_tok):
    from apps.text.app import make_generate_fn
    model, tok = model_tok
    fn = make_generate_fn(model, tok)
    outs = list(fn(*{**GOOD, "temperature": 0.0}.values()))
    assert outs and outs[-1]
    assert all(b.startswith(a) for a, b in zip(outs, outs[1:]))  # accumulated, never shrinking
    ref = "".join(stream_text(model, tok, "ROMEO:", SamplingParams(temperature=0.0, max_new_tokens=20)))
    assert outs[-1] == ref
    seeded = [list(fn(*GOOD.values()))[-1] for _ in range(2)]
    assert seeded[0] == seeded[1] and seeded[0]


def test_generate_fn_on_an_engine_matches_solo(model_tok):
    from apps.text.app import make_generate_fn
    from backbone.batching import BatchEngine
    model, tok = model_tok
    engine = BatchEngine(model, max_rows=4).start()
    try:
        batched = list(make_generate_fn(model, tok, engine)(*GOOD.values()))[-1]
        assert batched == list(make_generate_fn(model, tok)(*GOOD.values()))[-1] and batched
    finally:
        engine.stop()


def test_generate_fn_stop_strings(model_tok):
    from apps.text.app import make_generate_fn, parse_stop_strings
    assert parse_stop_strings("ROMEO:, JULIET:\n\nNurse") == ["ROMEO:", "JULIET:", "Nurse"]
    assert parse_stop_strings("") == [] and parse_stop_strings(None) == []
    model, tok = model_tok
    fn = make_generate_fn(model, tok)
    full = list(fn(*{**GOOD, "temperature": 0.0}.values()))[-1]
    stop = full[5:7]
    cut = list(fn(*{**GOOD, "temperature": 0.0, "stop": f"{stop}, zzz"}.values()))
    assert (cut[-1] if cut else "") == full[:full.find(stop)]


def test_make_params_conventions():
    from apps.text.app import make_params
    p = make_params(0.8, 0, 1.0, 0.0, 1.0, 20, -1, "A, B")
    assert p.top_k is None and p.min_p is None and p.seed is None and p.stop_strings == ["A", "B"]
    p = make_params(0.8, None, None, 0.1, 1.2, 20.0, None, None)
    assert p.top_k is None and p.top_p is None and p.min_p == 0.1 and p.seed is None
    assert p.max_new_tokens == 20 and isinstance(p.max_new_tokens, int)
    assert make_params(0.8, 5, 0.9, 0, 1, 20, 2**62 + 1, "").seed == 2**62 + 1
    assert make_params(0.8, 5, 0.9, 0, 1, 20, 7.0, "").top_k == 5


@pytest.mark.parametrize("bad, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(seed=2**64), "seed must be below 2**63"),
    (dict(prompt="ROMEO" + OOV), "outside this model's vocabulary"),
    (dict(prompt="R" * 100), "context is 64"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(temperature=-1), "temperature must be a finite number >= 0"),
    (dict(max_new_tokens=10**9), "max_new_tokens must be in"),
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(top_p=math.inf), "top_p must be a finite number"),
    (dict(max_new_tokens=None), "max_new_tokens is empty"),
    (dict(top_k=2.5), "top_k must be a whole number"),
    (dict(repetition_penalty="abc"), "repetition_penalty must be a number"),
])
def test_generate_fn_bad_input_is_a_clear_gradio_error(model_tok, bad, message):
    import gradio as gr
    from apps.text.app import make_generate_fn
    fn = make_generate_fn(*model_tok)
    with pytest.raises(gr.Error) as e:
        list(fn(*{**GOOD, **bad}.values()))
    assert message in e.value.message
    assert "Traceback" not in e.value.message


def test_build_demo_and_launcher_expose_generate(model_tok):
    import gradio as gr
    from apps.launcher import build_launcher
    from apps.text.app import build_demo
    demo = build_demo(*model_tok)
    assert isinstance(demo, gr.Blocks)
    launcher = build_launcher({"Text": demo})
    assert "generate" in [f.api_name for f in launcher.fns.values()]


def test_launcher_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    from apps import launcher
    missing = tmp_path / "nope"
    with pytest.raises(SystemExit) as e:
        launcher.main(["--text-model", str(missing), "--port", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "omniar train text --config configs/text_shakespeare.yaml" in err


def test_launcher_missing_checkpoint_subprocess_has_no_traceback(tmp_path):
    missing = tmp_path / "nope"
    r = subprocess.run([sys.executable, "-m", "apps.launcher", "--text-model", str(missing)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert r.returncode == 2
    assert str(missing) in r.stderr and "omniar train text" in r.stderr
    assert "Traceback" not in r.stderr


# ---- a real server -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    from app_server import running_launcher  # tests/apps/app_server.py
    with running_launcher(["--text-model", str(ckpt)], tmp_path_factory.mktemp("server") / "launcher.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client
    return Client(server, verbose=False)


def test_client_generates(client):
    out = client.predict(**GOOD, api_name="/generate")
    assert isinstance(out, str) and out.strip()
    assert client.predict(**GOOD, api_name="/generate") == out  # same seed, same text


def test_concurrent_users_are_batched_and_each_gets_its_solo_text(client, model_tok):
    """The Text tab decodes concurrent users on one continuous-batching engine: 8 users at once,
    each gets exactly what stream_text gives alone for its seed."""
    jobs = [client.submit(**{**GOOD, "seed": s, "max_new_tokens": 30}, api_name="/generate") for s in range(8)]
    got = [j.result(timeout=120) for j in jobs]
    model, tok = model_tok
    solo = ["".join(stream_text(model, tok, "ROMEO:", SamplingParams(temperature=0.8, max_new_tokens=30, seed=s)))
            for s in range(8)]
    assert got == solo


@pytest.mark.parametrize("bad, message", [
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(temperature=-1), "temperature must be a finite number >= 0"),
    (dict(max_new_tokens=10**9), "max_new_tokens must be in"),
    (dict(prompt=""), "prompt is empty"),
])
def test_client_bad_settings_give_the_message_not_a_traceback(client, bad, message):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError) as e:
        client.predict(**{**GOOD, **bad}, api_name="/generate")
    assert message in str(e.value)
    assert "Traceback" not in str(e.value)


def test_raw_api_nan_is_a_clear_error(server):
    # gradio_client refuses to JSON-encode NaN, but a raw caller can send it
    body = b'{"data": ["ROMEO:", NaN, 0, 1.0, 0, 1.0, 20, 0, ""]}'
    req = urllib.request.Request(server + "gradio_api/call/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=30) as r:
        event_id = json.loads(r.read())["event_id"]
    with NO_PROXY.open(f"{server}gradio_api/call/generate/{event_id}", timeout=60) as r:
        stream = r.read().decode()
    assert "event: error" in stream and "temperature must be a finite number" in stream


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (no browser downloads)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.goto(server, wait_until="domcontentloaded", timeout=60_000)
    pg.get_by_role("button", name="Generate", exact=True).wait_for(timeout=60_000)
    yield pg
    ctx.close()


def _output_text(page, timeout_s: float = 60.0) -> str:
    # (not get_by_label: the label element also holds the Copy button, which it then names)
    box = page.locator("#text-output textarea")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = box.input_value()
        if text:
            return text
        time.sleep(0.25)
    return ""


def test_browser_generates(page):
    page.get_by_label("Prompt", exact=True).fill("ROMEO:")
    page.get_by_role("button", name="Generate", exact=True).click()
    assert _output_text(page), "no generated text appeared in the output box"


def test_browser_bad_input_shows_clear_errors(page):
    from playwright.sync_api import expect
    go = page.get_by_role("button", name="Generate", exact=True)
    page.get_by_label("Prompt", exact=True).fill("")
    go.click()
    expect(page.get_by_text("the prompt is empty").first).to_be_visible(timeout=30_000)
    page.get_by_label("Prompt", exact=True).fill("ROMEO" + OOV)
    go.click()
    expect(page.get_by_text("outside this model's vocabulary").first).to_be_visible(timeout=30_000)
    assert "Traceback" not in page.content()
    assert _output_text(page, timeout_s=1) == ""  # nothing was generated

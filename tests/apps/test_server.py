"""``omniar serve`` started for real on loopback ports and called with the ``openai`` package
(and raw HTTP for what that client will not send: NaN, non-UTF-8, oversize bodies)."""
import base64
import io
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["assets/text-shakespeare", "assets/crystal-cif", "assets/t2i-shapes", "assets/speech-tts",
          "assets/forecast-zeroshot"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--port", str(port), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            httpx.get(base + "/health", timeout=1)
            return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read())
            time.sleep(0.5)
    proc.kill()
    pytest.fail("the server did not start")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    err = proc.stderr.read()
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def server():
    args = [a for m in MODELS for a in ("--model", m)] + ["--max-rows", "16", "--max-body-mb", "0.5"]
    proc, base = start(args)
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_health_docs_metrics(server, client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {Path(m).name for m in MODELS}
    assert httpx.get(server + "/health").json()["status"] == "ok"
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    assert {"/v1/completions", "/v1/images/generations", "/v1/audio/speech", "/v1/forecast"} <= set(paths)
    client.completions.create(model="text-shakespeare", prompt="A", max_tokens=3)
    m = httpx.get(server + "/metrics").text
    for name in ("omniar_queue_depth", "omniar_running_rows", "omniar_batch_rows_bucket",
                 "omniar_time_to_first_token_seconds_bucket", "omniar_inter_token_seconds_bucket",
                 "omniar_tokens_per_second", 'omniar_generated_tokens_total{model="text-shakespeare"}'):
        assert name in m, name


def _solo_text(prompt: str, max_tokens: int, temperature: float, seed: int | None, stop=None) -> str:
    """What the model gives alone, in this process (TextSchedule + TextStream, no server)."""
    from apps.text.model import stream_text
    from backbone.container import OmniModel
    from backbone.sampling import SamplingParams
    from modalities.text import load_tokenizer
    folder = ROOT / "assets/text-shakespeare"
    model, tok = OmniModel.from_pretrained(folder), load_tokenizer(folder)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_tokens, seed=seed, stop_strings=stop or [])
    return "".join(stream_text(model, tok, prompt, params))


def test_completion_and_stream_match_the_solo_run(client):
    r = client.completions.create(model="text-shakespeare", prompt="ROMEO:\n", max_tokens=40, temperature=0.8,
                                  seed=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40
    assert r.usage.prompt_tokens == 7
    solo = _solo_text("ROMEO:\n", 40, 0.8, 3)
    assert r.choices[0].text == solo
    chunks = list(client.completions.create(model="text-shakespeare", prompt="ROMEO:\n", max_tokens=40,
                                            temperature=0.8, seed=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == solo and len(chunks) > 10
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_and_n(client):
    r = client.completions.create(model="text-shakespeare", prompt="KING:\n", max_tokens=60, temperature=0.0,
                                  stop=["\n"])
    assert r.choices[0].finish_reason == "stop" and "\n" not in r.choices[0].text
    assert r.choices[0].text == _solo_text("KING:\n", 60, 0.0, None, ["\n"])
    r = client.completions.create(model="text-shakespeare", prompt=["A", "B"], n=3, max_tokens=8, seed=0)
    assert len(r.choices) == 6 and [c.index for c in r.choices] == list(range(6))
    assert len({c.text for c in r.choices[:3]}) > 1            # choice i samples with seed + i


def test_concurrent_streams_equal_their_solo_runs(client):
    """16 seeded streams at once (they share batched steps) == each request alone."""
    prompts = [f"{w}:\n" for w in ("ROMEO", "JULIET", "KING", "QUEEN")] * 4

    def one(i):
        s = client.completions.create(model="text-shakespeare", prompt=prompts[i], max_tokens=30 + i,
                                      temperature=0.9, top_p=0.95, seed=i, stream=True)
        return "".join(c.choices[0].text for c in s)

    with ThreadPoolExecutor(16) as ex:
        batched = list(ex.map(one, range(16)))
    from apps.text.model import stream_text
    from backbone.container import OmniModel
    from backbone.sampling import SamplingParams
    from modalities.text import load_tokenizer
    folder = ROOT / "assets/text-shakespeare"
    model, tok = OmniModel.from_pretrained(folder), load_tokenizer(folder)
    solo = ["".join(stream_text(model, tok, prompts[i], SamplingParams(temperature=0.9, top_p=0.95,
                                                                        max_new_tokens=30 + i, seed=i)))
            for i in range(16)]
    assert batched == solo


def test_cif_completion(client):
    r = client.completions.create(model="crystal-cif", prompt="data_NaCl\n", max_tokens=40, temperature=0.0)
    assert "_cell_length_a" in r.choices[0].text


def test_images(client):
    im = client.images.generate(model="t2i-shapes", prompt="a red circle", n=2, response_format="b64_json")
    from PIL import Image
    imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in im.data]
    assert [i.size for i in imgs] == [(32, 32)] * 2
    a = client.images.generate(model="t2i-shapes", prompt="a red circle", extra_body={"seed": 5, "steps": 10})
    b = client.images.generate(model="t2i-shapes", prompt="a red circle", extra_body={"seed": 5, "steps": 10})
    assert a.data[0].b64_json == b.data[0].b64_json            # a seeded request runs alone
    assert a.data[0].revised_prompt is None                    # no plan: not a layout checkpoint
    c = client.images.generate(model="t2i-shapes", prompt="a red circle", extra_body={"seed": 5, "steps": 10,
                                                                                     "rerank": 2})
    assert len(c.data) == 1                                    # best of 2, one image


def test_speech(client):
    r = client.audio.speech.create(model="speech-tts", input="Hello there.", voice="alloy", response_format="wav")
    wav, sr = sf.read(io.BytesIO(r.content))
    assert sr == 16000 and len(wav) > 0.3 * sr and np.isfinite(wav).all()


def test_forecast_endpoint(server):
    x = (np.sin(np.arange(200) / 24 * 2 * np.pi) * 3 + 10).tolist()
    r = httpx.post(server + "/v1/forecast", json={"series": [x], "horizon": 12}, timeout=60)
    assert r.status_code == 200 and np.array(r.json()["forecast"]).shape == (1, 12, 3)


@pytest.mark.parametrize("kw, status, words", [
    (dict(model="no-such-model", prompt="x"), 404, "does not exist"),
    (dict(model="text-shakespeare", prompt=""), 400, "empty"),
    (dict(model="text-shakespeare", prompt="x" * 200), 400, "context"),
    (dict(model="text-shakespeare", prompt="\u00e9t\u00e9"), 400, "vocabulary"),
    (dict(model="text-shakespeare", prompt="x", max_tokens=-1), 400, "max_tokens"),
    (dict(model="text-shakespeare", prompt="x", max_tokens=10**9), 400, "limit"),
    (dict(model="text-shakespeare", prompt="x", n=1000), 400, "n:"),
    (dict(model="text-shakespeare", prompt="x", temperature=50), 400, "temperature"),
    (dict(model="text-shakespeare", prompt="x", logprobs=2), 400, "not supported"),
    (dict(model="forecast-zeroshot", prompt="x"), 400, "forecast model"),
])
def test_completion_errors_in_openai_shape(client, kw, status, words):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(**kw)
    assert e.value.status_code == status
    err = e.value.body
    assert set(err) == {"message", "type", "param", "code"} and words in err["message"], err


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/completions", b'{"model": "text-shakespeare", "prompt": ', 400, "not valid JSON"),
    ("/v1/completions", b'{"model": "text-shakespeare", "prompt": "\xff\xfe"}', 400, "not valid JSON"),
    ("/v1/completions", b'{"model": "text-shakespeare", "prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("/v1/completions", b'{"model": "text-shakespeare", "prompt": "x", "max_tokens": "16"}', 400, "integer"),
    ("/v1/completions", b'{"model": "text-shakespeare", "prompt": "x", "bogus": 1}', 400, "not a known field"),
    ("/v1/completions", b'[1, 2]', 400, "valid dictionary"),
    ("/v1/images/generations", b'{"prompt": "a red circle", "n": 99}', 400, "n:"),
    ("/v1/images/generations", b'{"prompt": "a zorblax"}', 400, "zorblax"),
    ("/v1/images/generations", b'{"prompt": "a red circle", "response_format": "url"}', 400, "response_format"),
    ("/v1/images/generations", b'{"prompt": "a red circle", "size": "1024x1024"}', 400, "32x32"),
    ("/v1/images/generations", b'{"prompt": "a red circle", "rerank": 9}', 400, "rerank"),
    ("/v1/audio/speech", b'{"input": "", "voice": "alloy"}', 400, "input"),
    ("/v1/audio/speech", b'{"input": "hi", "voice": "bob"}', 400, "unknown voice"),
    ("/v1/audio/speech", b'{"input": "hi", "voice": "alloy", "response_format": "mp3"}', 400, "response_format"),
    ("/v1/audio/speech", b'{"input": "' + b"a" * 2000 + b'", "voice": "alloy"}', 400, "1000"),
    ("/v1/forecast", b'{"series": [[1, NaN, 3]], "horizon": 5}', 422, "series 0 point 1"),
    ("/v1/forecast", b'{"series": [[1, Infinity]], "horizon": 5}', 422, "series 0 point 1"),
    ("/v1/forecast", b'{"series": [[1, 1e999]], "horizon": 5}', 422, "series 0 point 1"),
    ("/v1/forecast", b'{"series": [[1, 1e300]], "horizon": 5}', 422, "beyond"),
    ("/v1/forecast", b'{"series": [[1, true]], "horizon": 5}', 422, "series"),
    ("/v1/forecast", b'{"series": [[1, 2]], "horizon": "96"}', 422, "horizon"),
    ("/v1/forecast", b'{"series": [[1, 2]], "horizon": 5, "junk": "' + b"x" * 1000 + b'"}', 422, "not a known"),
])
def test_bad_bodies_get_a_clear_4xx_without_echo(server, path, body, status, words):
    r = httpx.post(server + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    assert len(r.content) < 600                                 # the input is never echoed back


def test_body_cap_413_and_still_healthy(server):
    big = b'{"series": [[' + b"1.0," * 200_000 + b'1.0]], "horizon": 5}'       # ~0.8 MB > 0.5 MB cap
    r = httpx.post(server + "/v1/forecast", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():                                                # no Content-Length: counted as it arrives
        yield b'{"series": [['
        for _ in range(100):
            yield b"1.0," * 2000
        yield b'1.0]], "horizon": 5}'
    r = httpx.post(server + "/v1/forecast", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_disconnected_stream_is_dropped_from_the_batch(server):
    body = {"model": "text-shakespeare", "prompt": "A", "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    for _ in range(50):                                          # the row is freed at a step boundary
        if httpx.get(server + "/health").json()["models"]["text-shakespeare"]["running"] == 0:
            break
        time.sleep(0.1)
    assert httpx.get(server + "/health").json()["models"]["text-shakespeare"]["running"] == 0


def test_full_queue_gets_429_with_retry_after():
    proc, base = start(["--model", "assets/text-shakespeare", "--max-rows", "1", "--max-queue", "1"])
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        results = []

        def one():
            try:
                c.completions.create(model="text-shakespeare", prompt="A", max_tokens=400)
                results.append(200)
            except openai.RateLimitError as e:
                results.append((429, e.response.headers.get("retry-after"), e.body["type"]))
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(200) >= 1
        refused = [r for r in results if r != 200]
        assert refused and all(r[0] == 429 and r[1] and r[2] == "rate_limit_exceeded" for r in refused)
        assert httpx.get(base + "/health").json()["status"] == "ok"
    finally:
        stop(proc)


def test_bad_flags_are_one_line_errors():
    r = subprocess.run([sys.executable, "-m", "apps.cli", "serve", "--model", "assets/speech-codec"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "serves" in r.stderr
    r = subprocess.run([sys.executable, "-m", "apps.cli", "serve", "--max-rows", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--max-rows" in r.stderr


def test_engine_process_matches_solo_and_survives_losing_its_child():
    """The token engine in a child process: same tokens as alone; when the child dies, open requests
    end with an error and new ones are refused (the server answers 503), never a hang."""
    import queue as q_
    from apps.api.engine_proc import EngineProcess
    from backbone.container import OmniModel
    from backbone.generate import TextSchedule, run
    from backbone.sampling import SamplingParams
    folder = str(ROOT / "assets/text-shakespeare")
    model = OmniModel.from_pretrained(folder)
    reqs = [([1 + i, 20 + i, 30], SamplingParams(temperature=0.9, max_new_tokens=25, seed=i)) for i in range(5)]
    solo = [[int(x[0]) for x in run(model, TextSchedule(model, [p], s))] for p, s in reqs]
    eng = EngineProcess(folder, max_rows=4, max_queue=4, name="test-engine")
    try:
        outs, ends = [[] for _ in reqs], q_.Queue()
        hs = [eng.submit(p, s, 60, outs[i].append, ends.put) for i, (p, s) in enumerate(reqs)]
        for _ in hs:
            ends.get(timeout=60)
        assert outs == solo and all(h.reason == "done" for h in hs)
        h = eng.submit([1, 2], SamplingParams(max_new_tokens=1000), 60, lambda t: None, ends.put)
        eng.proc.kill()
        assert ends.get(timeout=30) is h and h.reason == "error"
        with pytest.raises(RuntimeError):
            eng.submit([1], SamplingParams(max_new_tokens=5), 60, lambda t: None, ends.put)
    finally:
        eng.stop()

"""Property-based fuzzing (hypothesis) of what users and clients control (issue 21): every CLI
command's arguments, the HTTP API's bodies, and checkpoint folders. The property: each input ends in
success or a clean error (exit status 2 with one line / an HTTP 4xx in OpenAI's error shape / a
ValueError), within a time bound, with no traceback and no stray files."""
import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.cli import build_parser, main

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
NASTY = st.one_of(
    st.sampled_from(["", "-1", "0", "1", "nan", "inf", "-inf", "1e999", "1e308", "-0", "abc", "é", "☃",
                     "0x10", "1_000", " 5 ", "true", "[]", "{}", "../..", "/dev/null", "a" * 300]),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
# commands that start a server or the whole demo are parsed only, not run
SERVERS = {"demo", "serve", "serve-forecast"}


def _commands():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def _argv(draw, name, parser, tmp: Path):
    """A command line for one command: its positionals and a random subset of its options, each
    with a nasty value; every model/config/input path points at nothing, so no real work starts."""
    argv = [name]
    for a in parser._actions:
        if a.option_strings or a.dest == "help":
            continue
        argv.append(draw(st.sampled_from(list(a.choices))) if a.choices else draw(NASTY))
    opts = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    for a in draw(st.lists(st.sampled_from(opts), max_size=4, unique_by=lambda a: a.dest)) if opts else []:
        flag = a.option_strings[-1]
        if a.nargs == 0:
            argv.append(flag)
        elif a.dest in ("out", "run_dir"):
            argv += [flag, str(tmp / draw(st.sampled_from(["o.csv", "o.png", "o.wav", "dir/", "o"])))]
        else:
            argv += [flag, draw(st.sampled_from(list(a.choices))) if a.choices else draw(NASTY)]
    for flag, dest in (("--model", "model"), ("--config", "config")):   # never the shipped checkpoints
        if any(a.dest == dest for a in opts) and flag not in argv:
            argv += [flag, str(tmp / "no-such-thing")]
    return argv


@pytest.mark.parametrize("name", sorted(_commands()))
def test_cli_arguments_end_cleanly(name, tmp_path):
    parser = _commands()[name]

    @FUZZ
    @given(st.data())
    def run(data):
        work = tmp_path / "w"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        argv = _argv(data.draw, name, parser, work)
        err = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                if name in SERVERS:
                    build_parser().parse_args(argv)
                    code = 0
                else:
                    code = main(argv)
            except SystemExit as e:               # argparse: 2 for a bad argument, 0 for --help
                code = e.code
        text = err.getvalue()
        assert code in (0, 2, None), (argv, code, text)
        assert "Traceback" not in text, (argv, text)
        assert time.monotonic() - t0 < 30, argv
        assert not list(work.rglob("*.tmp")), argv
    run()


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)
FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stop", "seed", "input",
          "voice", "series", "horizon", "quantiles", "freq", "timestamps", "size", "steps", "cfg", "response_format"]


@pytest.fixture(scope="module")
def api():
    from fastapi.testclient import TestClient

    from apps.api.server import Limits, build_app
    return TestClient(build_app({}, Limits(max_body_bytes=20_000)), raise_server_exceptions=False)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/images/generations", "/v1/audio/speech", "/v1/forecast"])
def test_api_bodies_end_in_a_clean_4xx(api, path):
    @FUZZ
    @given(st.one_of(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6), JSON.map(lambda x: x),
                     st.binary(max_size=64)))
    def run(body):
        raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
        r = api.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
        assert len(r.content) < 1500, r.text                 # never the input echoed back
    run()


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory, make_tiny_lm):
    from modalities.text import CharTokenizer
    folder = tmp_path_factory.mktemp("fuzz-ckpt") / "ckpt"
    make_tiny_lm(16).save_pretrained(folder, tokenizer=CharTokenizer.train("abcdefghijklmno"))
    return folder


def test_mutated_checkpoints_load_or_fail_cleanly(good_ckpt, tmp_path):
    from backbone.container import OmniModel
    weights = (good_ckpt / "model.safetensors").read_bytes()
    n = int.from_bytes(weights[:8], "little")
    config = json.loads((good_ckpt / "config.json").read_text())

    @FUZZ
    @given(st.data())
    def run(data):
        folder = tmp_path / "c"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good_ckpt, folder)
        how = data.draw(st.sampled_from(["header-bytes", "truncate", "config-value", "config-key"]))
        if how == "header-bytes":                           # flip bytes inside the length + JSON header
            b = bytearray(weights)
            for i in data.draw(st.lists(st.integers(0, 8 + n - 1), min_size=1, max_size=4)):
                b[i] = data.draw(st.integers(0, 255))
            (folder / "model.safetensors").write_bytes(bytes(b))
        elif how == "truncate":
            (folder / "model.safetensors").write_bytes(weights[:data.draw(st.integers(0, len(weights) - 1))])
        else:
            cfg = json.loads(json.dumps(config))
            key = data.draw(st.sampled_from(sorted(cfg["backbone"]))) if how == "config-value" else \
                data.draw(st.text(min_size=1, max_size=8))
            cfg["backbone"][key] = data.draw(JSON)
            (folder / "config.json").write_text(json.dumps(cfg))
        t0 = time.monotonic()
        try:
            OmniModel.from_pretrained(folder)
        except (ValueError, FileNotFoundError):
            pass
        assert time.monotonic() - t0 < 20
    run()

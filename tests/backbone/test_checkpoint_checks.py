"""Loading a broken checkpoint is a one-line ValueError naming the problem (issue 21), found from
config.json and the safetensors header before any weight is allocated."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from backbone.container import OmniModel
from modalities.text import CharTokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ckpt(tmp_path, tiny_model) -> Path:
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder, tokenizer=CharTokenizer.train("abcdefgh ROMEO:\n"))
    return folder


def _edit_config(folder: Path, fn):
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder: Path, fn):
    w = load_file(folder / "model.safetensors")
    fn(w)
    save_file(w, folder / "model.safetensors")


def test_a_good_checkpoint_loads(ckpt, tiny_model):
    m = OmniModel.from_pretrained(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), tiny_model.state_dict().values()))


@pytest.mark.parametrize("break_it, words", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]), "truncated"),
    (lambda f: (f / "model.safetensors").write_bytes(b"not a safetensors file at all"), "not a safetensors file"),
    (lambda f: (f / "model.safetensors").write_bytes(b""), "not a safetensors file"),
    (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda f: (f / "config.json").write_text("[1, 2]"), "'backbone' object"),
    (lambda f: _edit_config(f, lambda c: c["backbone"].update(n_layer="four")), "does not describe"),
    (lambda f: _edit_config(f, lambda c: c["backbone"].update(bogus=1)), "does not describe"),
    (lambda f: _edit_config(f, lambda c: c["heads"]["lm"].update({"class": "heads.nope.Nope"})), "does not describe"),
    (lambda f: _edit_config(f, lambda c: c["heads"]["lm"].update({"class": "os.system"})), "refusing to import"),
    (lambda f: _edit_config(f, lambda c: c["backbone"].update(dim=1_000_000)), "wrong shape"),
    (lambda f: _edit_config(f, lambda c: c["backbone"].update(n_layer=10_000)), "missing"),
    (lambda f: _edit_weights(f, lambda w: w.pop(next(k for k in w if "layers.1" in k))), "missing"),
    (lambda f: _edit_weights(f, lambda w: w.update(extra=torch.zeros(3))), "not in the config's model"),
    (lambda f: _edit_weights(f, lambda w: w.update({k: torch.zeros(2, 2) for k in list(w)[:1]})), "wrong shape"),
    (lambda f: _edit_weights(f, lambda w: w[next(iter(w))].view(-1).__setitem__(0, float("nan"))), "NaN"),
])
def test_broken_checkpoints_are_clear_errors(ckpt, break_it, words):
    break_it(ckpt)
    with pytest.raises(ValueError, match=words):
        OmniModel.from_pretrained(ckpt)


def test_cli_on_a_broken_checkpoint_is_one_line(ckpt):
    _edit_config(ckpt, lambda c: c["backbone"].update(dim=1_000_000))
    r = subprocess.run([sys.executable, "-m", "apps.cli", "generate", "--model", str(ckpt), "abc"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "does not match config.json" in r.stderr, r.stderr

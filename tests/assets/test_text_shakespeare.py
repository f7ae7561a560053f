"""Quality of the shipped char-level Shakespeare model (assets/text-shakespeare), fixed seeds."""
import json
from pathlib import Path

import pytest
import torch

from apps.text.model import stream_text
from backbone.container import OmniModel
from backbone.sampling import SamplingParams
from modalities.text import load_tokenizer
from quality_utils import val_loss_on_windows  # tests/assets/quality_utils.py

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "text-shakespeare"
DATA = ROOT / "../shared/data/tinyshakespeare.txt"


@pytest.fixture(scope="module")
def shipped():
    return OmniModel.from_pretrained(ASSET), load_tokenizer(ASSET)


def test_config_records_how_it_was_trained(shipped):
    meta = json.loads((ASSET / "config.json").read_text())["meta"]
    assert meta["train_command"].startswith("omniar train text --config configs/text_shakespeare.yaml")
    assert (ASSET / "model.safetensors").stat().st_size < 20 * 2**20


def test_val_loss_below_threshold(shipped):
    """nanoGPT's CPU recipe reaches 1.88 nats/char; the shipped model must stay well below it."""
    model, tok = shipped
    text = DATA.read_text()
    ids = torch.tensor(tok.encode(text[int(len(text) * 0.9):]))
    assert val_loss_on_windows(model, ids) < 1.80


def test_sampled_text_looks_like_a_play(shipped):
    model, tok = shipped
    out = "".join(stream_text(model, tok, "ROMEO:\n", SamplingParams(temperature=0.8, top_k=40,
                                                                      max_new_tokens=300, seed=1234)))
    assert len(out) == 300
    words = out.split()
    # real English-ish words, line breaks and speaker turns, not noise
    common = {"the", "and", "to", "of", "I", "a", "my", "that", "you", "is", "in", "not", "me", "with", "be"}
    assert sum(w.strip(",.;:!?'") in common for w in words) >= 5
    assert out.count("\n") >= 3
    assert any(line.rstrip().endswith(":") and line.strip()[:1].isupper() for line in out.splitlines())

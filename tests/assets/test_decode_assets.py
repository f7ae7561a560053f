"""The shipped draft models and draft heads: exact greedy output and acceptance floors
(fixed prompts, greedy, so every number here is deterministic)."""
import json
from pathlib import Path

import pytest
import torch

from backbone.container import OmniModel
from backbone.drafters import HeadDrafter, ModelDrafter
from backbone.generate import generate
from backbone.sampling import SamplingParams
from backbone.speculative import generate_drafted
from modalities.text import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
CASES = {  # model folder, prompts, new tokens, acceptance floors (measured values in the comments)
    "crystal-cif": (["data_Sr1Ti1O3\n", "data_C8\n"], 200, {"head": 0.42, "model": 0.54}),        # 0.478, 0.601
    "text-fortunes-bpe": (["The only way to", "Never trust a"], 80, {"head": 0.42, "model": 0.33}),  # 0.475, 0.375
}


def rows(stream):
    out = torch.stack(list(stream), 1)
    return [[int(t) for t in r if t >= 0] for r in out]


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    folder = ROOT / "assets" / request.param
    model, tok = OmniModel.from_pretrained(folder), load_tokenizer(folder)
    draft = OmniModel.from_pretrained(ROOT / "assets" / f"{request.param}-draft")
    prompts, n, floors = CASES[request.param]
    stop = [tok.token_id("\n\n")] if request.param == "crystal-cif" else []
    params = SamplingParams(temperature=0, max_new_tokens=n, stop_tokens=stop)
    ids = [tok.encode(p) for p in prompts]
    with torch.inference_mode():
        plain = rows(generate(model, ids, params))
    return dict(name=request.param, folder=folder, model=model, draft=draft, ids=ids, params=params,
                plain=plain, floors=floors)


@pytest.mark.parametrize("kind", ["head", "model"])
def test_shipped_drafters_are_exact_and_accept_enough(case, kind):
    drafter = HeadDrafter(case["model"]) if kind == "head" else ModelDrafter(case["draft"])
    st = {}
    with torch.inference_mode():
        out = rows(generate_drafted(case["model"], case["ids"], case["params"], drafter, gamma=4, stats=st))
    assert out == case["plain"]
    assert st["accepted"] / st["drafted"] >= case["floors"][kind], st


def test_draft_parts_record_how_they_were_made(case):
    meta = json.loads((case["folder"] / "config.json").read_text())["meta"]
    assert meta["draft_head_command"].startswith("omniar train draft-head --config configs/")
    draft_meta = json.loads((ROOT / "assets" / f"{case['name']}-draft" / "config.json").read_text())["meta"]
    assert "_draft.yaml" in draft_meta["train_command"]
    assert case["draft"].args.vocab_size == case["model"].args.vocab_size
    for folder in (case["folder"], ROOT / "assets" / f"{case['name']}-draft"):
        assert sum(f.stat().st_size for f in folder.iterdir()) < 20 * 2**20

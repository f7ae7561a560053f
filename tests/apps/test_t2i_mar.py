"""The masked (MAR) order of apps/t2i/mar.py: training rows, the cosine schedule, the cached
block pass agreeing with the training forward, the schedule's passes, and a tiny trained model in
both directions."""
import pytest
import torch

from apps.t2i import model as t2i
from apps.t2i import recipe
from apps.t2i.data import BOI, BOS, WordVocab, build_batch, grammar_words
from apps.t2i.mar import MaskedSchedule, masked_rows, masked_schedule
from backbone.generate import Generation, Prompt, decode_block, prefill
from backbone.masks import build_mask
from modalities.image import PatchTokenizer
from tests.apps.test_t2i import tiny_cfg


@pytest.fixture(scope="module")
def mar_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i_mar")
    cfg = tiny_cfg(out)
    cfg["order"] = "mar"
    recipe.run(cfg, out=str(out / "model"))
    return out / "model"


def test_masked_batch_layout():
    torch.manual_seed(0)
    patches = torch.randn(3, 64, 48)
    b = build_batch(masked_rows([[10, 11], [12], [13, 14, 15]], patches, ["gen", "cap", "gen"],
                                torch.Generator().manual_seed(0)))
    seq, index, masked = b["adapter_inputs"]["image"]
    sel, tgt = b["targets"]["image"]
    assert torch.equal(sel, masked) and masked[1].sum() == 0 and masked[0].sum() >= 1 and masked[2].sum() >= 1
    assert (masked & ~b["embed_mask"]).sum() == 0                            # only image slots are masked
    assert torch.equal(tgt, seq[masked])                                    # each masked slot predicts itself
    assert (b["targets"]["lm"][b["embed_mask"]] == -100).all()
    m = b["mask"][:, 0]                                                      # (B, T, T)
    assert m[0, 4, 60] and m[0, 60, 4] and m[0, 4, 3] and not m[0, 3, 4]    # image bidirectional, text causal
    assert not m[0, 60, 68]                                                  # the image never sees <eoi>
    assert m[1, 67, 5] and not m[1, 5, 67]                                   # a caption reads the whole image
    part = recipe._rows(b, slice(2, 3))
    assert torch.equal(part["targets"]["image"][1], patches[2][masked[2, 5:69]]) and part["mask"].shape[0] == 1


def test_masked_schedule_is_cosine_and_reveals_every_pass():
    s = masked_schedule(64, 8)
    assert len(s) == 8 and s[-1] == 0 and all(a > b for a, b in zip([64] + s, s))
    assert s == [62, 59, 53, 45, 35, 24, 12, 0]  # floor(64 cos(pi/2 k/8)): few patches first, many at the end
    assert masked_schedule(64, 64) == list(range(63, -1, -1)) and masked_schedule(64, 1) == [0]
    with pytest.raises(ValueError, match="passes"):
        masked_schedule(64, 65)


def test_cached_block_pass_matches_the_training_forward():
    torch.manual_seed(0)
    vocab, tok = WordVocab(grammar_words()), PatchTokenizer()
    model = recipe.build_model(_cfg_mar(), vocab, tok).eval()
    patches = torch.randn(2, 64, 48)
    b = build_batch(masked_rows([[10, 11, 12], [13]], patches, ["gen", "gen"], torch.Generator().manual_seed(1)))
    with torch.no_grad():
        full = model(input_ids=b["input_ids"], adapter_inputs=b["adapter_inputs"], embed_mask=b["embed_mask"],
                     mask=b["mask"])                                                    # (B, T, D)
    _, _, masked = b["adapter_inputs"]["image"]
    for r, P in ((0, 5), (1, 3)):  # one row at a time: <bos> caption <boi>, then the block
        ids = b["input_ids"][r:r + 1, :P]
        h, state = prefill(model, ids, torch.ones_like(ids), P + 64)
        emb = model.adapters["image"]((patches[r:r + 1], torch.arange(64)[None], masked[r:r + 1, P:P + 64]))
        hb = decode_block(model, emb, state)
        torch.testing.assert_close(hb[0], full[r, P:P + 64], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(decode_block(model, emb, state, commit=True), hb)   # rewriting is idempotent
        assert state.next_slot == P + 64


def _cfg_mar():
    from pathlib import Path
    cfg = tiny_cfg(Path("/nonexistent"))
    cfg["order"] = "mar"
    return cfg


def test_prefill_block_ids_match_a_masked_forward():
    torch.manual_seed(0)
    model = recipe.build_model(_cfg_mar(), WordVocab(grammar_words()), PatchTokenizer()).eval()
    ids = torch.tensor([[BOS, BOI] + [10] * 6 + [11, 12]])
    block = torch.tensor([0, 1, 2, 2, 2, 2, 2, 2, 8, 9])
    with torch.no_grad():
        full = model.backbone(input_ids=ids, mask=build_mask(block, block))
        h, _ = prefill(model, ids, torch.ones_like(ids), 12, block_ids=block)
    torch.testing.assert_close(h, full[:, -1], atol=1e-5, rtol=1e-4)


def test_mar_model_generates_and_captions(mar_model):
    m = t2i.ImageModel.from_pretrained(mar_model)
    assert m.order == "mar" and m.model.adapters["image"].mask is not None
    prompts = ["a red circle", "two blue squares"]
    x = m.text_to_image(prompts, steps=2, cfg=3.0, seed=1, passes=4)
    assert x.shape == (2, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, m.text_to_image(prompts, steps=2, cfg=3.0, seed=1, passes=4))
    assert not torch.equal(x, m.text_to_image(prompts, steps=2, cfg=3.0, seed=1, passes=8))
    assert len(m.caption(x)) == 2
    with pytest.raises(ValueError, match="passes"):
        m.text_to_image(prompts, steps=2, passes=0)
    segs = m.generate("", max_words=4, steps=2)
    assert all(isinstance(s, (str, torch.Tensor)) for s in segs)


@pytest.mark.parametrize("commit", [False, True])
def test_masked_schedule_rewrites_its_block_then_commits(commit):
    """Over the one loop: a first fully masked pass before any sample, one head call per pass
    revealing the cosine schedule's share, the block rewritten in place; with ``commit`` a last
    pass writes the finished block into the cache, so text can follow."""
    torch.manual_seed(0)
    model = recipe.build_model(_cfg_mar(), WordVocab(grammar_words()), PatchTokenizer()).eval()
    ids = torch.tensor([[BOS, 10, BOI]])
    s = MaskedSchedule(model, 1, {"steps": 1}, torch.Generator().manual_seed(0),
                       prompt=Prompt(ids, torch.ones_like(ids), 3 + 64), commit=commit, passes=4)
    gen = Generation(model, s)
    revealed = []
    while (x := gen.step()) is not None:
        revealed.append(x.shape[0])
    assert revealed == [64 - 59, 59 - 45, 45 - 24, 24] and masked_schedule(64, 4) == [59, 45, 24, 0]
    assert s.finished and s.known.all() and s.result().shape == (1, 64, 48)
    assert gen.state.next_slot == 3 + 64 * commit

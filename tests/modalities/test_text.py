import pytest
import torch

from backbone.masks import MaskSpec
from backbone.sequence import Segment, pack
from modalities.text import (BPETokenizer, CharTokenizer, TextLMTask, TokenStream, load_tokenizer, make_tokenizer,
                             pack_windows)

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 the the the quick brown fox.\n") * 3

TRICKY = ["", "hello world", "  leading and trailing  ", "\n\n\t\r\n", "a\x00b\x00",
          "\U0001F600\U0001F469\u200d\U0001F469\u200d\U0001F467 \U0001F1EB\U0001F1F7",
          "\u4e2d\u6587\u5b57\u7b26 \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
          "e\u0301 a\u0308\u0304 Z\u0351\u0352\u0353", "\ufffd\ufeff\u00a0", "x" * 50]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS.splitlines(keepends=True), vocab_size=300, special_tokens=["<|eot|>"])


# ---- char tokenizer ---------------------------------------------------------------------
def test_char_round_trip():
    tok = CharTokenizer.train("hello world\n", special_tokens=["<eot>"])
    assert tok.chars == ["\n", " ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 9 + 1 and tok.token_id("<eot>") == 9
    ids = tok.encode("hello\nworld")
    assert ids == [tok.stoi[c] for c in "hello\nworld"]
    assert tok.decode(ids) == "hello\nworld"


def test_char_unknown_chars_listed():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError) as e:
        tok.encode("abXcYX")
    assert "['X', 'Y']" in str(e.value)


# ---- byte-level BPE ---------------------------------------------------------------------
def test_bpe_vocab_and_merges(bpe):
    assert 256 < bpe.vocab_size <= 300
    assert len(bpe.encode("the quick brown fox")) < len("the quick brown fox".encode())  # merges learnt


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trip_exact(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_special_token(bpe):
    i = bpe.token_id("<|eot|>")
    assert bpe.decode([*bpe.encode("hi"), i]) == "hi<|eot|>"
    with pytest.raises(KeyError):
        bpe.token_id("<|nope|>")


def test_make_tokenizer():
    assert make_tokenizer("char", "abca").vocab_size == 3
    assert isinstance(make_tokenizer("bpe", CORPUS, vocab_size=280), BPETokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        make_tokenizer("wordpiece", CORPUS)


# ---- save / load ------------------------------------------------------------------------
def test_save_load_char(tmp_path):
    tok = CharTokenizer.train("z\u00e9\U0001F600a\n", special_tokens=["<eot>"])
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer)
    assert back.itos == tok.itos
    assert back.encode("a\U0001F600\n") == tok.encode("a\U0001F600\n")


def test_save_load_bpe(bpe, tmp_path):
    bpe.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, BPETokenizer) and back.vocab_size == bpe.vocab_size
    for text in TRICKY:
        assert back.encode(text) == bpe.encode(text)
        assert back.decode(back.encode(text)) == text


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_model_folder_with_tokenizer(tiny_model, tmp_path):
    tok = CharTokenizer.train("abc")
    tiny_model.save_pretrained(tmp_path, tokenizer=tok)
    assert load_tokenizer(tmp_path).itos == ["a", "b", "c"]


# ---- TokenStream ------------------------------------------------------------------------
def test_token_stream_deterministic():
    ids = torch.arange(1000)
    s1, s2 = TokenStream(ids, block_size=16, seed=3), TokenStream(ids, block_size=16, seed=3)
    a = s1.batch(step=7, batch_size=8)
    s1.batch(step=8, batch_size=8)  # no hidden state between calls
    b = s1.batch(step=7, batch_size=8)
    c = s2.batch(step=7, batch_size=8)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["input_ids"], c["input_ids"])
    assert not torch.equal(a["input_ids"], s1.batch(step=8, batch_size=8)["input_ids"])
    assert not torch.equal(a["input_ids"], TokenStream(ids, 16, seed=4).batch(7, 8)["input_ids"])
    assert not torch.equal(a["input_ids"], s1.batch(7, 8, micro=1)["input_ids"])
    # targets are inputs shifted by one (ids are arange, so values are offsets)
    assert a["input_ids"].shape == (8, 16)
    assert torch.equal(a["targets"]["lm"], a["input_ids"] + 1)


def test_token_stream_rows_are_slices_of_global_batch():
    st = TokenStream(torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(0)), 8, seed=1)
    full = st.batch(step=2, batch_size=6)
    parts = [st.batch(step=2, batch_size=6, rows=slice(r * 2, r * 2 + 2)) for r in range(3)]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), full["input_ids"])
    assert torch.equal(torch.cat([p["targets"]["lm"] for p in parts]), full["targets"]["lm"])


def test_token_stream_too_short():
    with pytest.raises(ValueError, match="shorter"):
        TokenStream(torch.arange(10), block_size=9)


def test_eval_batches_fixed():
    st = TokenStream(torch.arange(300), 8)
    a, b = st.eval_batches(2, 4), st.eval_batches(2, 4)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["input_ids"], a[1]["input_ids"])


def test_windows_pack_as_segments_do():
    """TokenStream batches are packed Sequences: pack_windows gives what pack builds from one
    token Segment per window (inputs w[:-1], LM targets w[1:]), in a few tensor ops."""
    win = torch.randint(0, 50, (6, 17), generator=torch.Generator().manual_seed(0))
    fast, ref = pack_windows(win), pack([[Segment(w, head="lm")] for w in win], trim_last=True)
    for f in ("ids", "attention_mask", "positions"):
        assert torch.equal(getattr(fast, f), getattr(ref, f)), f
    assert (fast.embed_mask, fast.adapter_inputs, fast.block_ids) == (ref.embed_mask, ref.adapter_inputs, ref.block_ids)
    assert fast.targets.keys() == ref.targets.keys() and torch.equal(fast.targets["lm"], ref.targets["lm"])
    b, rb = fast.batch(), ref.batch()
    assert b.keys() == rb.keys() == {"input_ids", "targets"}
    assert torch.equal(b["input_ids"], win[:, :-1]) and torch.equal(b["targets"]["lm"], win[:, 1:])
    st = TokenStream(torch.arange(1000) % 97, 16, seed=2)
    x = st.batch(3, 4)
    assert torch.equal(x["targets"]["lm"][:, :-1], x["input_ids"][:, 1:])


def test_token_stream_no_seed_collisions():
    # regression: seeds came from hash((seed, step, micro)) and hash(-1) == hash(-2) in CPython,
    # so eval batches 0 and 1 were identical
    st = TokenStream(torch.arange(100_000), 4)
    starts = {tuple(st.batch(s, 2, m)["input_ids"][:, 0].tolist()) for s in range(-20, 20) for m in range(3)}
    assert len(starts) == 40 * 3


# ---- training objectives of the ablations (issue 8) ------------------------------------------------
def objective_task(**objective):
    ids = torch.arange(400) % 50
    return TextLMTask(ids, ids, block_size=16, batch_size=64, eval_batches=2, seed=3,
                      objective=objective, mask_id=50)


def test_meap_masks_a_fraction_of_inputs_and_keeps_targets():
    plain, meap = objective_task().train_batch(5, 0, slice(None)), objective_task(meap=0.25).train_batch(5, 0, slice(None))
    x = meap["input_ids"]
    hidden = x == 50
    assert 0.18 < hidden.float().mean() < 0.32
    assert torch.equal(x[~hidden], plain["input_ids"][~hidden])
    assert torch.equal(meap["targets"]["lm"], plain["targets"]["lm"])
    assert torch.equal(x, objective_task(meap=0.25).train_batch(5, 0, slice(None))["input_ids"])  # replays exactly


def test_prefix_lm_batches_hide_the_prefix_from_the_loss():
    b = objective_task(prefix_lm=True).train_batch(2, 0, slice(None))
    P, y = b["mask"].prefix_len, b["targets"]["lm"]
    assert isinstance(b["mask"], MaskSpec) and P.shape == (64,) and P.min() >= 1 and P.max() <= 15
    for row in range(64):
        p = int(P[row])
        assert (y[row, :p - 1] == -100).all() and (y[row, p - 1:] != -100).all()
    ev = objective_task(prefix_lm=True).eval_batches()[0]
    assert (ev["mask"].prefix_len == 8).all()


def test_scheduled_sampling_probability_ramps():
    t = objective_task(scheduled_sampling={"max_prob": 0.3, "ramp_steps": 10})
    assert [t.train_batch(s, 0, slice(None))["scheduled_sampling"] for s in (0, 5, 10, 50)] == \
        pytest.approx([0.0, 0.15, 0.3, 0.3])


def test_objective_errors():
    ids = torch.arange(100) % 10
    with pytest.raises(ValueError, match="unknown objective"):
        TextLMTask(ids, ids, 8, 4, objective={"mtp": 2})
    with pytest.raises(ValueError, match="mask token"):
        TextLMTask(ids, ids, 8, 4, objective={"meap": 0.1})
    with pytest.raises(ValueError, match="fraction"):
        TextLMTask(ids, ids, 8, 4, objective={"meap": 1.5}, mask_id=10)


def test_mix_own_samples(tiny_model):
    x = torch.randint(64, (3, 20))
    torch.manual_seed(0)
    assert torch.equal(tiny_model.mix_own_samples(x, 0.0, {}), x)
    # a model that is certain its next token is 7
    tiny_model.heads["lm"].forward = lambda h: torch.nn.functional.one_hot(torch.full(h.shape[:-1], 7), 64).float() * 50
    mixed = tiny_model.mix_own_samples(x, 1.0, {})
    assert torch.equal(mixed[:, 0], x[:, 0]) and (mixed[:, 1:] == 7).all()
    half = tiny_model.mix_own_samples(x, 0.5, {})
    swapped = (half[:, 1:] != x[:, 1:]) & (x[:, 1:] != 7)
    assert 0 < swapped.float().mean() < 1

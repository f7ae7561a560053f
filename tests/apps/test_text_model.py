"""apps/text/model.py: stream_text (prompt -> decoded pieces, stop strings, whole characters) and
generate_tokens (the decoder its options name)."""
import types

import pytest
import torch
from tokenizers import pre_tokenizers

import apps.text.model as text_model
from apps.text.model import generate_tokens, make_drafter, stream_text
from backbone.container import OmniModel, part
from backbone.contrastive import generate_contrastive
from backbone.drafters import PromptLookupDrafter
from backbone.generate import generate
from backbone.sampling import SamplingParams
from backbone.skip import LayerSkip
from backbone.transformer import ModelArgs
from heads.lm import LMHead
from modalities.text import BPETokenizer, CharTokenizer

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 the the the quick brown fox.\n") * 3


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS.splitlines(keepends=True), vocab_size=300, special_tokens=["<|eot|>"])


# ---- stream_text ------------------------------------------------------------------------
CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"


@pytest.fixture
def char_model(seed):
    tok = CharTokenizer.train(CHARS)
    args = ModelArgs.from_name("tiny", vocab_size=tok.vocab_size)
    m = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=tok.vocab_size, tie=False)})
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m.eval(), tok


def greedy(n=20, **kw):
    return SamplingParams(temperature=0, max_new_tokens=n, **kw)


def test_stream_empty_prompt(char_model):
    model, tok = char_model
    with pytest.raises(ValueError, match="empty"):
        list(stream_text(model, tok, "", greedy()))


def test_stream_unknown_chars_and_long_prompt(char_model):
    model, tok = char_model
    with pytest.raises(ValueError, match="vocabulary"):
        list(stream_text(model, tok, "ABC", greedy()))
    with pytest.raises(ValueError, match="context"):
        list(stream_text(model, tok, "a" * 65, greedy()))
    with pytest.raises(ValueError, match="top_p"):
        list(stream_text(model, tok, "abc", greedy(top_p=0)))


def test_stream_pieces_concatenate_to_decode(char_model):
    model, tok = char_model
    pieces = list(stream_text(model, tok, "the cat", greedy(25)))
    toks = [int(t[0]) for t in generate(model, [tok.encode("the cat")], greedy(25))]
    assert len(toks) == 25
    assert "".join(pieces) == tok.decode(toks)
    assert len(pieces) > 1  # streamed, not returned at once
    assert len(set(toks)) > 2


def test_stream_stop_string_truncates(char_model):
    model, tok = char_model
    full = "".join(stream_text(model, tok, "the cat", greedy(25)))
    stop = full[6:8]  # a two-character string the greedy output contains
    cut = full.find(stop)
    out = "".join(stream_text(model, tok, "the cat", greedy(25, stop_strings=[stop])))
    assert out == full[:cut]
    assert stop not in out
    # a stop string that never appears changes nothing
    assert "zzzzzzzz" not in full
    assert "".join(stream_text(model, tok, "the cat", greedy(25, stop_strings=["zzzzzzzz"]))) == full


def test_stream_stop_token(char_model):
    model, tok = char_model
    full = "".join(stream_text(model, tok, "the cat", greedy(25)))
    stop_char = full[4]
    out = "".join(stream_text(model, tok, "the cat", greedy(25, stop_tokens=[tok.stoi[stop_char]])))
    assert out == full[:full.index(stop_char)]


def byte_tokens(tok: BPETokenizer, text: str) -> list[int]:
    """ids that spell ``text`` one UTF-8 byte per token (the byte-level alphabet)."""
    chars = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]
    return [tok.token_id(c) for c in chars]


@pytest.fixture
def scripted(monkeypatch):
    """Make generate_tokens() yield a fixed token script; returns a fake model and a setter."""
    script = []

    def fake_generate(model, prompts, params, head="lm", **kw):
        for t in script[:params.max_new_tokens]:
            yield torch.tensor([t])
    monkeypatch.setattr(text_model, "generate_tokens", fake_generate)
    model = types.SimpleNamespace(args=types.SimpleNamespace(block_size=64))
    return model, script


def test_stream_bpe_never_emits_half_a_character(bpe, scripted):
    model, script = scripted
    text = "a\U0001F600\u65e5b\u00e9"
    script += byte_tokens(bpe, text)
    assert len(script) == 1 + 4 + 3 + 1 + 2
    pieces = list(stream_text(model, bpe, "hi", greedy(50)))
    assert "".join(pieces) == text
    assert pieces == ["a", "\U0001F600", "\u65e5", "b", "\u00e9"]


def test_stream_stop_string_spanning_tokens(bpe, scripted):
    model, script = scripted
    script += byte_tokens(bpe, "ab\U0001F600cd\U0001F600ef")
    out = list(stream_text(model, bpe, "hi", greedy(50, stop_strings=["d\U0001F600", "zz"])))
    assert "".join(out) == "ab\U0001F600c"
    out = list(stream_text(model, bpe, "hi", greedy(50, stop_strings=["\U0001F600"])))
    assert "".join(out) == "ab"
    # stop string at the very start: nothing is emitted
    assert list(stream_text(model, bpe, "hi", greedy(50, stop_strings=["ab"]))) == []


def test_generate_tokens_picks_the_decoder(char_model):
    """Drafted and plain greedy decoding agree; contrastive search is its own decoder; options
    that do not combine are refused."""
    model, tok = char_model
    ids = [tok.encode("the cat the cat")]
    plain = torch.stack(list(generate(model, ids, greedy(12))), 1)
    st = {}
    drafted = torch.stack(list(generate_tokens(model, ids, greedy(12), drafter=PromptLookupDrafter(), stats=st)), 1)
    assert torch.equal(drafted, plain) and st["rounds"] > 0
    cs = SamplingParams(penalty_alpha=0.6, top_k=3, max_new_tokens=8)
    assert torch.equal(torch.stack(list(generate_tokens(model, ids, cs)), 1),
                       torch.stack(list(generate_contrastive(model, ids, cs)), 1))
    with pytest.raises(ValueError, match="not both"):
        generate_tokens(model, ids, cs, drafter=PromptLookupDrafter())
    with pytest.raises(ValueError, match="give a drafter"):
        generate_tokens(model, ids, greedy(), rollback=1.0)
    with pytest.raises(ValueError, match="plain decoding only"):
        generate_tokens(model, ids, greedy(), drafter=PromptLookupDrafter(), skip=LayerSkip())
    with pytest.raises(ValueError, match="contrastive search"):
        next(generate(model, ids, cs))  # plain generate does not silently drop penalty_alpha


def test_make_drafter_kinds(char_model, tmp_path):
    model, tok = char_model
    assert isinstance(make_drafter("prompt-lookup", model), PromptLookupDrafter)
    assert make_drafter("ngram", model, ngram_n=5).n == 5
    with pytest.raises(ValueError, match="no 'draft' head"):
        make_drafter("head", model)
    with pytest.raises(ValueError, match="--fallback"):
        make_drafter("ngram", model, fallback=0.5)
    with pytest.raises(FileNotFoundError):
        make_drafter(str(tmp_path / "missing"), model)

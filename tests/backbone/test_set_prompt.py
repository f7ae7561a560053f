import itertools

import pytest
import torch

from backbone.generate import generate
from backbone.sampling import SamplingParams
from backbone.set_prompt import generate_set, set_logits, set_prefill, set_prompt_inputs
from backbone.transformer import GPT2_STYLE

V = 40
PREFIX, SUFFIX = [3, 7, 1], [9, 2]
OPTIONS = [[5, 8, 11, 4], [6], [12, 0, 13]]  # different lengths
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.fixture(params=["rope", "learned"])
def model(request, make_tiny_lm):
    """Tiny random LM with large weights, so logits and greedy outputs vary."""
    m = make_tiny_lm(V, **({} if request.param == "rope" else GPT2_STYLE))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m.eval()


def plain_logits(model, tokens):
    with torch.no_grad():
        return model.heads["lm"](model(torch.tensor([tokens]))[0, -1])


def test_every_permutation_gives_same_output(model):
    ref_tok = generate_set(model, PREFIX, OPTIONS, SUFFIX, GREEDY)
    ref_logits = set_logits(model, PREFIX, OPTIONS, SUFFIX)
    assert len(ref_tok) == 12 and len(set(ref_tok)) >= 3  # not a degenerate model
    for perm in itertools.permutations(OPTIONS):
        opts = list(perm)
        assert generate_set(model, PREFIX, opts, SUFFIX, GREEDY) == ref_tok, opts
        torch.testing.assert_close(set_logits(model, PREFIX, opts, SUFFIX), ref_logits, atol=1e-5, rtol=0)


def test_plain_concatenation_depends_on_order(model):
    # the same tokens as one causal prompt: swapping options changes the logits
    a = plain_logits(model, PREFIX + sum(OPTIONS, []) + SUFFIX)
    b = plain_logits(model, PREFIX + sum(OPTIONS[::-1], []) + SUFFIX)
    assert (a - b).abs().max() > 1e-2


def test_mask_and_positions_hand_example():
    ids, pos, mask = set_prompt_inputs([10], [[20, 21], [30]], [40])
    assert ids.tolist() == [10, 20, 21, 30, 40]
    assert pos.tolist() == [0, 1, 2, 1, 3]  # both options start at len(prefix); suffix at 1 + max len
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],  # prefix: causal
        [1, 1, 0, 0, 0],  # option 0
        [1, 1, 1, 0, 0],
        [1, 0, 0, 1, 0],  # option 1 sees the prefix and itself, not option 0
        [1, 1, 1, 1, 1],  # suffix sees everything
    ]


def test_mask_general_properties():
    ids, pos, mask = set_prompt_inputs(PREFIX, OPTIONS, SUFFIX)
    m, P = mask[0, 0], len(PREFIX)
    starts = [P + sum(len(o) for o in OPTIONS[:i]) for i in range(len(OPTIONS))]
    spans = [range(s, s + len(o)) for s, o in zip(starts, OPTIONS)]
    for i, a in enumerate(spans):
        assert int(pos[a[0]]) == P
        for j, b in enumerate(spans):
            if i != j:
                assert not m[a][:, b].any()
        assert m[a][:, :P].all()
    assert pos[-len(SUFFIX):].tolist() == [P + 4, P + 5]
    assert m[-len(SUFFIX):].sum(-1).tolist() == [ids.numel() - 1, ids.numel()]


def test_single_option_equals_plain_prompt(model):
    toks = PREFIX + OPTIONS[0] + SUFFIX
    plain = [int(t) for t in generate(model, [toks], GREEDY)]
    assert generate_set(model, PREFIX, [OPTIONS[0]], SUFFIX, GREEDY) == plain
    torch.testing.assert_close(set_logits(model, PREFIX, [OPTIONS[0]], SUFFIX), plain_logits(model, toks),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("options,suffix", [(OPTIONS, SUFFIX), (OPTIONS, [9]), ([[5, 8]], [])])
def test_cached_decoding_matches_full_forward(model, options, suffix):
    # generated tokens behave as more suffix: positions continue from the suffix, not from T
    got = generate_set(model, PREFIX, options, suffix, SamplingParams(temperature=0, max_new_tokens=8))
    gen = []
    with torch.no_grad():
        for _ in range(8):
            ids, pos, mask = set_prompt_inputs(PREFIX, options, suffix + gen)
            h = model.backbone(input_ids=ids[None], positions=pos[None], mask=mask)
            gen.append(int(model.heads["lm"](h[0, -1]).argmax()))
    assert got == gen


def test_decode_state_bookkeeping(model):
    h, state = set_prefill(model, PREFIX, OPTIONS, SUFFIX, max_seq=20)
    assert h.shape == (1, model.args.dim)
    assert state.next_slot == 3 + 8 + 2 and state.positions.tolist() == [3 + 4 + 2]


def test_stop_tokens(model):
    full = generate_set(model, PREFIX, OPTIONS, SUFFIX, GREEDY)
    stop = full[4]
    got = generate_set(model, PREFIX, OPTIONS, SUFFIX,
                       SamplingParams(temperature=0, max_new_tokens=12, stop_tokens=[stop]))
    assert got == full[:full.index(stop) + 1]


def test_bad_input(model):
    with pytest.raises(ValueError, match="non-empty list of options"):
        set_prompt_inputs(PREFIX, [], SUFFIX)
    with pytest.raises(ValueError, match="option 1 must be a non-empty list"):
        set_prompt_inputs(PREFIX, [[1], []], SUFFIX)
    with pytest.raises(ValueError, match="option 0 must be a non-empty list"):
        set_logits(model, PREFIX, [1, 2], SUFFIX)  # a flat list is not a set of options
    with pytest.raises(ValueError, match="suffix must be non-empty"):
        generate_set(model, PREFIX, OPTIONS, [], GREEDY)  # would depend on the last option
    block = model.args.block_size
    with pytest.raises(ValueError, match="context is 64"):
        set_logits(model, [], [[1] * 40, [2] * 40], [3])  # positions fit, but 80 tokens do not
    with pytest.raises(ValueError, match="run past"):
        generate_set(model, [1] * 50, [[2]], [], SamplingParams(temperature=0, max_new_tokens=block))

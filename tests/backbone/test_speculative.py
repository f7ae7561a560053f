"""Draft-and-verify decoding: greedy output identical, sampled distribution unchanged,
for every drafter, at batch 1 and with ragged batches."""
import itertools

import pytest
import torch

from backbone.container import OmniModel, part
from backbone.drafters import HeadDrafter, ModelDrafter, NgramTableDrafter, PromptLookupDrafter
from backbone.generate import Generation, TextSchedule, generate
from backbone.sampling import SamplingParams
from backbone.speculative import DraftSchedule, generate_drafted
from backbone.transformer import ModelArgs
from heads.draft import DraftHead
from heads.lm import LMHead


def build(V=40, std=0.3, seed=0, draft_head=False) -> OmniModel:
    torch.manual_seed(seed)
    args = ModelArgs.from_name("tiny", vocab_size=V)
    heads = {"lm": part(LMHead, dim=args.dim, vocab_size=V, tie=False)}
    if draft_head:
        heads["draft"] = part(DraftHead, dim=args.dim, vocab_size=V)
    m = OmniModel.build(args, heads=heads)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return m.eval()


def rows(stream) -> list[list[int]]:
    """Stack a generate stream into per-row token lists (the -1 fill after a stop dropped)."""
    out = torch.stack(list(stream), 1)
    return [[int(t) for t in r if t >= 0] for r in out]


def one(model, prompt, params, **kw) -> list[int]:
    return rows(generate_drafted(model, [prompt], params, **kw))[0]


@torch.no_grad()
def exact_first_two(model, prompt, V) -> dict:
    """{(a, b): P(first two sampled tokens = a, b)} computed from the model's own softmax."""
    def next_probs(ids):
        return model.heads["lm"](model.backbone(torch.tensor([ids])))[0, -1].double().softmax(-1)
    p1 = next_probs(prompt)
    return {(a, b): float(p1[a] * p2b) for a in range(V) for b, p2b in enumerate(next_probs(prompt + [a]))}


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    d = PromptLookupDrafter(max_n=3)
    assert d.lookup([1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 2, 3, 4], 3) == [7, 2, 3]
    assert d.lookup([5, 6, 7], 2) == []       # nothing repeats
    assert d.lookup([1, 2, 1], 4) == [2, 1]   # falls back to the 1-gram "1"


def test_ngram_table_seeds_from_a_corpus_and_adapts():
    from backbone.drafters import DraftContext
    d = NgramTableDrafter(corpus=[[1, 2, 3, 4], [1, 2, 3, 5]], local_weight=4.0)
    d.reset(1, 16)
    ctx = lambda h: DraftContext(torch.tensor([h]), torch.tensor([len(h) - 1]), torch.tensor([len(h) - 1]), None, [h], None)  # noqa: E731
    assert d(ctx([9, 1, 2]), 3).tokens.tolist() == [[3, 4]] or d(ctx([9, 1, 2]), 3).tokens.tolist() == [[3, 5]]
    d.reset(1, 16)
    # the row's own text says "2 3 -> 5": local counts outweigh the corpus tie
    assert d(ctx([2, 3, 5, 7, 1, 2]), 2).tokens.tolist() == [[3, 5]]
    assert d(ctx([42]), 3).lengths.tolist() == [0]  # unknown context: no draft


DRAFTERS = {
    "prompt_lookup": lambda big: PromptLookupDrafter(),
    "ngram_table": lambda big: NgramTableDrafter(corpus=[[1, 2, 3, 1, 2, 3, 4]]),
    "model": lambda big: ModelDrafter(build(seed=0, std=0.25)),
    "model_fallback": lambda big: ModelDrafter(build(seed=0, std=0.25), fallback=0.12),
    "head": lambda big: HeadDrafter(big),
}


@pytest.mark.parametrize("name", DRAFTERS)
def test_greedy_is_identical_to_plain_decoding_batched_and_alone(name):
    """Ragged prompts in one batch, and each alone: the same tokens as plain greedy decoding."""
    big = build(draft_head=True)
    params = SamplingParams(temperature=0, max_new_tokens=30)
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [5], [7, 7, 7, 7, 7, 7]]
    plain = rows(generate(big, prompts, params))
    st = {}
    assert rows(generate_drafted(big, prompts, params, DRAFTERS[name](big), gamma=4, stats=st)) == plain
    assert st["drafted"] > 0
    for p, ref in zip(prompts, plain):
        assert one(big, p, params, drafter=DRAFTERS[name](big), gamma=3) == ref


def test_drafting_reports_acceptance():
    big = build()
    params = SamplingParams(temperature=0, max_new_tokens=20)
    st = {}
    out = rows(generate_drafted(big, [[1, 2, 1, 2]], params, PromptLookupDrafter(), gamma=4, stats=st))
    assert out == rows(generate(big, [[1, 2, 1, 2]], params))
    assert st["rounds"] < 20 and st["accepted"] > 0 and st["emitted"] == 20


def test_one_token_prompts_prefill_nothing_and_draft_from_the_first_round():
    """Every prompt is one token: the prefill is empty (the pending token is verified with the
    first drafts), and the output is still plain greedy decoding."""
    big = build(draft_head=True)
    params = SamplingParams(temperature=0, max_new_tokens=15)
    prompts = [[3], [5]]
    for drafter in (NgramTableDrafter(corpus=[[3, 1, 2, 3, 1, 2]]), HeadDrafter(big)):
        assert rows(generate_drafted(big, prompts, params, drafter, gamma=3)) == rows(generate(big, prompts, params))


def test_drafted_decoding_interleaves_with_another_generation():
    """A drafted generation is a schedule with its own cache: stepped alternately with a plain
    one on the same model, each gives what it gives alone."""
    big = build()
    params = SamplingParams(temperature=0, max_new_tokens=12)
    solo = rows(generate_drafted(big, [[1, 2, 1, 2]], params, PromptLookupDrafter()))
    plain = rows(generate(big, [[4, 4, 7]], params))
    d = DraftSchedule(big, [[1, 2, 1, 2]], params, PromptLookupDrafter())
    t = TextSchedule(big, [[4, 4, 7]], params)
    gd, gt = Generation(big, d), Generation(big, t)
    got_d, got_t = [], []
    for _ in range(30):
        if gd.step() is not None:
            got_d += [int(x[0]) for x in d.ready()]
        if (x := gt.step()) is not None:
            got_t.append(int(x[0]))
    assert [got_d] == solo and [got_t] == plain


def test_fallback_policy_cuts_drafts_short():
    big, small = build(seed=0), build(seed=0, std=0.25)
    params = SamplingParams(temperature=0, max_new_tokens=25)
    cut, full = {}, {}
    one(big, [1, 2, 3], params, drafter=ModelDrafter(small, fallback=0.12), stats=cut)
    one(big, [1, 2, 3], params, drafter=ModelDrafter(small), stats=full)
    assert 0 < cut["drafted"] < full["drafted"]


def test_bild_rollback_policy_is_a_relaxation():
    """rollback=∞ keeps every draft (pure small-model text); rollback=0 is exact greedy."""
    big, small = build(seed=0), build(seed=0, std=0.25)
    params = SamplingParams(temperature=0, max_new_tokens=20)
    assert one(big, [1, 2, 3], params, drafter=ModelDrafter(small), rollback=0.0) == \
        rows(generate(big, [[1, 2, 3]], params))[0]
    st = {}
    one(big, [1, 2, 3], params, drafter=ModelDrafter(small), rollback=1e9, stats=st)
    assert st["accepted"] == st["drafted"]
    with pytest.raises(ValueError, match="greedy"):
        one(big, [1, 2, 3], SamplingParams(temperature=1.0), drafter=ModelDrafter(small), rollback=1.0)


def test_stop_tokens_and_budget():
    model = build()
    params = SamplingParams(temperature=0, max_new_tokens=30)
    plain = rows(generate(model, [[1, 2, 1, 2]], params))[0]
    stop = plain[5]
    out = one(model, [1, 2, 1, 2], SamplingParams(temperature=0, max_new_tokens=30, stop_tokens=[stop]))
    assert out == plain[:plain.index(stop) + 1]
    assert len(one(model, [1, 2, 1, 2], SamplingParams(temperature=0, max_new_tokens=7))) == 7
    with pytest.raises(ValueError, match="context"):
        one(model, [1] * 30, SamplingParams(max_new_tokens=40))
    with pytest.raises(ValueError, match="repetition_penalty"):
        one(model, [1, 2], SamplingParams(repetition_penalty=1.2))


def _tv_first_two(big, prompt, V, drafter_fn, N=3000, batch_with=None, **kw):
    exact = exact_first_two(big, prompt, V)
    counts = dict.fromkeys(itertools.product(range(V), range(V)), 0)
    accepted = rejected = 0
    prompts = [prompt] + ([batch_with] if batch_with else [])
    for seed in range(N):
        st = {}
        out = torch.stack(list(generate_drafted(big, prompts, SamplingParams(temperature=1.0, max_new_tokens=3, seed=seed),
                                                drafter_fn(), stats=st, **kw)), 1)
        counts[(int(out[0, 0]), int(out[0, 1]))] += 1
        accepted += st["accepted"]
        rejected += st["drafted"] - st["accepted"]
    tv = 0.5 * sum(abs(counts[k] / N - exact[k]) for k in exact)
    return tv, accepted / N, rejected / N


def test_sampling_distribution_is_the_models_ngram():
    """Exact joint distribution of the first two tokens vs 3000 drafted samples (total variation)."""
    V = 5
    big = build(V=V, std=0.3, seed=2)  # p(next = 2, the drafted token) ~ 0.47: both outcomes common
    tv, acc, rej = _tv_first_two(big, [0, 1, 2, 0, 1, 2, 0, 1], V, PromptLookupDrafter, gamma=4)
    assert acc > 0.2 and rej > 0.2  # both paths of the rule were exercised
    assert tv < 0.04, tv            # sampling noise at N=3000 over 25 cells is ~0.02


def test_sampling_distribution_is_the_big_models_with_a_draft_model_in_a_ragged_batch():
    """Row 0 shares its batch with a row that accepts differently: all rows advance by the
    smallest accepted prefix, and row 0's tokens must still follow the big model exactly."""
    V = 5
    big, small = build(V=V, std=0.3, seed=2), build(V=V, std=0.3, seed=3)
    tv, acc, rej = _tv_first_two(big, [0, 1, 2, 0, 1], V, lambda: ModelDrafter(small), N=2500,
                                 batch_with=[3, 3], gamma=2)
    assert acc > 0.2 and rej > 0.2
    assert tv < 0.045, tv


class _CheckedModelDrafter(ModelDrafter):
    """Every draft must equal the small model's own greedy continuation of the accepted text,
    recomputed from scratch: the proof that its KV cache was rolled back right."""

    calls = 0

    def __call__(self, ctx, gamma, params=None, gen=None):
        d = super().__call__(ctx, gamma, params, gen)
        for b, hist in enumerate(ctx.histories):
            seq = list(hist)
            for _ in range(int(d.lengths[b])):
                logits = self.model.heads["lm"](_nocache(self.model, seq))
                seq.append(int(logits.argmax()))
            assert d.tokens[b, :int(d.lengths[b])].tolist() == seq[len(hist):], (b, hist)
        _CheckedModelDrafter.calls += 1
        return d


@torch.no_grad()
def _nocache(model, seq):
    """Last hidden state of seq, computed without a KV cache."""
    return model.backbone(torch.tensor([seq]))[0, -1]


def test_draft_model_cache_is_rolled_back_per_row():
    big, small = build(seed=0), build(seed=0, std=0.25)
    prompts = [[1, 2, 3, 4, 5], [9], [4, 4, 2]]
    params = SamplingParams(temperature=0, max_new_tokens=25)
    st = {}
    out = rows(generate_drafted(big, prompts, params, _CheckedModelDrafter(small), gamma=3, stats=st))
    assert out == rows(generate(big, prompts, params))
    assert _CheckedModelDrafter.calls > 3 and 0 < st["accepted"] < st["drafted"]  # rejections happened


def test_compiled_verification_gives_the_same_tokens():
    """Static cache + torch.compile'd verify (drafts padded to gamma): plain greedy tokens."""
    big = build(draft_head=True)
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [5]]
    params = SamplingParams(temperature=0, max_new_tokens=20)
    st = {}
    out = rows(generate_drafted(big, prompts, params, PromptLookupDrafter(), gamma=4, compile=True, stats=st))
    assert out == rows(generate(big, prompts, params)) and st["accepted"] > 0

"""Draft-and-verify decoding: greedy output identical, sampled distribution unchanged."""
import itertools

import pytest
import torch

from backbone.container import OmniModel, part
from backbone.generate import generate
from backbone.sampling import SamplingParams
from backbone.speculative import NgramDrafter, generate_drafted
from backbone.transformer import ModelArgs
from heads.lm import LMHead


def build(V=40, std=0.3, seed=0) -> OmniModel:
    torch.manual_seed(seed)
    args = ModelArgs.from_name("tiny", vocab_size=V)
    m = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=V, tie=False)})
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, std)
    return m.eval()


@torch.no_grad()
def exact_first_two(model, prompt, V) -> dict:
    """{(a, b): P(first two sampled tokens = a, b)} computed from the model's own softmax."""
    def next_probs(ids):
        return model.heads["lm"](model.backbone(torch.tensor([ids])))[0, -1].double().softmax(-1)
    p1 = next_probs(prompt)
    return {(a, b): float(p1[a] * p2b) for a in range(V) for b, p2b in enumerate(next_probs(prompt + [a]))}


def test_ngram_drafter_proposes_what_followed_the_latest_match():
    d = NgramDrafter(max_n=3)
    h = [1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 2, 3, 4]
    assert d(h, 3)[0] == [7, 2, 3]       # "2 3 4" last seen before the end at index 6 -> then 7, 2, 3
    assert d([5, 6, 7], 2)[0] == []      # nothing repeats
    assert d([1, 2, 1], 4)[0] == [2, 1]  # falls back to the 1-gram "1"


@pytest.mark.parametrize("prompt", [[1, 2, 3, 1, 2, 3, 1, 2], [5], [7, 7, 7, 7, 7, 7]])
def test_greedy_is_identical_to_plain_decoding(prompt):
    model = build()
    params = SamplingParams(temperature=0, max_new_tokens=30)
    plain = [int(t[0]) for t in generate(model, [prompt], params)]
    stats = {}
    drafted = list(generate_drafted(model, prompt, params, gamma=4, stats=stats))
    assert drafted == plain
    assert stats["drafted"] > 0


def test_stop_tokens_and_budget():
    model = build()
    params = SamplingParams(temperature=0, max_new_tokens=30)
    plain = [int(t[0]) for t in generate(model, [[1, 2, 1, 2]], params)]
    stop = plain[5]
    out = list(generate_drafted(model, [1, 2, 1, 2], SamplingParams(temperature=0, max_new_tokens=30, stop_tokens=[stop])))
    assert out == plain[:plain.index(stop) + 1]
    assert len(list(generate_drafted(model, [1, 2, 1, 2], SamplingParams(temperature=0, max_new_tokens=7)))) == 7
    with pytest.raises(ValueError, match="context"):
        list(generate_drafted(model, [1] * 30, SamplingParams(max_new_tokens=40)))


def test_sampling_distribution_is_the_models():
    """Exact joint distribution of the first two tokens vs 3000 drafted samples (total variation)."""
    V = 5
    model = build(V=V, std=0.3, seed=2)  # p(next = 2, the drafted token) ~ 0.47: both outcomes common
    prompt = [0, 1, 2, 0, 1, 2, 0, 1]  # repetitive: the n-gram drafter proposes tokens
    exact = exact_first_two(model, prompt, V)
    counts = dict.fromkeys(itertools.product(range(V), range(V)), 0)
    N, accepted, rejected = 3000, 0, 0
    for seed in range(N):
        st = {}
        a, b = generate_drafted(model, prompt, SamplingParams(temperature=1.0, max_new_tokens=2, seed=seed), stats=st)
        counts[(a, b)] += 1
        accepted += st["accepted"]
        rejected += st["drafted"] - st["accepted"]
    tv = 0.5 * sum(abs(counts[k] / N - exact[k]) for k in exact)
    assert accepted > 0.2 * N and rejected > 0.2 * N  # both paths of the rule were exercised
    assert tv < 0.04, tv       # sampling noise at N=3000 over 25 cells is ~0.02


@pytest.mark.parametrize("fallback", [None, 0.12])
def test_draft_model_greedy_is_identical(fallback):
    from backbone.speculative import ModelDrafter
    big, small = build(seed=0), build(seed=0, std=0.25)  # related but different models
    params = SamplingParams(temperature=0, max_new_tokens=25)
    for prompt in ([1, 2, 3], [9]):
        plain = [int(t[0]) for t in generate(big, [prompt], params)]
        st = {}
        out = list(generate_drafted(big, prompt, params, drafter=ModelDrafter(small, fallback=fallback), stats=st))
        assert out == plain
        assert st["drafted"] > 0
        if fallback is not None:  # the policy really cut some drafts short
            full = {}
            list(generate_drafted(big, prompt, params, drafter=ModelDrafter(small), stats=full))
            assert st["drafted"] < full["drafted"]
    assert not small.backbone.has_cache and not big.backbone.has_cache


def test_draft_model_sampling_distribution_is_the_big_models():
    from backbone.speculative import ModelDrafter
    V = 5
    big, small = build(V=V, std=0.3, seed=2), build(V=V, std=0.3, seed=3)
    prompt = [0, 1, 2, 0, 1]
    exact = exact_first_two(big, prompt, V)
    counts = dict.fromkeys(exact, 0)
    N, accepted, rejected = 3000, 0, 0
    drafter = ModelDrafter(small)
    for seed in range(N):
        st = {}
        a, b, _ = generate_drafted(big, prompt, SamplingParams(temperature=1.0, max_new_tokens=3, seed=seed),
                                   drafter=drafter, gamma=2, stats=st)
        counts[(a, b)] += 1
        accepted += st["accepted"]
        rejected += st["drafted"] - st["accepted"]
    tv = 0.5 * sum(abs(counts[k] / N - exact[k]) for k in exact)
    assert accepted > 0.2 * N and rejected > 0.2 * N
    assert tv < 0.04, tv

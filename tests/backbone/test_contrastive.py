"""Contrastive search: same tokens as a direct, cache-free implementation of Su et al. (2022)."""
import pytest
import torch
import torch.nn.functional as F

from backbone.contrastive import generate_contrastive
from backbone.generate import generate
from backbone.sampling import SamplingParams


@torch.no_grad()
def reference(model, prompt: list[int], k: int, alpha: float, n: int) -> list[int]:
    """Recompute everything from scratch for every candidate: no cache, no batching."""
    seq = list(prompt)
    for _ in range(n):
        h = model.backbone(torch.tensor([seq]))[0]                      # (T, D)
        probs = model.heads["lm"](h[-1]).float().softmax(-1)
        top_p, top_i = probs.topk(k)
        scores = []
        for p, v in zip(top_p.tolist(), top_i.tolist()):
            hv = model.backbone(torch.tensor([seq + [v]]))[0]
            sim = F.cosine_similarity(hv[-1:].float(), hv[:-1].float(), dim=-1).max()
            scores.append((1 - alpha) * p - alpha * float(sim))
        seq.append(int(top_i[max(range(k), key=scores.__getitem__)]))
    return seq[len(prompt):]


def rows(stream):
    out = torch.stack(list(stream), 1)
    return [[int(t) for t in r if t >= 0] for r in out]


@pytest.mark.parametrize("alpha", [0.3, 0.6])
def test_matches_the_direct_implementation_in_a_ragged_batch(tiny_model, alpha):
    prompts = [[1, 2, 3, 4, 5], [7], [9, 9, 9]]
    params = SamplingParams(penalty_alpha=alpha, top_k=4, max_new_tokens=12)
    got = rows(generate_contrastive(tiny_model, prompts, params))
    assert got == [reference(tiny_model, p, 4, alpha, 12) for p in prompts]


def test_alpha_zero_plus_k_one_is_greedy(tiny_model):
    g = rows(generate(tiny_model, [[3, 4]], SamplingParams(temperature=0, max_new_tokens=10)))
    c = rows(generate_contrastive(tiny_model, [[3, 4]], SamplingParams(penalty_alpha=1e-9, top_k=1, max_new_tokens=10)))
    assert c == g


def test_stop_tokens_and_bad_settings(tiny_model):
    params = SamplingParams(penalty_alpha=0.6, top_k=3, max_new_tokens=10)
    full = rows(generate_contrastive(tiny_model, [[1, 2]], params))[0]
    stopped = rows(generate_contrastive(tiny_model, [[1, 2]], SamplingParams(
        penalty_alpha=0.6, top_k=3, max_new_tokens=10, stop_tokens=[full[3]])))[0]
    assert stopped == full[:full.index(full[3]) + 1]
    with pytest.raises(ValueError, match="top_k"):
        list(generate_contrastive(tiny_model, [[1]], SamplingParams(penalty_alpha=0.5)))
    with pytest.raises(ValueError, match="penalty_alpha"):
        list(generate_contrastive(tiny_model, [[1]], SamplingParams(penalty_alpha=1.5, top_k=2)))
    with pytest.raises(ValueError, match="context"):
        list(generate_contrastive(tiny_model, [[1] * 60], SamplingParams(penalty_alpha=0.5, top_k=2, max_new_tokens=10)))


def test_primer_model_keeps_the_chosen_candidates_conv_inputs(make_tiny_lm):
    """Primer's Q/K/V convolution reads earlier slots' pre-conv projections (KVCache.raw): keeping
    a candidate copies those too, or the next step convolves over the wrong candidate."""
    model = make_tiny_lm(40, qkv_conv=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prompts = [[1, 2, 3, 4, 5], [7]]
    got = rows(generate_contrastive(model, prompts, SamplingParams(penalty_alpha=0.6, top_k=4, max_new_tokens=10)))
    assert got == [reference(model, p, 4, 0.6, 10) for p in prompts]

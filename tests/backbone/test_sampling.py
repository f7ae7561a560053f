
import torch

from backbone.sampling import (SamplingParams, apply_repetition_penalty, process_logits,
                               sample_from_logits)

INF = float("-inf")


def kept(logits, **kw):
    """Indices left finite by process_logits, per row."""
    out = process_logits(torch.as_tensor(logits, dtype=torch.float32), SamplingParams(**kw))
    return [torch.isfinite(r).nonzero().flatten().tolist() for r in out]


def test_process_logits_is_float64():
    out = process_logits(torch.randn(2, 5, dtype=torch.float16), SamplingParams(temperature=0.7))
    assert out.dtype == torch.float64


def test_temperature_scales():
    x = torch.tensor([[1.0, -2.0, 0.5]])
    torch.testing.assert_close(process_logits(x, SamplingParams(temperature=0.5)), x.double() * 2)


def test_top_k_keeps_exactly_k():
    x = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5, 2.5], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    assert kept(x, top_k=3) == [[1, 3, 5], [0, 1, 2]]
    assert kept(x, top_k=1) == [[1], [0]]
    assert kept(x, top_k=6) == [list(range(6))] * 2
    assert kept(x, top_k=100) == [list(range(6))] * 2


def test_top_p_smallest_set_reaching_p():
    # probs 0.5, 0.25, 0.15, 0.10 (in a shuffled order)
    probs = torch.tensor([[0.15, 0.5, 0.1, 0.25]])
    x = probs.log()
    assert kept(x, top_p=0.4) == [[1]]        # 0.5 alone reaches 0.4
    assert kept(x, top_p=0.7) == [[1, 3]]     # 0.5+0.25 = 0.75 >= 0.7
    assert kept(x, top_p=0.76) == [[0, 1, 3]]  # needs 0.15 too: 0.90
    assert kept(x, top_p=0.95) == [[0, 1, 2, 3]]
    assert kept(x, top_p=1.0) == [[0, 1, 2, 3]]
    # the kept logits are unchanged (renormalised only by the softmax afterwards)
    out = process_logits(x, SamplingParams(top_p=0.7))
    torch.testing.assert_close(out[0, [1, 3]], x[0, [1, 3]].double())


def test_min_p():
    probs = torch.tensor([[0.5, 0.3, 0.12, 0.08]])
    # threshold = min_p * 0.5
    assert kept(probs.log(), min_p=0.2) == [[0, 1, 2]]   # 0.10: 0.08 dropped
    assert kept(probs.log(), min_p=0.5) == [[0, 1]]      # 0.25: 0.12 dropped
    assert kept(probs.log(), min_p=0.0) == [[0, 1, 2, 3]]


def test_top_k_then_top_p():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # after top_k=3 the renormalised probs are 4/9, 3/9, 2/9; top_p=0.7 needs the first two
    assert kept(probs.log(), top_k=3, top_p=0.7) == [[0, 1]]
    assert kept(probs.log(), top_k=3, top_p=0.8) == [[0, 1, 2]]


def test_repetition_penalty_golden():
    logits = torch.tensor([[2.0, -2.0, 1.0, -0.5]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -0.5]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_changes_greedy():
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    seen = torch.tensor([[True, False, False]])
    p = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sample_from_logits(logits, p, seen=seen).tolist() == [1]
    assert sample_from_logits(logits, p).tolist() == [0]


def test_greedy_is_argmax(seed):
    x = torch.randn(16, 30)
    out = sample_from_logits(x, SamplingParams(temperature=0, top_k=5))
    assert out.dtype == torch.long and out.tolist() == x.argmax(-1).tolist()


def test_top_k_1_is_greedy(seed):
    x = torch.randn(16, 30)
    g = torch.Generator().manual_seed(0)
    assert sample_from_logits(x, SamplingParams(temperature=1.5, top_k=1), g).tolist() == x.argmax(-1).tolist()


def test_samples_never_banned(seed):
    x = torch.randn(2000, 10)
    g = torch.Generator().manual_seed(1)
    out = sample_from_logits(x, SamplingParams(top_k=3), g)
    top3 = x.topk(3, dim=-1).indices
    assert (top3 == out[:, None]).any(-1).all()


def test_distribution_matches(seed):
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = sample_from_logits(probs.log().expand(n, -1), SamplingParams(temperature=1.0), g)
    freq = torch.bincount(draws, minlength=5).double() / n
    assert (freq - probs.double()).abs().max() < 0.02
    # chi-square, 4 dof: 18.47 is the 0.999 quantile
    counts = freq * n
    chi2 = ((counts - n * probs.double()) ** 2 / (n * probs.double())).sum()
    assert chi2 < 18.47


def test_temperature_sharpens(seed):
    probs = torch.tensor([0.5, 0.3, 0.2])
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = sample_from_logits(probs.log().expand(n, -1), SamplingParams(temperature=0.5), g)
    freq = torch.bincount(draws, minlength=3).double() / n
    expect = probs.double() ** 2 / (probs.double() ** 2).sum()  # T=0.5 squares the probabilities
    assert (freq - expect).abs().max() < 0.02


def test_seeded_generator_reproducible():
    x = torch.zeros(64, 50)
    a = sample_from_logits(x, SamplingParams(), torch.Generator().manual_seed(5))
    b = sample_from_logits(x, SamplingParams(), torch.Generator().manual_seed(5))
    c = sample_from_logits(x, SamplingParams(), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_rows_equals_each_row_alone():
    """The batched draw (continuous batching) gives every row the token it gets alone: mixed
    settings, own generators, repetition penalty, greedy rows among sampled ones."""
    from backbone.sampling import sample_rows
    torch.manual_seed(0)
    V = 50
    logits = torch.randn(12, V) * 3
    params = [SamplingParams(temperature=[0.0, 0.7, 1.0, 1.3][i % 4], top_p=0.9 if i % 3 == 0 else None,
                             top_k=10 if i % 5 == 1 else None, repetition_penalty=1.5 if i % 6 == 2 else 1.0)
              for i in range(12)]
    seen = [(torch.rand(1, V) < 0.3) if p.repetition_penalty != 1.0 else None for p in params]
    for trial in range(20):
        gens_a = [torch.Generator().manual_seed(100 * trial + i) for i in range(12)]
        gens_b = [torch.Generator().manual_seed(100 * trial + i) for i in range(12)]
        alone = [int(sample_from_logits(logits[i:i + 1], params[i], gens_a[i], seen[i])) for i in range(12)]
        together = sample_rows(logits, params, gens_b, seen).tolist()
        assert together == alone

"""Layer skipping: the early-exit schedule (SkipDecode's) keeps the KV cache valid; FFN-SkipLLM skips FFNs."""
import pytest
import torch

from backbone.generate import generate
from backbone.sampling import SamplingParams
from backbone.skip import LayerSkip


def rows(stream):
    return torch.stack(list(stream), 1).tolist()


@pytest.fixture
def deep_model(make_tiny_lm):
    return make_tiny_lm(64, n_layer=4).eval()


def test_exit_schedule_falls_monotonically():
    s = LayerSkip(mode="early_exit", min_layers=2)
    sched = [s.n_layers(t, 6, 20) for t in range(20)]
    assert sched[0] == 6 and sched[-1] == 2
    assert all(a >= b for a, b in zip(sched, sched[1:]))


@torch.no_grad()
def test_early_exit_with_cache_equals_cache_free_recompute(deep_model):
    """Token t leaves after n_layers(t) layers. Because the schedule never rises, the cached
    keys/values it attends to are exactly those a cache-free run of n_layers(t) layers
    computes: the cache stays valid."""
    skip, prompt, n = LayerSkip(mode="early_exit", min_layers=1), [5, 6, 7], 12
    got = rows(generate(deep_model, [prompt], SamplingParams(temperature=0, max_new_tokens=n), skip=skip))[0]
    seq = list(prompt)
    for t in range(n):
        k = 4 if t == 0 else skip.n_layers(t - 1, 4, n)  # token 0 comes from the prefill (all layers)
        h = deep_model.backbone(torch.tensor([seq]), n_layers=k)[0, -1]
        seq.append(int(deep_model.heads["lm"](h).argmax()))
    assert got == seq[len(prompt):]


def test_no_skipping_is_plain_decoding(deep_model):
    params = SamplingParams(temperature=0, max_new_tokens=15)
    plain = rows(generate(deep_model, [[1, 2], [3]], params))
    assert rows(generate(deep_model, [[1, 2], [3]], params, skip=LayerSkip(mode="early_exit", min_layers=4))) == plain
    assert rows(generate(deep_model, [[1, 2], [3]], params, skip=LayerSkip(mode="ffn", threshold=1.0))) == plain


def test_ffn_skipping_picks_saturated_layers_after_the_warmup(deep_model):
    params = SamplingParams(temperature=0, max_new_tokens=15)
    skip = LayerSkip(mode="ffn", threshold=-1.0, warmup=4)   # every middle layer qualifies
    out = rows(generate(deep_model, [[1, 2]], params, skip=skip))
    assert skip.skipped == frozenset({1, 2})                 # never the first or the last layer
    assert len(skip.layer_sims) == 4 and len(out[0]) == 15
    with pytest.raises(ValueError, match="mode"):
        list(generate(deep_model, [[1]], params, skip=LayerSkip(mode="nope")))
    with pytest.raises(ValueError, match="compile"):
        list(generate(deep_model, [[1]], params, skip=LayerSkip(), compile=True))

import pytest
import torch

from backbone.masks import MaskSpec, blockwise_ids
from backbone.transformer import PRESETS, ModelArgs, Transformer

ATOL = 1e-5

CONFIGS = {
    "rope_gqa": dict(name="tiny"),  # n_kv_head=2 < n_head=4
    "learned_gpt2": dict(name="nano-gpt2", n_layer=2, dim=32),
    "relu2": dict(name="tiny", mlp="relu2"),
    "mha_gelu": dict(name="tiny", n_kv_head=4, mlp="gelu"),
    "primer": dict(name="tiny", mlp="relu2", qkv_conv=3),
    "primer_gpt2": dict(name="nano-gpt2", n_layer=2, dim=32, qkv_conv=3),
    "adamoe": dict(name="tiny", n_experts=3, n_null_experts=2, experts_per_tok=2),
}


def make(name="tiny", **kw) -> Transformer:
    kw.setdefault("vocab_size", 50)
    return Transformer(ModelArgs.from_name(name, **kw)).eval()


def perturb(model: Transformer):
    """Non-zero biases and non-unit norm weights, so every parameter matters."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("bias", ".conv")) or "norm" in n:  # (Primer's conv starts as the identity)
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_incremental_decoding_matches_full(seed, cfg):
    model = make(**CONFIGS[cfg])
    perturb(model)
    B, T, P = 2, 12, 5
    ids = torch.randint(0, 50, (B, T))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(B, T)
        steps = [model(ids[:, :P], input_pos=torch.arange(P), cache=cache)]
        for t in range(P, T):
            steps.append(model(ids[:, t:t + 1], input_pos=torch.tensor([t]), cache=cache))
    inc = torch.cat(steps, dim=1)
    assert inc.shape == full.shape == (B, T, model.args.dim)
    torch.testing.assert_close(inc, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cfg", ["rope_gqa", "learned_gpt2", "primer", "primer_gpt2"])
def test_chunked_prefill_matches_full(seed, cfg):
    model = make(**CONFIGS[cfg])
    B, T = 2, 11
    ids = torch.randint(0, 50, (B, T))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(B, T)
        a = model(ids[:, :4], input_pos=torch.arange(4), cache=cache)
        b = model(ids[:, 4:], input_pos=torch.arange(4, T), cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=ATOL, rtol=0)


def test_cache_requires_input_pos(seed):
    model = make()
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert not any(isinstance(b, torch.Tensor) and b.shape[-2:] == (8, model.args.head_dim)
                   for b in model.buffers())  # the cache is the caller's, not the model's


def test_incremental_is_not_trivially_equal(seed):
    # guards the test above: the hidden state of a token depends on its context
    model = make()
    ids = torch.randint(0, 50, (1, 6))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % 50
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, -1], model(other)[0, -1], atol=1e-4)


def test_mixed_input_equals_embeddings(seed):
    model = make()
    B, T, D = 2, 7, model.args.dim
    ids = torch.randint(0, 50, (B, T))
    embeds = torch.randn(B, T, D)
    sel = torch.zeros(B, T, dtype=torch.bool)
    sel[0, 2:4] = True
    sel[1, 5] = True
    with torch.no_grad():
        mixed = model(input_ids=ids, embeds=embeds, embed_mask=sel)
        eq = torch.where(sel[..., None], embeds, model.embed(ids))
        ref = model(embeds=eq)
        plain = model(ids)
    torch.testing.assert_close(mixed, ref, atol=ATOL, rtol=0)
    # positions before the first continuous embedding are unchanged, later ones are not
    torch.testing.assert_close(mixed[0, :2], plain[0, :2], atol=ATOL, rtol=0)
    assert not torch.allclose(mixed[0, 2:], plain[0, 2:], atol=1e-4)


def test_embeds_with_ids_need_mask(seed):
    model = make()
    with pytest.raises(ValueError, match="embed_mask"):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long), embeds=torch.zeros(1, 3, model.args.dim))
    with pytest.raises(ValueError):
        model()


def test_prefix_lm(seed):
    model = make()
    T, P = 9, 4
    ids = torch.randint(0, 50, (1, T))
    with torch.no_grad():
        causal = model(ids)
        prefix = model(ids, mask=MaskSpec(prefix_len=P))
        # reference: a prefix position is a function of the whole prefix -> changing a later
        # prefix token changes an earlier prefix position
        ids2 = ids.clone()
        ids2[0, P - 1] = (ids[0, P - 1] + 1) % 50
        prefix2 = model(ids2, mask=MaskSpec(prefix_len=P))
    # position P-1 sees the whole prefix either way; earlier prefix positions differ from causal
    assert not torch.allclose(prefix[0, :P - 1], causal[0, :P - 1], atol=1e-4)
    assert not torch.allclose(prefix2[0, 0], prefix[0, 0], atol=1e-4)
    # after the prefix the queries are causal: a suffix token never changes earlier outputs
    ids3 = ids.clone()
    ids3[0, -1] = (ids[0, -1] + 1) % 50
    with torch.no_grad():
        prefix3 = model(ids3, mask=MaskSpec(prefix_len=P))
    torch.testing.assert_close(prefix3[0, :-1], prefix[0, :-1], atol=ATOL, rtol=0)


def test_prefix_lm_zero_prefix_is_causal(seed):
    model = make()
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask=MaskSpec(prefix_len=torch.tensor([0, 0]))),
                                   model(ids), atol=ATOL, rtol=0)


def test_block_mask_sees_own_block(seed):
    model = make()
    sizes = [1, 3, 4]
    ids = torch.randint(0, 50, (1, sum(sizes)))
    spec = MaskSpec(block_ids=blockwise_ids(sizes))
    with torch.no_grad():
        h = model(ids, mask=spec)
        later = ids.clone()
        later[0, 3] = (ids[0, 3] + 1) % 50      # last token of block 1 (positions 1..3)
        h2 = model(later, mask=spec)
    # position 1 (first of block 1) sees the change in its own block ...
    assert not torch.allclose(h[0, 1], h2[0, 1], atol=1e-4)
    # ... block 0 does not
    torch.testing.assert_close(h[0, 0], h2[0, 0], atol=ATOL, rtol=0)


def test_position_beyond_block_size_raises(seed):
    model = make(block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 2, dtype=torch.long), positions=torch.tensor([7, 8]))
    model(torch.zeros(1, 8, dtype=torch.long))  # exactly block_size is fine


def test_learned_cache_longer_than_context_raises(seed):
    model = make(**CONFIGS["learned_gpt2"])
    with pytest.raises(ValueError, match="block_size"):
        model.new_cache(1, model.args.block_size + 1)


@pytest.mark.parametrize("kw", [dict(n_head=4, n_kv_head=3), dict(norm="batchnorm"), dict(mlp="swish"),
                                dict(pos="alibi")])
def test_invalid_args_raise(kw):
    with pytest.raises(ValueError):
        ModelArgs(dim=32, **kw)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown preset"):
        ModelArgs.from_name("gigantic")


def test_from_name_overrides_recompute_derived_fields():
    # regression: overrides used to keep head_dim / intermediate_size / n_kv_head of the base preset
    a = ModelArgs.from_name("nano", dim=64)
    assert a.head_dim == 16
    assert a.intermediate_size == 192  # find_multiple(int(8 * 64 / 3), 32)
    assert ModelArgs.from_name("nano", mlp="relu2").intermediate_size == 4 * 128
    b = ModelArgs.from_name("nano", n_head=8)
    assert (b.n_kv_head, b.head_dim) == (8, 16)
    assert ModelArgs.from_name("tiny", vocab_size=65) == ModelArgs(**{**PRESETS["tiny"], "vocab_size": 65})


def test_shapes_and_param_count(seed):
    model = make()
    a = model.args
    assert (a.n_head, a.n_kv_head, a.head_dim) == (4, 2, 8)
    assert model.layers[0].attn.wqkv.weight.shape == ((4 + 2 * 2) * 8, 32)
    assert model.num_params(non_embedding=False) - model.num_params() == 50 * 32


# ---- Primer's causal depthwise convolution (So et al. 2021) -----------------------------------
def test_primer_conv_starts_as_identity(seed):
    plain, primer = make(mlp="relu2"), make(mlp="relu2", qkv_conv=3)
    missing, unexpected = primer.load_state_dict(plain.state_dict(), strict=False)
    assert missing == [f"layers.{i}.attn.conv" for i in range(2)] and not unexpected
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(primer(ids), plain(ids), atol=1e-6, rtol=0)


def test_primer_conv_is_causal_and_stops_at_position_zero(seed):
    model = make(**CONFIGS["primer"])
    perturb(model)
    ids = torch.randint(0, 50, (1, 12))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)   # the past never sees token 7
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    attn = model.layers[0].attn
    u = torch.randn(1, 5, attn.conv.shape[1])
    y = attn.causal_conv(u, torch.tensor([0, 1, 2, 0, 1]), None)
    # by hand: y_t = w0 u_t + w1 u_{t-1} [pos >= 1] + w2 u_{t-2} [pos >= 2]
    w = attn.conv
    want = torch.stack([w[0] * u[0, 0], w[0] * u[0, 1] + w[1] * u[0, 0],
                        w[0] * u[0, 2] + w[1] * u[0, 1] + w[2] * u[0, 0],
                        w[0] * u[0, 3], w[0] * u[0, 4] + w[1] * u[0, 3]])
    torch.testing.assert_close(y[0], want)

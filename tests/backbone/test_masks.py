import torch

from backbone.masks import (MaskSpec, blockwise_ids, build_mask, causal_block_ids,
                            prefix_block_ids)


def ref_mask(T, visible, B=1, valid=None, slots=None):
    """Brute-force (B, 1, T, T) mask from a python predicate visible(b, q, k)."""
    m = torch.zeros(B, 1, T, T, dtype=torch.bool)
    for b in range(B):
        for q in range(T):
            for k in range(T):
                ok = visible(b, q, k) and (valid is None or bool(valid[b][k]))
                if slots is not None and k == slots[q]:
                    ok = True
                m[b, 0, q, k] = ok
    return m


def test_causal():
    b = causal_block_ids(7)
    assert torch.equal(build_mask(b, b), ref_mask(7, lambda _, q, k: k <= q))


def test_causal_equals_tril():
    b = causal_block_ids(5)
    assert torch.equal(build_mask(b, b)[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())


def test_prefix_lm_scalar():
    T, P = 8, 3
    b = prefix_block_ids(T, P)
    assert b.tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    expect = ref_mask(T, lambda _, q, k: k <= q or (q < P and k < P))
    assert torch.equal(build_mask(b, b), expect)


def test_prefix_lm_per_row():
    T, prefix = 6, [0, 2, 6]
    b = prefix_block_ids(T, torch.tensor(prefix))
    assert b.shape == (3, T)
    expect = ref_mask(T, lambda r, q, k: k <= q or (q < prefix[r] and k < prefix[r]), B=3)
    assert torch.equal(build_mask(b, b), expect)
    # prefix 6 == T: fully bidirectional; prefix 0: causal
    assert build_mask(b, b)[2].all()
    assert torch.equal(build_mask(b, b)[0, 0], torch.ones(T, T, dtype=torch.bool).tril())


def test_block_causal():
    sizes = [1, 4, 16]
    b = blockwise_ids(sizes)
    owner = [i for i, s in enumerate(sizes) for _ in range(s)]
    assert b.tolist() == owner
    expect = ref_mask(21, lambda _, q, k: owner[k] <= owner[q])
    assert torch.equal(build_mask(b, b), expect)
    # the first token of the 16-block sees its last token; the 1-block sees only itself
    m = build_mask(b, b)[0, 0]
    assert m[5, 20] and m[0].sum() == 1


def test_padding_and_q_slots():
    T = 6
    valid = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    b = causal_block_ids(T)
    slots = torch.arange(T)
    m = build_mask(b, b, valid, slots)
    expect = ref_mask(T, lambda _, q, k: k <= q, B=3, valid=valid.tolist(), slots=slots.tolist())
    assert torch.equal(m, expect)
    # no row is all False (SDPA would return NaN), padding queries see only themselves
    assert m.any(-1).all()
    assert m[0, 0, 1].tolist() == [False, True, False, False, False, False]


def test_padding_without_slots_can_leave_empty_rows():
    # documents why q_slots exists: without it a padding query attends to nothing
    valid = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    b = causal_block_ids(3)
    assert not build_mask(b, b, valid)[0, 0, 0].any()


def test_maskspec_plain_causal_is_none():
    assert MaskSpec().build(5) is None
    assert MaskSpec().is_plain_causal()


def test_maskspec_prefix_and_padding():
    T = 5
    am = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    spec = MaskSpec(prefix_len=torch.tensor([3, 2]), attention_mask=am)
    prefix = [3, 2]
    expect = ref_mask(T, lambda r, q, k: k <= q or (q < prefix[r] and k < prefix[r]), B=2,
                      valid=am.tolist(), slots=list(range(T)))
    assert torch.equal(spec.build(T), expect)


def test_maskspec_block_ids():
    ids = blockwise_ids([2, 3])
    m = MaskSpec(block_ids=ids).build(5)
    assert torch.equal(m, ref_mask(5, lambda _, q, k: ids[k] <= ids[q]))

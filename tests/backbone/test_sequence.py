"""Segment / pack: targets, blocks, adapters and padding, against hand-written batches."""
import pytest
import torch

from backbone.sequence import IGNORE, Segment, pack


def test_text_rows_right_padded_with_next_token_targets():
    seq = pack([[Segment([1, 2, 3], head="lm")], [Segment([4, 5], head="lm")]], pad_id=0)
    assert seq.ids.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert seq.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    # position t predicts token t+1; the first token has no predictor
    assert seq.targets["lm"].tolist() == [[2, 3, IGNORE], [5, IGNORE, IGNORE]]
    b = seq.batch()
    assert set(b) == {"input_ids", "targets"} and "mask" not in b     # all causal: SDPA's fast path


def test_image_segment_is_predicted_from_the_position_before():
    patches = torch.arange(6.).view(3, 2)
    row = [Segment([1, 7, 8], head="lm"),                                          # <bos> word <boi>
           Segment([9] * 3, kind="image", adapter="image", values=(patches, torch.arange(3)), fills=(0.0, -1),
                   head="image", target=patches, block=True),
           Segment([10, 11], head="lm")]                                           # <eoi> <eos>
    seq = pack([row, [Segment([1, 8], head="lm")]])
    sel, tgt = seq.targets["image"]
    assert sel[0].nonzero()[:, 0].tolist() == [2, 3, 4] and not sel[1].any()       # <boi> predicts patch 0
    assert torch.equal(tgt, patches)
    assert seq.targets["lm"][0].tolist() == [7, 8, IGNORE, IGNORE, IGNORE, 10, 11, IGNORE]
    x, index = seq.adapter_inputs["image"]
    assert x[0, 3:6].tolist() == patches.tolist() and index[0].tolist() == [-1, -1, -1, 0, 1, 2, -1, -1]
    assert seq.embed_mask[0].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    assert seq.block_ids[0].tolist() == [0, 1, 2, 3, 3, 3, 6, 7]                   # one bidirectional block
    mask = seq.batch()["mask"]
    assert mask.shape == (2, 1, 8, 8) and bool(mask[0, 0, 3, 5]) and not bool(mask[0, 0, 6, 7])


def test_masked_order_targets_at_own_positions_and_several_blocks():
    x = torch.randn(4, 3)
    seg = Segment([9] * 4, adapter="image", values=(x,), fills=(0.0,), head="image", target=x, shift=0,
                  scored=torch.tensor([True, False, True, False]), blocks=torch.tensor([0, 1, 1, 1]))
    seq = pack([[Segment([1, 2]), seg]])
    sel, tgt = seq.targets["image"]
    assert sel[0].nonzero()[:, 0].tolist() == [2, 4] and torch.equal(tgt, x[[0, 2]])
    assert seq.block_ids[0].tolist() == [0, 1, 2, 3, 3, 3]


def test_sparse_targets_are_row_major_across_rows():
    a, b = torch.tensor([[1.], [2.]]), torch.tensor([[3.]])
    rows = [[Segment([5]), Segment([6, 6], adapter="s", values=(a,), fills=(0.,), head="f", target=a)],
            [Segment([5, 5]), Segment([6], adapter="s", values=(b,), fills=(0.,), head="f", target=b)]]
    sel, tgt = pack(rows).targets["f"]
    assert tgt[:, 0].tolist() == [1., 2., 3.] and sel.tolist() == [[True, True, False], [False, True, False]]


def test_all_continuous_rows_need_no_token_ids():
    v = torch.randn(2, 5, 4)
    seq = pack([[Segment([0] * 5, adapter="segment", values=(v[i],), fills=(0.,))] for i in range(2)])
    b = seq.batch()
    assert "input_ids" not in b and "embed_mask" not in b and torch.equal(b["adapter_inputs"]["segment"], v)


def test_left_padded_prompt(tiny_model):
    seq = pack([[Segment([1, 2, 3])], [Segment([4])]], side="left")
    assert seq.ids.tolist() == [[1, 2, 3], [0, 0, 4]] and seq.positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    p = seq.prompt(tiny_model, max_seq=8)
    assert p.max_seq == 8 and p.embeds is None and torch.equal(p.attention_mask, seq.attention_mask)


@pytest.mark.parametrize("bad,match", [
    (lambda: pack([]), "at least one segment"),
    (lambda: Segment([1, 2], adapter="a", values=(torch.zeros(3, 1),), fills=(0.,)), "length 3"),
    (lambda: Segment([1], target=torch.zeros(1)), "needs the head"),
    (lambda: pack([[Segment([1], adapter="a", values=(torch.zeros(1),), fills=(0.,)),
                    Segment([1], adapter="b", values=(torch.zeros(1),), fills=(0.,))]]), "one input adapter"),
])
def test_bad_segments_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_trim_last_makes_the_final_token_a_target_only():
    seq = pack([[Segment([1, 2, 3], head="lm")], [Segment([4, 5], head="lm")]], trim_last=True)
    assert seq.ids.tolist() == [[1, 2], [4, 0]] and seq.attention_mask.tolist() == [[1, 1], [1, 0]]
    assert seq.targets["lm"].tolist() == [[2, 3], [5, IGNORE]]


def test_left_packed_training_rows_get_positions_a_padding_mask_and_a_minimum_length():
    seq = pack([[Segment([1, 2, 3], head="lm")], [Segment([4, 5], head="lm")]], side="left", trim_last=True,
               length=5)
    # five columns, the last dropped by trim_last: each row's final token is only a target; a row's
    # first token is never predicted from the padding before it
    assert seq.ids.tolist() == [[0, 0, 1, 2], [0, 0, 0, 4]]
    assert seq.targets["lm"].tolist() == [[IGNORE, IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE, 5]]
    b = seq.batch()
    assert b["positions"].tolist() == [[0, 0, 0, 1], [0, 0, 0, 0]]
    mask = b["mask"]                                                 # (B, 1, T, T): padding keys hidden
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0, 3].tolist() == [False, False, True, True] and mask[1, 0, 3].tolist() == [False, False, False, True]

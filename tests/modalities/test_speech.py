"""Speech modality: vocabulary, prosody tokens, AR/NAR rows and RALL-E's duration-guided mask."""
import math

import numpy as np
import pytest
import torch

from backbone.sequence import pack
from modalities.speech import (BOS, EOS, PAD, PROS, SOS, CodecEmbed, SpeechVocab, ar_mask, ar_row, ar_segments,
                               frame_bounds, frame_phoneme, frame_pitch, nar_row, phoneme_prosody)

SR, HOP = 16000, 320


@pytest.fixture
def vocab():
    return SpeechVocab(["_", "a", "b", "c", "d"], n_dur=8, n_pitch=6, bins=16)


def test_layout_is_contiguous(vocab):
    assert (vocab.ph0, vocab.dur0, vocab.pitch0, vocab.code0, vocab.vocab_size) == (5, 10, 18, 24, 40)
    assert vocab.phoneme_ids(["a", "_"]) == [6, 5]
    with pytest.raises(ValueError, match="unknown phoneme"):
        vocab.phoneme_ids(["a", "ʒ"])


def test_pitch_bins_round_trip(vocab):
    assert vocab.pitch_bin(0.0) == 0 and vocab.pitch_bin(float("nan")) == 0
    assert vocab.pitch_bin(10.0) == 1 and vocab.pitch_bin(5000.0) == vocab.n_pitch - 1
    for b in range(1, vocab.n_pitch):
        assert vocab.pitch_bin(vocab.pitch_hz(b)) == b
    assert math.isnan(vocab.pitch_hz(0))


@pytest.mark.parametrize("f0", [90.0, 150.0, 260.0])
def test_frame_pitch_finds_a_tone_and_silence(f0):
    t = torch.arange(SR) / SR
    wav = torch.cat([0.3 * torch.sin(2 * math.pi * f0 * t), torch.zeros(SR // 2)])
    est = frame_pitch(wav, SR, HOP)
    assert est.shape == (math.ceil(len(wav) / HOP),)
    voiced = est[5:45]
    assert (voiced > 0).all() and (voiced - f0).abs().max() < 0.06 * f0
    assert (est[-15:] == 0).all()                       # silence is unvoiced


def test_frame_bounds_and_prosody(vocab):
    starts = [0, 700, 3300, 3400]                        # 4 phonemes
    b = frame_bounds(starts, 8000, HOP)                  # 25 frames
    assert b == [0, 2, 10, 11, 25]
    t = torch.arange(8000) / SR
    wav = 0.3 * torch.sin(2 * math.pi * 120 * t)
    durs, bins = phoneme_prosody(wav, starts, vocab, SR, HOP)
    assert durs == [2, 8, 1, 14] and sum(durs) == 25
    assert bins[1] == vocab.pitch_bin(120.0)
    assert frame_phoneme(durs, 25).tolist() == [0] * 2 + [1] * 8 + [2] + [3] * 14
    assert frame_phoneme([1, 1], 4).tolist() == [0, 1, 1, 1]   # frames past the durations -> last


def test_ar_row_layout(vocab):
    lay = ar_row(vocab, [6, 7], [3, 9], [1, 0], [4, 5, 6])
    d, p, c = vocab.dur0, vocab.pitch0, vocab.code0
    assert lay.ids == [BOS, 6, 7, PROS, d + 3, p + 1, d + 7, p + 0, SOS, c + 4, c + 5, c + 6, EOS]  # 9 clipped to 7
    assert (lay.n_ph, lay.pros0, lay.sos, lay.n_frames) == (2, 4, 8, 3)
    plain = ar_row(vocab, [6, 7], None, None, [4])
    assert plain.ids == [BOS, 6, 7, SOS, c + 4, EOS] and plain.pros0 == -1


def test_ar_mask_prefix_causal_and_duration_window(vocab):
    ph = [6, 7, 8, 9, 6]
    durs = [1, 1, 1, 1, 2]
    lay = ar_row(vocab, ph, durs, [1] * 5, [1] * 6)
    T = len(lay.ids) + 2                                  # 2 padding slots
    full = ar_mask(lay, T, durs, None)
    assert full[0, :6].all() and full[1, 5]               # bidirectional prefix (<bos> + 5 phonemes)
    assert not full[6, 7] and full[7, 6]                  # causal after it
    assert not full[3, T - 1] and full[T - 1, T - 1]      # padding keys hidden, padding rows see themselves
    m = ar_mask(lay, T, durs, 1)
    q = lay.sos + 2                                       # predicts frame 2 -> phoneme 2 -> window 1..3
    assert m[q, 0] and m[q, lay.sos] and m[q, lay.sos + 1]            # <bos>, <sos>, earlier frames
    assert [bool(m[q, 1 + i]) for i in range(5)] == [False, True, True, True, False]
    assert [bool(m[q, lay.pros0 + 2 * i]) for i in range(5)] == [False, True, True, True, False]
    assert [bool(m[q, lay.pros0 + 2 * i + 1]) for i in range(5)] == [False, True, True, True, False]
    assert torch.equal(m[:lay.sos], full[:lay.sos])       # prosody queries are not windowed


def test_nar_row_and_codec_embed():
    codes = np.arange(12).reshape(3, 4) % 5               # n_q=3, F=4
    tokens, frames = nar_row([6, 7], codes, level=2, n_prompt=1, bins=5)
    assert tokens.ids.tolist() == [BOS, 6, 7, SOS] and frames.ids.tolist() == [PAD] * 4
    c, lv = frames.values
    assert c[0].tolist() == codes[:, 0].tolist()         # prompt frame: every level
    assert c[1].tolist() == [codes[0, 1], codes[1, 1], -1] and lv.tolist() == [0, 2, 2, 2]
    assert frames.head == "nar" and frames.shift == 0 and frames.scored_mask().tolist() == [False, True, True, True]
    assert frames.target[1:].tolist() == (5 + codes[2, 1:]).tolist()   # (level - 1) * bins + code
    x = pack([[tokens, frames]])
    assert x.embed_mask[0].tolist() == [False] * 4 + [True] * 4
    assert x.targets["nar"][0][0].tolist() == [False] * 5 + [True] * 3   # predicted at their own slots
    emb = CodecEmbed(n_q=3, bins=5, dim=8)
    x = emb(x.adapter_inputs["codes"])
    assert x.shape == (1, 8, 8)
    want = emb.codes.weight[codes[0, 1]] + emb.codes.weight[5 + codes[1, 1]] + emb.level.weight[2]
    assert torch.allclose(x[0, 5], want)
    assert torch.equal(x[0, 0], torch.zeros(8))
    assert nar_row([6], codes, level=1, n_prompt=0)[1].head is None        # inference: no targets


def test_ar_segments_score_prosody_codes_and_eos(vocab):
    lay = ar_row(vocab, [6, 7], [3, 1], [1, 0], [4, 5])
    x = pack([ar_segments(lay)])
    assert x.ids[0].tolist() == lay.ids
    want = [-100] * len(lay.ids)
    for t in [*range(lay.pros0, lay.sos), *range(lay.sos + 1, len(lay.ids))]:   # not <pros>, not <sos>
        want[t - 1] = lay.ids[t]
    assert x.targets["lm"][0].tolist() == want
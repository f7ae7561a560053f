"""TTS: the cached RALL-E decoding equals the training forward; synthesis end to end on tiny
random models; the training commands run for 2 steps on a tiny corpus."""
import json

import numpy as np
import pytest
import torch

from apps.tts.model import SpeechModel
from apps.tts.recipe import TTSTask, build_model
from backbone.generate import decode_one_token, prefill
from modalities.speech import SpeechVocab, ar_mask, ar_row, dgm_keys, frame_phoneme
from modalities.speech_codec import Codec
from modalities.speech_corpus import phonemes_of

TINY_CODEC = dict(n_filters=4, dimension=8, ratios=[8, 5, 4, 2], n_q=3, bins=16, lstm=0, mel_scales=[256, 512])
MODEL = {"preset": "tiny", "args": {"block_size": 512}}


@pytest.fixture(scope="module")
def vocab():
    ph = sorted(set(phonemes_of("Hello world. Good morning, how are you? The cat sat on the mat.")) | {"_"})
    return SpeechVocab(ph, n_dur=32, n_pitch=16, bins=16)


def tiny(vocab, cot: bool, dgm_k=1):
    torch.manual_seed(0)
    m = build_model({"model": MODEL, "speech": {"cot": cot, "dgm_k": dgm_k}}, vocab, n_q=3)
    return m.eval()


def test_cached_dgm_decoding_equals_the_training_forward(vocab):
    m = tiny(vocab, cot=True)
    ph = vocab.phoneme_ids(["h", "ə", "l", "oʊ", "_"])
    durs, pitch = [2, 1, 3, 2, 1], [3, 4, 0, 5, 0]
    codes0 = [1, 5, 7, 2, 9, 9, 3, 0, 4]
    lay = ar_row(vocab, ph, durs, pitch, codes0, eos=False)
    T = len(lay.ids)
    ids = torch.tensor([lay.ids])
    full = m.backbone(input_ids=ids, mask=ar_mask(lay, T, durs, 1)[None, None])          # (1, T, D)
    prefix = lay.pros0                                    # <bos> phonemes <pros>
    block = torch.cat([torch.zeros(lay.n_ph + 1, dtype=torch.long), torch.arange(1, prefix - lay.n_ph)])
    h, state = prefill(m, ids[:, :prefix], torch.ones(1, prefix, dtype=torch.long), T, block_ids=block)
    assert torch.allclose(h, full[:, prefix - 1], atol=1e-5)
    owner = frame_phoneme(durs, len(codes0))
    for t in range(prefix, T):
        mask = None
        if t >= lay.sos:
            f = min(t - lay.sos, len(codes0) - 1)
            keys = dgm_keys(state.next_slot + 1, lay.n_ph, lay.pros0, int(owner[f]), 1)
            assert torch.equal(keys, ar_mask(lay, T, durs, 1)[t, :t + 1])
            mask = keys[None, None, None, :]
        h = decode_one_token(m, ids[:, t], state, mask=mask)
        assert torch.allclose(h, full[:, t], atol=1e-5), t


class OneUtterance:
    """SpeechData with one utterance: phonemes a b, durations 1 0, pitch 3 0, one frame of codes 5, 7."""
    vocab = SpeechVocab(["a", "b"], bins=16)
    all_codes = torch.tensor([[5], [7]])
    items = [{"split": s, "phonemes": ["a", "b"], "durs": [1, 0], "pitch": [3, 0], "F": 1} for s in ("train", "val")]

    def rows(self, split):
        return [r for r in self.items if r["split"] == split]

    def codes(self, r):
        return self.all_codes


def test_task_batch_by_hand():
    """One AR row (RALL-E) and one NAR row (n_q = 2: level 1; one frame: no acoustic prompt), packed."""
    b = TTSTask(OneUtterance(), batch_size=2, cot=True, dgm_k=1).train_batch(0, 0, slice(0, 2))
    # vocab: specials 0-4, phonemes a=5 b=6, durations from 7, pitch bins from 39, codes from 55
    assert b["input_ids"].tolist() == [[1, 5, 6, 2, 8, 42, 7, 39, 3, 60, 4], [1, 5, 6, 3, 0] + [0] * 6]
    lm = [-100] * 3 + [8, 42, 7, 39, -100, 60, 4, -100]     # prosody, codes, <eos>; not <pros>, <sos>
    assert b["targets"]["lm"].tolist() == [lm, [-100] * 11]
    sel, tgt = b["targets"]["nar"]
    assert sel.nonzero().tolist() == [[1, 4]] and tgt.tolist() == [7]   # level 1's code of the frame
    codes, level = b["adapter_inputs"]["codes"]
    assert b["embed_mask"].nonzero().tolist() == [[1, 4]]
    assert codes[1, 4].tolist() == [5, -1] and level[1, 4] == 1 and (codes[0] == -1).all() and level.sum() == 1
    m = b["mask"][:, 0]
    assert m[0, :3, :3].all() and not m[0, 2, 3] and m[0, 10, :11].all()  # prefix-LM; the window spans a, b
    assert m[1, :5, :5].all() and not m[1, :5, 5:].any() and m[1, 7, 7] and not m[1, 7, 6]
    half = TTSTask(OneUtterance(), batch_size=2, cot=True, dgm_k=1).train_batch(0, 0, slice(1, 2))
    assert half["input_ids"].tolist() == b["input_ids"][1:].tolist() and half["targets"]["nar"][1].tolist() == [7]


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return Codec(TINY_CODEC).eval()


@pytest.mark.parametrize("cot", [True, False])
def test_synthesize_end_to_end(vocab, codec, cot):
    tts = SpeechModel(tiny(vocab, cot), codec)
    out = tts.synthesize("Hello world.", seed=0, max_frames=30)
    assert out.wav.dtype == np.float32 and out.sample_rate == 16000
    assert len(out.wav) == out.n_frames * 320 and 0 < out.n_frames <= 30
    assert np.isfinite(out.wav).all() and np.abs(out.wav).max() <= 1.0
    assert out.phonemes == phonemes_of("Hello world.")
    if cot:
        assert len(out.durations) == len(out.pitch) == len(out.phonemes)
        assert out.n_frames == min(sum(out.durations), 30)       # stops where the durations say
    else:
        assert out.durations == [] and out.pitch == []
    again = tts.synthesize("Hello world.", seed=0, max_frames=30)
    assert np.array_equal(again.wav, out.wav)                     # seeded


def test_voice_prompt_and_bad_input(vocab, codec):
    from modalities.speech_corpus import synth
    wav, events = synth("Good morning.", "en-us+m3")
    tts = SpeechModel(tiny(vocab, True), codec)
    out = tts.synthesize("The cat.", prompt_wav=wav, prompt_text="Good morning.",
                         prompt_starts=[s for _, s in events], max_frames=20)
    assert out.n_frames > 0
    with pytest.raises(ValueError, match="transcript"):
        tts.synthesize("The cat.", prompt_wav=wav)
    with pytest.raises(ValueError, match="CTC aligner"):      # no aligner and no event timings
        tts.synthesize("The cat.", prompt_wav=wav, prompt_text="Good morning.")
    with pytest.raises(ValueError):
        tts.synthesize("   ")


@pytest.mark.slow
def test_train_codec_and_tts_commands_two_steps(tmp_path, vocab):
    """The real commands on a tiny corpus: omniar train codec, then train tts (both switches)."""
    import yaml
    from apps.cli import main
    corpus = tmp_path / "corpus"
    codec_cfg = {"out": str(tmp_path / "codec"), "codec": TINY_CODEC,
                 "data": {"folder": str(corpus), "n_train": 6, "n_val": 2, "n_test": 2, "seconds": 0.5},
                 "train": {"out_dir": str(tmp_path / "run_codec"), "max_steps": 2, "batch_size": 2,
                           "eval_every": 0, "ckpt_every": 0, "progress": False}}
    (tmp_path / "codec.yaml").write_text(yaml.safe_dump(codec_cfg))
    assert main(["train", "codec", "--config", str(tmp_path / "codec.yaml")]) in (0, None)
    assert Codec.from_pretrained(tmp_path / "codec").n_q == 3
    for cot in (True, False):
        cfg = {"out": str(tmp_path / f"tts{cot}"), "codec": str(tmp_path / "codec"),
               "data": {"folder": str(corpus), "prepared": str(tmp_path / "prepared")},
               "speech": {"cot": cot}, "model": MODEL,
               "train": {"out_dir": str(tmp_path / f"run{cot}"), "max_steps": 2, "batch_size": 4,
                         "eval_every": 0, "ckpt_every": 0, "progress": False}}
        (tmp_path / "tts.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "tts", "--config", str(tmp_path / "tts.yaml")]) in (0, None)
        meta = json.loads((tmp_path / f"tts{cot}" / "config.json").read_text())["meta"]
        assert meta["cot"] is cot and meta["duration_stop"] is cot
        tts = SpeechModel.from_pretrained(tmp_path / f"tts{cot}", codec=str(tmp_path / "codec"), aligner=None)
        assert tts.synthesize("Hello.", max_frames=10).n_frames > 0


@pytest.mark.parametrize("cot", [True, False])
def test_static_cache_path_gives_the_same_speech(vocab, codec, cot, monkeypatch):
    """``compile=True`` decodes over a static cache of block_size slots with full-width masks; with
    the compiler swapped for the plain step, it must give the very same audio as the dynamic cache."""
    import apps.tts.schedule as schedule
    from backbone.generate import decode_step
    monkeypatch.setattr(schedule, "compiled_decode_step", lambda model: decode_step)
    model = tiny(vocab, cot)
    a = SpeechModel(model, codec).synthesize("Hello world.", seed=3, max_frames=25)
    b = SpeechModel(model, codec, compile=True).synthesize("Hello world.", seed=3, max_frames=25)
    assert a.n_frames == b.n_frames and np.allclose(a.wav, b.wav, atol=1e-5)
    assert a.durations == b.durations and a.pitch == b.pitch


def test_fewer_codebook_levels(vocab, codec):
    tts = SpeechModel(tiny(vocab, True), codec)
    nar, calls = tts.model.heads["nar"], []
    sample = nar.sample
    nar.sample = lambda h, level, **kw: calls.append(level) or sample(h, level, **kw)
    full = tts.synthesize("Hello.", seed=1, max_frames=15)
    assert calls == [1, 2]
    ar_only = tts.synthesize("Hello.", seed=1, max_frames=15, n_levels=1)   # no NAR pass
    assert calls == [1, 2] and ar_only.n_frames == full.n_frames and len(ar_only.wav) == len(full.wav)
    with pytest.raises(ValueError, match="n_levels"):
        tts.synthesize("Hello.", n_levels=4)


def test_batched_speech_equals_solo_for_concurrent_callers():
    """The Speech tab's engine: two users at once (their codec-token steps batched) each get the
    waveform that synthesize gives alone."""
    import threading

    import numpy as np

    from apps.tts.model import BatchedSpeech, SpeechModel
    from backbone.batching import BatchEngine
    sm = SpeechModel.from_pretrained("assets/speech-tts")
    texts = ["Hello there.", "Good morning to you."]
    solo = [sm.synthesize(t, seed=i).wav for i, t in enumerate(texts)]
    engine = BatchEngine(sm.model, max_rows=4).start()
    try:
        bs, out = BatchedSpeech(sm, engine), [None, None]
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, bs.synthesize(texts[i], seed=i).wav))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(a, b) for a, b in zip(out, solo))
        assert max(engine.stats.rows_hist) == 2                       # they shared steps
    finally:
        engine.stop()

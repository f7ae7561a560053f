"""TTS evaluation (issue 4): intelligibility, robustness, prosody, voice cloning and speed.

    python benchmarks/tts_eval.py                      # shipped checkpoints, corpus in runs/speech/corpus

Systems, all on the held-out sentences of the corpus test split (training speakers):
  reference  espeak-ng's own audio (the ceiling)
  codec      the reference encoded and decoded by assets/speech-codec (the codec's ceiling)
  valle      assets/speech-tts-valle (no chain of thought; stops at <eos>)
  ralle      assets/speech-tts (prosody chain of thought, duration-guided masking, duration stop)

Metrics:
  * WER by PocketSphinx with a JSGF word loop over the test vocabulary (benchmarks/metrics/speech_asr.py);
  * PER by the CTC phoneme recogniser trained on espeak-ng reference audio only (assets/speech-ctc);
  * hard set (benchmarks/metrics/speech_hard.py, 50 sentences): skipped words (deletions) and repeated or
    inserted words (insertions) against the reference audio's own counts, and sentences with any;
  * duration / pitch token accuracy of the RALL-E model, teacher-forced on the test split, against
    a per-phoneme majority baseline from the training split;
  * speaker similarity on the held-out voice (never trained on), prompted with one of its clips,
    from the speaker classifier (assets/speech-speaker), calibrated by same / different speaker
    pairs of real clips; the unprompted model is the baseline;
  * real-time factor (synthesis seconds / audio seconds) at --threads threads.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.tts.model import SpeechModel  # noqa: E402
from apps.tts.recipe import SpeechData  # noqa: E402
from benchmarks.common import print_table, write_result  # noqa: E402
from modalities.speech import ar_mask, ar_row  # noqa: E402
from benchmarks.metrics.speech_asr import edit_ops, normalize_words, phoneme_error_rate, pocketsphinx_wer  # noqa: E402
from benchmarks.metrics.speech_checks import SpeakerEncoder, calibrate  # noqa: E402
from modalities.speech_align import CTCRecognizer  # noqa: E402
from modalities.speech_corpus import Corpus  # noqa: E402


def synth_all(tts: SpeechModel, texts: list[str], seed: int, **kw) -> tuple[list[np.ndarray], float, float]:
    """-> (clips, synthesis seconds, audio seconds)."""
    wavs, t_syn, t_audio = [], 0.0, 0.0
    for i, t in enumerate(texts):
        t0 = time.perf_counter()
        out = tts.synthesize(t, seed=seed + i, **kw)
        t_syn += time.perf_counter() - t0
        t_audio += len(out.wav) / out.sample_rate
        wavs.append(out.wav)
    return wavs, t_syn, t_audio


def intelligibility(wavs, texts, phonemes, ctc) -> dict:
    ps = pocketsphinx_wer(wavs, texts)
    per = phoneme_error_rate(phonemes, ctc.transcribe(wavs))
    return {"wer": ps["wer"], "per": per, "deletions": ps["deletions"], "insertions": ps["insertions"],
            "substitutions": ps["substitutions"], "n_words": ps["n_words"], "oov_tokens": ps["oov_tokens"],
            "hyps": ps["hyps"][:5]}


def hard_counts(wavs, texts, phonemes, ctc) -> dict:
    """Skipped and repeated content on the hard set, read two ways: PocketSphinx word deletions and
    insertions, and the CTC recogniser's phoneme deletions and insertions (pauses ignored); a
    sentence is "bad" when it loses or gains at least BAD_PHONEMES phonemes (about a word)."""
    ps = pocketsphinx_wer(wavs, texts)
    per = [edit_ops(normalize_words(r), normalize_words(h)) for r, h in zip(ps["refs"], ps["hyps"])]
    hyp_ph = ctc.transcribe(wavs)
    ph = [edit_ops([p for p in r if p != "_"], [p for p in h if p != "_"]) for r, h in zip(phonemes, hyp_ph)]
    return {"wer": ps["wer"], "skipped_words": sum(p["deletions"] for p in per),
            "repeated_words": sum(p["insertions"] for p in per),
            "bad_sentences_words": sum(1 for p in per if p["deletions"] or p["insertions"]),
            "per": phoneme_error_rate(phonemes, hyp_ph),
            "deleted_phonemes": sum(p["deletions"] for p in ph), "inserted_phonemes": sum(p["insertions"] for p in ph),
            "bad_sentences": sum(1 for p in ph if p["deletions"] >= BAD_PHONEMES or p["insertions"] >= BAD_PHONEMES)}


BAD_PHONEMES = 3


@torch.no_grad()
def prosody_accuracy(tts: SpeechModel, data: SpeechData, split: str = "test") -> dict:
    """Teacher-forced duration and pitch token accuracy (exact and within +-1) of the CoT model,
    with a per-phoneme majority baseline (most frequent duration / pitch bin of each phoneme in
    the training split)."""
    v, m = tts.vocab, tts.model
    train = data.rows("train")
    dur_mode = {p: collections.Counter() for p in v.phonemes}
    pit_mode = {p: collections.Counter() for p in v.phonemes}
    for r in train:
        for p, d, f in zip(r["phonemes"], r["durs"], r["pitch"]):
            dur_mode[p][min(d, v.n_dur - 1)] += 1
            pit_mode[p][f] += 1
    hits = collections.Counter()
    n = 0
    for r in data.rows(split):
        ph = v.phoneme_ids(r["phonemes"])
        lay = ar_row(v, ph, r["durs"], r["pitch"], data.codes(r)[0].tolist())
        ids = torch.tensor([lay.ids], device=tts._device())
        h = m.backbone(input_ids=ids, mask=ar_mask(lay, len(lay.ids), r["durs"], tts.dgm_k)[None, None].to(ids.device))
        logits = m.heads["lm"](h[0]).float()
        P = len(ph)
        pd = logits[lay.pros0 - 1 + 2 * torch.arange(P), v.dur0:v.pitch0].argmax(-1).cpu()
        pp = logits[lay.pros0 + 2 * torch.arange(P), v.pitch0:v.code0].argmax(-1).cpu()
        td = torch.tensor([min(d, v.n_dur - 1) for d in r["durs"]])
        tp = torch.tensor(r["pitch"])
        bd = torch.tensor([dur_mode[p].most_common(1)[0][0] if dur_mode[p] else 0 for p in r["phonemes"]])
        bp = torch.tensor([pit_mode[p].most_common(1)[0][0] if pit_mode[p] else 0 for p in r["phonemes"]])
        for name, pred, tgt in [("dur", pd, td), ("pitch", pp, tp), ("base_dur", bd, td), ("base_pitch", bp, tp)]:
            hits[name] += int((pred == tgt).sum())
            hits[name + "_pm1"] += int(((pred - tgt).abs() <= 1).sum())
        n += P
    return {k: hits[k] / n for k in sorted(hits)} | {"n_phonemes": n}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ralle", default="assets/speech-tts")
    ap.add_argument("--valle", default="assets/speech-tts-valle")
    ap.add_argument("--codec", default="assets/speech-codec")
    ap.add_argument("--ctc", default="assets/speech-ctc")
    ap.add_argument("--speaker", default="assets/speech-speaker")
    ap.add_argument("--corpus", default="runs/speech/corpus")
    ap.add_argument("--prepared", default="runs/speech/tts_data")
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--n-voice", type=int, default=30)
    ap.add_argument("--n-hard", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-rtf", type=int, default=30, help="sentences for the compiled-speed comparison")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile speed row")
    ap.add_argument("--out", default="tts_eval")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Corpus(a.corpus)
    if a.n_hard and not corpus.rows("hard"):
        raise SystemExit(f"{a.corpus} has no hard split: build the corpus with it, "
                         f"python -m benchmarks.metrics.speech_hard --out {a.corpus} --n-train 6000")
    ctc = CTCRecognizer.from_pretrained(a.ctc)
    models = {"valle": SpeechModel.from_pretrained(a.valle, codec=a.codec, aligner=a.ctc),
              "ralle": SpeechModel.from_pretrained(a.ralle, codec=a.codec, aligner=a.ctc)}
    codec = models["ralle"].codec
    test = corpus.rows("test")[:a.n_test]
    texts, phon = [r["text"] for r in test], [r["phonemes"] for r in test]
    result: dict = {"n_test": len(test)}

    # 1. intelligibility on held-out sentences
    refs = [corpus.audio(r).numpy() for r in test]
    t0 = time.perf_counter()
    resyn = [codec.decode(codec.encode(torch.from_numpy(w)))[0, 0, :len(w)].numpy() for w in refs]
    codec_s = time.perf_counter() - t0
    mel = float(np.mean([float(codec.mel_loss(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]))
                         for x, y in zip(resyn, refs)]))
    systems = {"reference": (refs, None), "codec": (resyn, codec_s / sum(len(w) for w in refs) * 16000)}
    for name, tts in models.items():
        tts.synthesize("A warm-up sentence.", seed=0)          # first-call costs are not speech time
        wavs, t_syn, t_audio = synth_all(tts, texts, a.seed)
        systems[name] = (wavs, t_syn / t_audio)
    wavs, t_syn, t_audio = synth_all(models["ralle"], texts, a.seed, n_levels=1)
    systems["ralle, AR level only"] = (wavs, t_syn / t_audio)   # codebook 0 alone: what the NAR adds
    rows = []
    for name, (wavs, rtf) in systems.items():
        r = intelligibility(wavs, texts, phon, ctc)
        r["rtf"] = rtf
        r["seconds"] = float(sum(len(w) for w in wavs) / 16000)
        result[name] = r
        rows.append({"system": name, "WER": f"{r['wer']:.3f}", "PER": f"{r['per']:.3f}",
                     "RTF": "-" if rtf is None else f"{rtf:.3f}", "audio s": f"{r['seconds']:.0f}"})
    result["codec"]["mel_distance"] = mel
    if not a.no_compile:   # the same model with a static cache + torch.compile'd step: speed only
        fast = SpeechModel.from_pretrained(a.ralle, codec=a.codec, aligner=None, compile=True)
        t0 = time.perf_counter()
        fast.synthesize("A warm-up sentence.", seed=0)
        compile_s = time.perf_counter() - t0
        wavs, t_syn, t_audio = synth_all(fast, texts[:a.n_rtf], a.seed)
        _, t_ref, t_ref_audio = synth_all(models["ralle"], texts[:a.n_rtf], a.seed)
        result["rtf_compiled"] = {"ralle_compiled": t_syn / t_audio, "ralle_same_sentences": t_ref / t_ref_audio,
                                  "n": a.n_rtf, "compile_s": compile_s}
        print_table([{"engine": "ralle", "RTF": f"{t_ref / t_ref_audio:.3f}"},
                     {"engine": "ralle, static cache + torch.compile", "RTF": f"{t_syn / t_audio:.3f}"}],
                    ["engine", "RTF"])
        print(f"(first {a.n_rtf} test sentences; one-off compile {compile_s:.0f} s)")
    print_table(rows, ["system", "WER", "PER", "RTF", "audio s"])
    print(f"codec mel distance (EnCodec multi-scale log-mel L1+L2) on {len(test)} test clips: {mel:.3f}")

    # 2. hard set: skipped and repeated words
    hard = corpus.rows("hard")[:a.n_hard]
    htexts = [r["text"] for r in hard]
    hrows = []
    hsys = {"reference": [corpus.audio(r).numpy() for r in hard]}
    for name, tts in models.items():
        hsys[name] = synth_all(tts, htexts, a.seed + 1000)[0]
    hph = [r["phonemes"] for r in hard]
    for name, wavs in hsys.items():
        r = hard_counts(wavs, htexts, hph, ctc)
        result.setdefault("hard", {})[name] = r
        hrows.append({"system": name, "WER": f"{r['wer']:.3f}", "skipped words": r["skipped_words"],
                      "repeated words": r["repeated_words"], "PER": f"{r['per']:.3f}",
                      "phonemes lost": r["deleted_phonemes"], "phonemes added": r["inserted_phonemes"],
                      "bad sentences": f"{r['bad_sentences']}/{len(hard)}"})
    print_table(hrows, ["system", "WER", "skipped words", "repeated words", "PER", "phonemes lost",
                        "phonemes added", "bad sentences"])
    print(f"(words: PocketSphinx deletions / insertions; phonemes: CTC; bad = >= {BAD_PHONEMES} phonemes lost or added)")

    # 3. prosody token accuracy (teacher-forced)
    data = SpeechData(a.prepared)
    pa = prosody_accuracy(models["ralle"], data)
    result["prosody"] = pa
    print_table([{"predictor": "ralle", "dur": f"{pa['dur']:.3f}", "dur ±1": f"{pa['dur_pm1']:.3f}",
                  "pitch": f"{pa['pitch']:.3f}", "pitch ±1": f"{pa['pitch_pm1']:.3f}"},
                 {"predictor": "per-phoneme majority", "dur": f"{pa['base_dur']:.3f}", "dur ±1": f"{pa['base_dur_pm1']:.3f}",
                  "pitch": f"{pa['base_pitch']:.3f}", "pitch ±1": f"{pa['base_pitch_pm1']:.3f}"}],
                ["predictor", "dur", "dur ±1", "pitch", "pitch ±1"])

    # 4. voice cloning on the held-out voice
    enc = SpeakerEncoder.from_pretrained(a.speaker)
    cal = calibrate(enc, corpus)
    voice = corpus.rows("voice")
    prompt, targets = voice[0], voice[1:1 + a.n_voice]
    pw = corpus.audio(prompt).numpy()
    real = enc.embed([corpus.audio(r) for r in targets])
    vt = [r["text"] for r in targets]
    srows = []
    for name, kw in [("ralle, prompted", dict(prompt_wav=pw, prompt_text=prompt["text"], prompt_starts=prompt["starts"])),
                     ("ralle, prompted (CTC-aligned prompt)", dict(prompt_wav=pw, prompt_text=prompt["text"])),
                     ("valle, prompted", dict(prompt_wav=pw, prompt_text=prompt["text"])),
                     ("ralle, no prompt (baseline)", {})]:
        tts = models["valle" if name.startswith("valle") else "ralle"]
        wavs = synth_all(tts, vt, a.seed + 2000, **kw)[0]
        sim = float((enc.embed(wavs) * real).sum(-1).mean())
        result.setdefault("speaker", {})[name] = sim
        srows.append({"system": name, "cosine to the real voice": f"{sim:.3f}"})
    result["speaker"]["calibration"] = cal
    srows += [{"system": "real clips, same speaker (calibration)", "cosine to the real voice": f"{cal['voice_same_mean']:.3f}"},
              {"system": "real clips, other speakers (calibration)", "cosine to the real voice": f"{cal['voice_diff_mean']:.3f}"}]
    print_table(srows, ["system", "cosine to the real voice"])
    print(f"speaker classifier: EER {cal['eer']:.3f} (training speakers, unseen sentences), "
          f"held-out voice EER {cal['voice_eer']:.3f}")

    ref_wer = result["reference"]["wer"]
    result["targets"] = {
        "ralle_wer_le_1.2x_reference": result["ralle"]["wer"] <= 1.2 * ref_wer,
        "ralle_beats_valle_wer": result["ralle"]["wer"] < result["valle"]["wer"],
        "ralle_beats_valle_hard": result["hard"]["ralle"]["bad_sentences"] < result["hard"]["valle"]["bad_sentences"],
        "ralle_rtf_le_0.3": min(result["ralle"]["rtf"], result.get("rtf_compiled", {}).get("ralle_compiled", 9)) <= 0.3}
    print("targets:", result["targets"])
    print("wrote", write_result(a.out, result))
    return result


if __name__ == "__main__":
    main()

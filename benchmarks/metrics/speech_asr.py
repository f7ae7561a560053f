"""Word and phoneme error rates for evaluating text-to-speech:

* ``pocketsphinx_wer``: word error rate of clips read by PocketSphinx 5 (CMU Sphinx; its bundled
  US-English acoustic model and CMUdict) under a JSGF word-loop grammar over the test vocabulary.
  The acoustic model was trained on human speech, so even the espeak-ng references score far from
  0 (about 0.45-0.5 on corpus test clips with a ~60-word grammar); read it relative to the
  references decoded with the same grammar, not as an absolute intelligibility.
* ``phoneme_error_rate`` of the phonemes read by the CTC recogniser (modalities/speech_align.py).

Audio everywhere is mono float at 16 kHz in [-1, 1]: a list of (T,) clips.
"""
from __future__ import annotations

import functools
import re
import tempfile
from pathlib import Path

import numpy as np

from modalities.speech_align import as_clips
from modalities.speech_corpus import PAUSE

# Decoder settings, tuned on the first 10 corpus test clips (a grammar of their 58 words): beams
# 1e-35 instead of 1e-48 (twice as fast, the same WER here; 1e-20 loses the final state and
# returns nothing), word insertion penalty 0.01 instead of 0.65 and no filler words inside the loop
# (fewer runs of short inserted words). With PS_DITHER: WER 0.86 -> 0.47; the next 10 clips: 0.50.
PS_OPTIONS = dict(beam=1e-35, pbeam=1e-35, wbeam=1e-25, wip=1e-2, fsgusefiller=False)
PS_DITHER = 3.0 / 32768             # espeak-ng writes exact digital silence, whose log energies
                                    # hurt PocketSphinx (WER 0.69 -> 0.58); seeded, unlike -dither


# ---- word error rate -----------------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation; apostrophes only inside words ("'Tis so!" -> ['tis', 'so'])."""
    return [w.strip("'") for w in re.findall(r"[a-z']+", text.lower()) if w.strip("'")]


def edit_ops(ref: list, hyp: list) -> dict[str, int]:
    """Levenshtein alignment of two token lists -> {"hits", "substitutions", "deletions",
    "insertions"}; the three error counts sum to the edit distance. Ties prefer a substitution."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), dtype=np.int64)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    ops = dict(hits=0, substitutions=0, deletions=0, insertions=0)
    i, j = n, m
    while i or j:            # walk back along one optimal path
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops["hits" if ref[i - 1] == hyp[j - 1] else "substitutions"] += 1
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            ops["deletions"] += 1
            i -= 1
        else:
            ops["insertions"] += 1
            j -= 1
    return ops


def _error_rate(refs: list[list], hyps: list[list]) -> float:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    n = sum(len(r) for r in refs)
    if n == 0:
        raise ValueError("the references hold no tokens")
    errors = sum(sum(v for k, v in edit_ops(r, h).items() if k != "hits") for r, h in zip(refs, hyps))
    return errors / n


def wer(refs: list, hyps: list) -> float:
    """Corpus word error rate: total word edits / total reference words. Each item is a text
    (normalised with normalize_words) or a list of words; can exceed 1 with insertions."""
    as_words = lambda t: normalize_words(t) if isinstance(t, str) else list(t)   # noqa: E731
    return _error_rate([as_words(r) for r in refs], [as_words(h) for h in hyps])


def phoneme_error_rate(refs: list[list[str]], hyps: list[list[str]]) -> float:
    """Corpus phoneme error rate of phoneme lists, pauses ('_') removed on both sides (where
    espeak-ng pauses is a prosody choice, not a pronunciation)."""
    strip = lambda ps: [p for p in ps if p != PAUSE]    # noqa: E731
    return _error_rate([strip(r) for r in refs], [strip(h) for h in hyps])


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[str]]:
    """PocketSphinx's bundled CMUdict: word -> pronunciations (ARPAbet strings)."""
    from pocketsphinx import get_model_path  # optional: only the WER benchmark needs PocketSphinx
    prons: dict[str, list[str]] = {}
    with open(get_model_path("en-us/cmudict-en-us.dict"), encoding="utf-8") as f:
        for line in f:
            word, pron = line.split(maxsplit=1)
            prons.setdefault(re.sub(r"\(\d+\)$", "", word), []).append(pron.split("#")[0].strip())
    return prons


def pocketsphinx_wer(wavs, refs: list[str], vocab: list[str] | None = None, seed: int = 0) -> dict:
    """Read clips (list of (T,) float at 16 kHz) with PocketSphinx and score against ``refs`` (texts).

    The grammar is a loop over the vocabulary words, ``public <utt> = (w1 | w2 | ...)+``: any word
    sequence, no language model, so the score is about the acoustics. ``vocab`` defaults to every
    word of ``refs``. Words not in CMUdict (after also trying a leading/trailing apostrophe, for
    'tis) cannot be recognised: they are left out of the grammar and count as errors; "oov" lists
    them and "oov_tokens" counts their occurrences in the references.

    Returns {"wer", "n_words", "substitutions", "deletions", "insertions", "hyps" (normalised
    texts), "refs" (normalised texts), "vocab_size", "oov", "oov_tokens"}."""
    from pocketsphinx import Decoder, get_model_path  # optional: only the WER benchmark needs PocketSphinx
    clips = as_clips(wavs)
    if len(refs) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(refs)} reference texts")
    ref_words = [normalize_words(r) for r in refs]
    words = sorted({w for ws in ref_words for w in ws} if vocab is None else {w for v in vocab for w in normalize_words(v)})
    prons, entry, oov = _cmudict(), {}, []
    for w in words:
        found = [c for c in (w, f"'{w}", f"{w}'") if c in prons]
        if found:
            entry[w] = found[0]
        else:
            oov.append(w)
    if not entry:
        raise ValueError(f"none of the {len(words)} vocabulary words is in CMUdict")
    grammar = f"#JSGF V1.0;\ngrammar loop;\npublic <utt> = ( {' | '.join(sorted(entry.values()))} )+ ;\n"
    hyps = []
    with tempfile.TemporaryDirectory() as tmp:
        # a dictionary of just the grammar words: loading all 135k CMUdict entries takes longer
        # than decoding a few clips
        lines = [f"{e}{'' if k == 0 else f'({k + 1})'} {p}" for e in sorted(entry.values())
                 for k, p in enumerate(prons[e])]
        Path(tmp, "vocab.dict").write_text("\n".join(lines) + "\n", encoding="utf-8")
        dec = Decoder(hmm=get_model_path("en-us/en-us"), dict=str(Path(tmp, "vocab.dict")), lm=None,
                      loglevel="FATAL", **PS_OPTIONS)
        dec.add_jsgf_string("loop", grammar)
        dec.activate_search("loop")
        for i, clip in enumerate(clips):
            x = clip.numpy().astype(np.float64) + np.random.default_rng(seed + i).normal(0, PS_DITHER, len(clip))
            dec.start_utt()
            dec.process_raw(np.clip(np.rint(x * 32767), -32768, 32767).astype(np.int16).tobytes(), full_utt=True)
            dec.end_utt()
            hyp = dec.hyp()
            hyps.append(normalize_words(hyp.hypstr) if hyp is not None else [])
    totals = dict(hits=0, substitutions=0, deletions=0, insertions=0)
    for r, h in zip(ref_words, hyps):
        for k, v in edit_ops(r, h).items():
            totals[k] += v
    n = sum(map(len, ref_words))
    oov_set = set(oov)
    return {"wer": (totals["substitutions"] + totals["deletions"] + totals["insertions"]) / max(n, 1),
            "n_words": n, **{k: totals[k] for k in ("substitutions", "deletions", "insertions")},
            "hyps": [" ".join(h) for h in hyps], "refs": [" ".join(r) for r in ref_words],
            "vocab_size": len(entry), "oov": oov, "oov_tokens": sum(w in oov_set for ws in ref_words for w in ws)}



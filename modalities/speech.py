"""Speech as backbone inputs: phonemes, prosody tokens (RALL-E) and EnCodec codes (VALL-E).

One joint vocabulary serves the autoregressive (AR) rows::

    specials | phonemes (IPA, "_" = pause) | durations 0..N_DUR-1 (codec frames) | pitch bins | codes of level 0

An AR row (VALL-E, Wang et al. 2023; with ``cot``, RALL-E, Xin et al. 2024)::

    <bos> ph_1 .. ph_P  [<pros> d_1 f_1 .. d_P f_P]  <sos> c_1 .. c_F <eos>

The phonemes are a bidirectional prefix (prefix-LM); everything after is causal. RALL-E's chain
of thought predicts each phoneme's duration d_i (frames) and pitch bin f_i before any speech
token. With duration-guided masking (``dgm_k``), the query that predicts frame t sees only the
phonemes (and their prosody tokens) within +-k of the phoneme that frame t belongs to (RALL-E
Sec. 3.3; k = 1 was best), besides <bos> and all earlier speech tokens.

A NAR row (VALL-E's non-autoregressive stage) predicts codebook j >= 1 from the phonemes and
codebooks < j, all bidirectional; its frames are continuous inputs (the sum of the code
embeddings of levels < j plus a learned embedding of j; ``CodecEmbed``). A random leading span of
the row keeps all its levels, as the voice prompt does at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbone.sequence import Segment

PAD, BOS, PROS, SOS, EOS = 0, 1, 2, 3, 4
N_SPECIAL = 5
PAUSE = "_"


@dataclass
class SpeechVocab:
    """The joint token layout. ``phonemes``: the IPA inventory (from the training corpus)."""
    phonemes: list[str]
    n_dur: int = 32          # durations 0..31 codec frames (0.62 s at 50 frames/s), longer ones clipped
    n_pitch: int = 16        # bin 0 = unvoiced, 1..15 log-spaced over [f_min, f_max]
    bins: int = 512          # codec codebook size
    f_min: float = 70.0
    f_max: float = 400.0

    def __post_init__(self):
        self.index = {p: i for i, p in enumerate(self.phonemes)}
        self.ph0 = N_SPECIAL
        self.dur0 = self.ph0 + len(self.phonemes)
        self.pitch0 = self.dur0 + self.n_dur
        self.code0 = self.pitch0 + self.n_pitch
        self.vocab_size = self.code0 + self.bins

    def to_dict(self) -> dict:
        return {"phonemes": self.phonemes, "n_dur": self.n_dur, "n_pitch": self.n_pitch, "bins": self.bins,
                "f_min": self.f_min, "f_max": self.f_max}

    def phoneme_ids(self, phonemes: list[str]) -> list[int]:
        """IPA list -> token ids. An unknown phoneme raises ValueError naming it."""
        unknown = sorted({p for p in phonemes if p not in self.index})
        if unknown:
            raise ValueError(f"unknown phoneme(s) {unknown}: not in the model's inventory")
        return [self.ph0 + self.index[p] for p in phonemes]

    def pitch_bin(self, hz: float) -> int:
        """Hz (<= 0 or nan = unvoiced) -> bin 0..n_pitch-1, log-spaced."""
        if not hz > 0:
            return 0
        r = (math.log(hz) - math.log(self.f_min)) / (math.log(self.f_max) - math.log(self.f_min))
        return 1 + int(min(max(r, 0.0), 0.999999) * (self.n_pitch - 1))

    def pitch_hz(self, b: int) -> float:
        """Bin -> its centre in Hz (nan for 0, unvoiced)."""
        if b <= 0:
            return float("nan")
        lo, hi = math.log(self.f_min), math.log(self.f_max)
        return math.exp(lo + (b - 0.5) / (self.n_pitch - 1) * (hi - lo))


# ---- prosody ------------------------------------------------------------------------------------
def frame_pitch(wav: Tensor, sample_rate: int, hop: int, f_min: float = 70.0, f_max: float = 400.0,
                threshold: float = 0.5) -> Tensor:
    """Frame-level F0 by normalised autocorrelation (the core of YIN/RAPT-style trackers), one
    frame per codec frame. torchaudio's ``detect_pitch_frequency`` gives no voicing decision,
    which phoneme-level pitch needs (consonants and pauses are unvoiced), hence this routine.

    wav (T,) float -> (F,) Hz with 0 where unvoiced; F = ceil(T / hop).
    """
    win = 1 << math.ceil(math.log2(2.5 * sample_rate / f_min))          # >= 2.5 periods of f_min
    n_frames = math.ceil(wav.shape[-1] / hop)
    x = torch.nn.functional.pad(wav.float(), (win // 2, win // 2 + n_frames * hop))
    frames = x.unfold(0, win, hop)[:n_frames]                              # (F, win)
    frames = frames - frames.mean(-1, keepdim=True)
    spec = torch.fft.rfft(frames * torch.hann_window(win), n=2 * win)
    ac = torch.fft.irfft(spec.abs().square(), n=2 * win)[:, :win]          # (F, win)
    # normalise by the window's own autocorrelation so long lags are not penalised
    wac = torch.fft.irfft(torch.fft.rfft(torch.hann_window(win), n=2 * win).abs().square(), n=2 * win)[:win]
    ac = ac / ac[:, :1].clamp(min=1e-9) / (wac / wac[0]).clamp(min=1e-3)
    lo, hi = int(sample_rate / f_max), min(int(sample_rate / f_min), win - 1)
    r = ac[:, lo - 1:hi + 2]                                               # (F, lags + 2)
    mid = r[:, 1:-1]
    local = (mid >= r[:, :-2]) & (mid >= r[:, 2:])
    # the shortest lag whose peak is within 10% of the best: a periodic signal also correlates at
    # 2, 3, ... periods, and picking the global maximum would report an octave too low
    ok = local & (mid >= 0.9 * mid.max(-1, keepdim=True).values)
    lag = ok.int().argmax(-1)
    peak = mid.gather(1, lag[:, None])[:, 0]
    rms = frames.square().mean(-1).sqrt()
    voiced = (peak > threshold) & (rms > 0.05 * rms.max().clamp(min=1e-6))
    return torch.where(voiced, sample_rate / (lag + lo).float(), torch.zeros_like(peak))


def frame_bounds(starts: list[int], n_samples: int, hop: int) -> list[int]:
    """Per-phoneme start samples -> frame boundaries b_0..b_P (b_P = number of frames)."""
    n_frames = math.ceil(n_samples / hop)
    b = [min(int(round(s / hop)), n_frames) for s in starts] + [n_frames]
    b[0] = 0
    for i in range(1, len(b)):   # monotone, as rounding may tie
        b[i] = max(b[i], b[i - 1])
    return b


def phoneme_prosody(wav: Tensor, starts: list[int], vocab: SpeechVocab, sample_rate: int, hop: int
                    ) -> tuple[list[int], list[int]]:
    """RALL-E's phoneme-level prosody: (durations in frames (P,), pitch bins (P,)).
    A phoneme's pitch is the mean log-F0 over its voiced frames; 0 if under half are voiced."""
    f0 = frame_pitch(wav, sample_rate, hop, vocab.f_min, vocab.f_max)
    b = frame_bounds(starts, wav.shape[-1], hop)
    durs, bins = [], []
    for i in range(len(starts)):
        seg = f0[b[i]:b[i + 1]]
        v = seg[seg > 0]
        durs.append(b[i + 1] - b[i])
        bins.append(vocab.pitch_bin(float(v.log().mean().exp())) if len(seg) and len(v) * 2 >= len(seg) else 0)
    return durs, bins


# ---- sequences ----------------------------------------------------------------------------------
@dataclass
class ARLayout:
    """Where things sit in one AR row (token ids + index spans)."""
    ids: list[int]
    n_ph: int            # phonemes at 1..n_ph
    pros0: int           # first prosody token (d_1) position, -1 without CoT
    sos: int             # position of <sos>
    n_frames: int        # speech tokens at sos+1 .. sos+n_frames, then <eos>


def ar_row(vocab: SpeechVocab, ph_ids: list[int], durs: list[int] | None, pitch: list[int] | None,
           codes0: list[int], eos: bool = True) -> ARLayout:
    """Token ids of one AR row. ``durs``/``pitch`` None = no chain of thought (VALL-E)."""
    ids = [BOS] + ph_ids
    pros0 = -1
    if durs is not None:
        ids.append(PROS)
        pros0 = len(ids)
        for d, f in zip(durs, pitch):
            ids += [vocab.dur0 + min(d, vocab.n_dur - 1), vocab.pitch0 + f]
    sos = len(ids)
    ids += [SOS] + [vocab.code0 + c for c in codes0] + ([EOS] if eos else [])
    return ARLayout(ids, len(ph_ids), pros0, sos, len(codes0))


def frame_phoneme(durs: list[int], n_frames: int) -> Tensor:
    """(n_frames,) index of the phoneme each frame belongs to (frames past the durations -> last)."""
    owner = torch.repeat_interleave(torch.arange(len(durs)), torch.as_tensor(durs, dtype=torch.long))
    if len(owner) < n_frames:
        owner = torch.cat([owner, owner.new_full((n_frames - len(owner),), len(durs) - 1)])
    return owner[:n_frames]


def ar_mask(lay: ARLayout, T: int, durs: list[int] | None, dgm_k: int | None) -> Tensor:
    """(T, T) bool attention mask of one AR row padded to T (True = may attend).

    Prefix-LM over <bos> + phonemes, causal after. With ``dgm_k`` (and durations), a speech query
    (<sos> .. last frame; it predicts frame t+1) sees <bos>, <pros>, <sos>, the phonemes and
    prosody tokens within +-k of frame t+1's phoneme, and every earlier speech token."""
    L = len(lay.ids)
    i = torch.arange(T)
    prefix = lay.n_ph + 1
    block = torch.where(i < prefix, torch.zeros_like(i), i - prefix + 1)
    m = block[None, :] <= block[:, None]                                          # (T, T)
    m &= (i < L)[None, :]
    if dgm_k is not None and durs is not None:
        q = torch.arange(lay.sos, L)                                              # speech queries
        tgt_frame = (q - lay.sos).clamp(max=lay.n_frames - 1)                     # frame being predicted
        owner = frame_phoneme(durs, lay.n_frames)[tgt_frame]                      # (Q,)
        ph = torch.arange(lay.n_ph)                                               # phoneme i at 1+i
        far = (ph[None, :] - owner[:, None]).abs() > dgm_k                        # (Q, P)
        m[q[:, None], 1 + ph[None, :]] &= ~far
        if lay.pros0 >= 0:
            m[q[:, None], lay.pros0 + 2 * ph[None, :]] &= ~far
            m[q[:, None], lay.pros0 + 2 * ph[None, :] + 1] &= ~far
    m |= torch.eye(T, dtype=torch.bool)                                           # padding rows see themselves
    return m


def dgm_keys(S: int, n_ph: int, pros0: int, owner: int, k: int, device=None) -> Tensor:
    """One decoding step's keys under duration-guided masking: (S,) bool over the S written slots
    of an AR row (<bos> at 0, phonemes at 1..n_ph, prosody pairs from ``pros0``, -1 = none), for the
    query predicting a frame of phoneme ``owner``. Equals row q of ``ar_mask`` up to slot q."""
    keep = torch.ones(S, dtype=torch.bool, device=device)
    far = (torch.arange(n_ph, device=device) - owner).abs() > k
    keep[1:1 + n_ph] &= ~far
    if pros0 >= 0:
        keep[pros0:pros0 + 2 * n_ph:2] &= ~far
        keep[pros0 + 1:pros0 + 2 * n_ph:2] &= ~far
    return keep


class CodecEmbed(nn.Module):
    """NAR frame inputs: sum of the code embeddings of the given levels plus the embedding of the
    level to predict (VALL-E's NAR conditions on the codebook index).

    raw = (codes (B, T, n_q) long, -1 where a level is absent; level (B, T) long, 0 = none), the
    tuple ``pack`` gives for the segments of ``nar_row`` -> (B, T, D)."""

    def __init__(self, n_q: int, bins: int, dim: int):
        super().__init__()
        self.n_q, self.bins = n_q, bins
        self.codes = nn.Embedding(n_q * bins, dim)
        self.level = nn.Embedding(n_q, dim)
        nn.init.normal_(self.codes.weight, std=0.02)
        nn.init.normal_(self.level.weight, std=0.02)

    def forward(self, raw: tuple[Tensor, Tensor]) -> Tensor:
        codes, level = raw
        present = codes >= 0
        ids = codes.clamp(min=0) + torch.arange(self.n_q, device=codes.device) * self.bins   # (B, T, n_q)
        x = (self.codes(ids) * present.unsqueeze(-1).to(self.codes.weight.dtype)).sum(-2)   # (B, T, D)
        return x + self.level(level) * (level > 0).unsqueeze(-1).to(x.dtype)


def ar_segments(lay: ARLayout) -> list[Segment]:
    """An AR row as segments: the LM head predicts the prosody tokens, the codes and <eos>, each
    from the position before; <bos>, the phonemes, <pros> and <sos> are given, never predicted.
    The row's attention (prefix-LM, RALL-E's duration window) is ``ar_mask``, not block ids."""
    ids, segs = lay.ids, [Segment(lay.ids[:lay.n_ph + 1], kind="phonemes")]
    if lay.pros0 >= 0:
        segs += [Segment(ids[lay.n_ph + 1:lay.pros0]), Segment(ids[lay.pros0:lay.sos], kind="prosody", head="lm")]
    return segs + [Segment(ids[lay.sos:lay.sos + 1]), Segment(ids[lay.sos + 1:], kind="codes", head="lm")]


def nar_row(ph_ids: list[int], codes, level: int, n_prompt: int, bins: int | None = None) -> list[Segment]:
    """One NAR row as segments: <bos> phonemes <sos> (tokens), then one slot per frame whose input
    is the ``codes`` adapter's (CodecEmbed): frames < n_prompt keep every level (the acoustic
    prompt), the rest carry levels < ``level`` and the level to predict. codes (n_q, F) ints.
    With ``bins`` (training), the frames from n_prompt on are the "nar" head's targets, predicted
    at their own positions: (level - 1) * bins + code. The whole row is one bidirectional block."""
    codes = torch.as_tensor(codes, dtype=torch.long)
    n_q, F = codes.shape
    c = torch.full((F, n_q), -1, dtype=torch.long)
    lv = torch.zeros(F, dtype=torch.long)
    c[:n_prompt] = codes[:, :n_prompt].T
    c[n_prompt:, :level] = codes[:level, n_prompt:].T
    lv[n_prompt:] = level
    head = {} if bins is None else dict(head="nar", target=(level - 1) * bins + codes[level], shift=0,
                                        scored=torch.arange(F) >= n_prompt)
    return [Segment([BOS] + ph_ids + [SOS], kind="phonemes"),
            Segment([PAD] * F, kind="codes", adapter="codes", values=(c, lv), fills=(-1, 0), **head)]

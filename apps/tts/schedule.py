"""Text-to-speech as one schedule over the generation loop (backbone/generate.py):
RALL-E prosody tokens -> AR codec codes (codebook 0) -> NAR codebooks 1..n_levels-1.

    sched = SpeechSchedule(model, vocab, ph_ids, n_text, codes_p, durs_p, pitch_p, cot=True, ...)
    codes, durs, pitch = run_to_end(model, sched)     # codes (n_q, F), the prompt's frames first

The steps, one utterance (B = 1) over one KV cache:

1. prefill ``<bos>`` + phonemes (the prompt's, then the text's) as a bidirectional prefix; with
   RALL-E's chain of thought also ``<pros>`` + the prompt's prosody tokens;
2. RALL-E: the LM head samples a duration, then a pitch token per phoneme of the text, each from its
   own sub-vocabulary (``allowed``);
3. ``<sos>`` and the prompt's level-0 codes follow by rule (fed, never sampled); then the LM head
   samples codes until the predicted number of frames (RALL-E) or ``<eos>`` (VALL-E). With
   duration-guided masking each step's query sees only the phonemes within +-k of the phoneme its
   frame belongs to: a per-step mask (``Feed.mask``);
4. NAR: each level 1..n_levels-1 is a fresh prefill of the whole row (one bidirectional block,
   the frames as ``codes`` adapter inputs), and the codebook head picks that level's codes, greedy.
"""
from __future__ import annotations

import torch
from torch import Tensor

from backbone.generate import Feed, Prompt, Schedule, Step, compiled_decode_step
from backbone.sampling import SamplingParams
from backbone.sequence import Segment, pack
from modalities.speech import BOS, EOS, PROS, SOS, SpeechVocab, dgm_keys, frame_phoneme, nar_row


class SpeechSchedule(Schedule):
    """One utterance. ph_ids: the prompt's then the text's phoneme ids; ``n_text`` of them are the
    text's. codes_p (n_q, Fp): the voice prompt's codes; durs_p / pitch_p: its prosody (RALL-E),
    or [] (no prompt). ``max_frames``: most frames to speak (default about 4x a typical espeak-ng
    length), within the context. ``compile``: a static cache of block_size slots (one shape, compiled
    once) and a torch.compile'd step. Samples: prosody and code tokens (1,), then NAR codes (F,)."""

    def __init__(self, model, vocab: SpeechVocab, ph_ids: list[int], n_text: int, codes_p: Tensor,
                 durs_p: list[int], pitch_p: list[int], *, cot: bool, dgm_k: int | None, duration_stop: bool,
                 n_levels: int, max_frames: int | None, params: SamplingParams, prosody: SamplingParams,
                 generator: torch.Generator, compile: bool = False):
        self.model, self.v, self.ph_ids, self.n_text = model, vocab, ph_ids, n_text
        self.codes_p, self.durs_p = codes_p, durs_p
        self.cot, self.dgm_k, self.duration_stop = cot, dgm_k, duration_stop
        self.n_levels, self.static = n_levels, compile
        self.params, self.prosody, self.generator = params, prosody, generator
        self.step_fn = compiled_decode_step(model) if compile else None
        self.device = generator.device
        P = len(ph_ids)
        self.ids = [BOS] + ph_ids
        self.pros0 = P + 2                     # first prosody token's slot (after <pros>)
        if cot:
            self.ids += [PROS] + [t for d, f in zip(durs_p, pitch_p)
                                  for t in (vocab.dur0 + min(d, vocab.n_dur - 1), vocab.pitch0 + f)]
        self.slot = len(self.ids)              # the cache slot the next fed token goes to
        block = model.args.block_size
        before = len(self.ids) + (2 * n_text if cot else 0) + 1 + codes_p.shape[1]   # slots before the first new frame
        room = block - before - 1
        if room < 2 * n_text:
            raise ValueError(f"text + voice prompt too long for the model's context ({block} positions): "
                             "use a shorter prompt or split the text into sentences")
        self.cap = min(max_frames or 16 * n_text + 50, room)
        self.max_seq = block if compile else before + self.cap + 1
        self.durs, self.pitch, self.frames = [], [], []
        self.sos_fed, self.owner, self.n_frames = False, None, 0
        self.codes: Tensor | None = None       # (n_q, F) once the AR stage is done
        self.level = 0                         # the NAR level being predicted (0 = AR stage)
        self.dur_ids, self.pitch_ids = self._span(vocab.dur0, vocab.pitch0), self._span(vocab.pitch0, vocab.code0)
        self.code_ids = self._span(vocab.code0, vocab.vocab_size)
        if not duration_stop:
            self.code_ids[EOS] = True          # VALL-E stops at <eos>
        if not cot:
            self._plan_frames()

    def _span(self, lo: int, hi: int) -> Tensor:
        allowed = torch.zeros(self.v.vocab_size, dtype=torch.bool, device=self.device)
        allowed[lo:hi] = True
        return allowed

    def _plan_frames(self):
        """After the prosody: how many frames to speak, and each frame's phoneme (for the DGM window)."""
        self.n_frames = min(sum(self.durs), self.cap) if self.duration_stop else self.cap
        if self.duration_stop and self.n_frames == 0:
            raise ValueError("the model predicted zero frames for this text")
        Fp = self.codes_p.shape[1]
        if self.cot and self.dgm_k is not None:
            self.owner = frame_phoneme(self.durs_p + self.durs, Fp + self.n_frames)

    # ---- the schedule ----------------------------------------------------------------------------
    def prompt(self) -> Prompt:
        P = len(self.ph_ids)
        row = [Segment(self.ids[:P + 1], block=True), Segment(self.ids[P + 1:])]   # prefix-LM
        x = pack([row], side="left")
        return Prompt(x.ids.to(self.device), x.attention_mask.to(self.device), self.max_seq,
                      block_ids=x.block_ids.to(self.device), static=self.static)

    def next(self, h: Tensor) -> Step | Feed | None:
        if self.level:                                                   # 4. a NAR pass ran
            f0 = len(self.ph_ids) + 2 + self.codes_p.shape[1]            # first frame to predict
            return Step("nar", h[0, f0:], {"level": self.level})
        if self.cot and len(self.pitch) < self.n_text:                   # 2. duration, then pitch
            allowed = self.dur_ids if len(self.durs) == len(self.pitch) else self.pitch_ids
            return Step("lm", h[:, -1], {"params": self.prosody, "generator": self.generator, "allowed": allowed})
        if not self.sos_fed:                                             # 3. <sos> follows by rule
            self.sos_fed = True
            return self._token(SOS)
        f = len(self.frames)
        if f < self.codes_p.shape[1]:                                    # the prompt's codes, forced
            self.frames.append(int(self.codes_p[0, f]))
            return self._token(self.v.code0 + self.frames[-1])
        return Step("lm", h[:, -1], {"params": self.params, "generator": self.generator, "allowed": self.code_ids})

    def feed(self, x: Tensor) -> Feed | None:
        v = self.v
        if self.level:                                                   # NAR codes of one level
            self.codes[self.level, self.codes_p.shape[1]:] = x.cpu()
            return self._nar_pass(self.level + 1)
        tok = int(x)
        if self.cot and len(self.pitch) < self.n_text:
            if len(self.durs) == len(self.pitch):
                self.durs.append(tok - v.dur0)
            else:
                self.pitch.append(tok - v.pitch0)
                if len(self.pitch) == self.n_text:
                    self._plan_frames()
            return self._token(tok, window=False)
        if tok != EOS:
            self.frames.append(tok - v.code0)
        if tok == EOS or len(self.frames) == self.codes_p.shape[1] + self.n_frames:
            return self._end_ar()
        return self._token(tok)

    def result(self) -> tuple[Tensor, list[int], list[int]]:
        """-> (codes (n_q, F) long on CPU, the prompt's frames first, durations, pitch bins)."""
        return self.codes, self.durs, self.pitch

    # ---- inputs ------------------------------------------------------------------------------------
    def _token(self, tok: int, window: bool = True) -> Feed:
        """Feed one token at the next slot. Its query predicts frame len(frames): with duration-guided
        masking it sees only the phonemes (and prosody tokens) around that frame's phoneme."""
        mask = None
        if window and self.owner is not None:
            keys = dgm_keys(self.slot + 1, len(self.ph_ids), self.pros0, int(self.owner[len(self.frames)]),
                            self.dgm_k, self.device)
            if self.static:   # the static cache's mask spans every slot; unwritten ones hidden
                keys = torch.cat([keys, keys.new_zeros(self.max_seq - len(keys))])
            mask = keys[None, None, None, :]
        self.slot += 1
        return Feed(ids=torch.tensor([[tok]], device=self.device), mask=mask)

    def _end_ar(self) -> Feed | None:
        Fp = self.codes_p.shape[1]
        if len(self.frames) <= Fp:
            raise ValueError("the model stopped before speaking any frame")
        self.codes = torch.zeros(self.codes_p.shape[0], len(self.frames), dtype=torch.long)
        self.codes[0] = torch.tensor(self.frames)
        self.codes[:, :Fp] = self.codes_p
        return self._nar_pass(1)

    def _nar_pass(self, level: int) -> Feed | None:
        """A fresh prefill of the NAR row for ``level``: fully bidirectional (block ids all 0)."""
        if level >= self.n_levels:
            return None
        self.level = level
        x = pack([nar_row(self.ph_ids, self.codes, level, self.codes_p.shape[1])], side="left")
        dev = self.device
        embeds = self.model.adapters["codes"](tuple(v.to(dev) for v in x.adapter_inputs["codes"]))  # (1, L, D)
        return Feed(prompt=Prompt(x.ids.to(dev), x.attention_mask.to(dev), x.ids.shape[1], embeds,
                                  x.embed_mask.to(dev), block_ids=torch.zeros_like(x.ids, device=dev)))

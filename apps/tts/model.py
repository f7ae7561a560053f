"""Text-to-speech with the shipped codec LM (assets/speech-tts): VALL-E, or RALL-E when the
checkpoint was trained with its chain of thought.

    tts = SpeechModel.from_pretrained("assets/speech-tts")
    out = tts.synthesize("Hello world.")                         # out.wav: float32 at 16 kHz
    out = tts.synthesize("Hello world.", prompt_wav=ref, prompt_text="what the reference says")

Generation (one utterance, KV cache):
  1. prefill <bos> + phonemes (prompt's, then the text's) as a bidirectional prefix; with CoT also
     <pros> + the prompt's prosody tokens (measured on the clip);
  2. RALL-E: sample a duration and a pitch token per phoneme of the text (constrained to those ranges);
  3. <sos>, then the prompt's level-0 codes (forced) and new ones (sampled), each step seeing
     only its +-k phoneme window (duration-guided masking); stop after the predicted number of
     frames (RALL-E) or at <eos> (VALL-E);
  4. NAR: codebooks 1..n_q-1, one bidirectional pass each, greedy;
  5. the codec decodes the text's frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backbone.container import OmniModel
from backbone.generate import compiled_decode_step, decode_one_token, decode_step, prefill
from backbone.sampling import SamplingParams, sample_from_logits
from modalities.speech import (BOS, EOS, PROS, SOS, SpeechVocab, dgm_keys, frame_phoneme, nar_row,
                               phoneme_prosody)
from modalities.speech_codec import Codec

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SpeechResult:
    wav: np.ndarray                 # float32 (T,) in [-1, 1] at sample_rate
    sample_rate: int
    phonemes: list[str]             # IPA of the text, "_" = pause
    durations: list[int] = field(default_factory=list)   # frames per phoneme (RALL-E), else []
    pitch: list[int] = field(default_factory=list)       # pitch bin per phoneme, 0 = unvoiced
    pitch_hz: list[float] = field(default_factory=list)  # bin centres, nan = unvoiced
    n_frames: int = 0


class SpeechModel:
    MAX_CHARS = 300
    VOICE = "en-us"                  # the phonemiser's language

    def __init__(self, model: OmniModel, codec: Codec, aligner=None, compile: bool = False):
        """``compile=True``: decode with a static cache of block_size slots and a torch.compile'd
        step (gpt-fast style): the same computation, several times faster per step on CPU, after
        a one-off compile (about a minute) in each process."""
        self.model, self.codec, self.aligner, self.compile = model.eval(), codec.eval(), aligner, compile
        meta = model.config["meta"]
        self.vocab = SpeechVocab(**meta["vocab"])
        self.n_q = meta["n_q"]
        self.cot, self.dgm_k, self.duration_stop = meta["cot"], meta.get("dgm_k"), meta.get("duration_stop", False)
        self.sample_rate, self.hop = codec.sample_rate, codec.hop

    @classmethod
    def from_pretrained(cls, folder="assets/speech-tts", codec=None, device=None, aligner="assets/speech-ctc",
                        compile: bool = False):
        model = OmniModel.from_pretrained(folder, device=device)
        codec_dir = codec or model.config["meta"].get("codec", "assets/speech-codec")
        if not Path(codec_dir).is_absolute() and not Path(codec_dir).exists():
            codec_dir = ROOT / codec_dir
        al = None
        if aligner and (Path(aligner).exists() or (ROOT / aligner).exists()):
            from modalities.speech_checks import CTCRecognizer
            al = CTCRecognizer.from_pretrained(aligner if Path(aligner).exists() else ROOT / aligner)
        return cls(model, Codec.from_pretrained(codec_dir, device=device), al, compile)

    # ---- text and prompt ----------------------------------------------------------------------
    def phonemize(self, text: str) -> list[str]:
        """Checked text -> the IPA phonemes espeak-ng speaks for it (ValueError if none)."""
        from apps.tts.checks import check_text
        from modalities.speech_corpus import phonemes_of
        check_text(text, self.MAX_CHARS)
        ph = phonemes_of(text, self.VOICE)
        self.vocab.phoneme_ids(ph)           # unknown symbols -> a clear error
        return ph

    def prompt_inputs(self, wav: np.ndarray, text: str, starts: list[int] | None = None):
        """A voice prompt -> (phonemes, codes (n_q, F), durations, pitch bins). Prosody needs the
        phoneme start samples: given (espeak-ng events), else a CTC forced alignment."""
        ph = self.phonemize(text)
        w = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        codes = self.codec.encode(w.to(self._device()))[0].cpu()
        if not self.cot:
            return ph, codes, None, None
        if starts is None:
            if self.aligner is None:
                raise ValueError("a voice prompt for the RALL-E model needs the CTC aligner (assets/speech-ctc)")
            starts = self.aligner.align(w.numpy(), ph)
        durs, pitch = phoneme_prosody(w, starts, self.vocab, self.sample_rate, self.hop)
        return ph, codes, durs, pitch

    def _device(self):
        return next(self.model.parameters()).device

    # ---- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, text: str, prompt_wav: np.ndarray | None = None, prompt_text: str | None = None,
                   seed: int | None = 0, temperature: float = 1.0, top_k: int = 50, prosody_top_k: int = 5,
                   prompt_starts: list[int] | None = None, max_frames: int | None = None,
                   n_levels: int | None = None) -> SpeechResult:
        """Speak ``text`` (optionally in the voice of ``prompt_wav``, float32 at 16 kHz, whose
        words are ``prompt_text``). ``n_levels``: decode only the first codebooks (1 = the AR
        stage alone, no NAR pass; default: the checkpoint's ``meta.n_levels``, else all n_q).
        Returns a SpeechResult."""
        if (prompt_wav is None) != (prompt_text is None):
            raise ValueError("a voice prompt needs both the clip and its transcript (prompt_text)")
        v, dev = self.vocab, self._device()
        g = torch.Generator(device=dev)
        g.manual_seed(0 if seed is None else int(seed))
        ph_t = self.phonemize(text)
        ph_p, codes_p, durs_p, pitch_p = ([], torch.zeros(self.n_q, 0, dtype=torch.long), [], [])
        if prompt_wav is not None:
            ph_p, codes_p, durs_p, pitch_p = self.prompt_inputs(prompt_wav, prompt_text, prompt_starts)
        ph_ids = v.phoneme_ids(ph_p + ph_t)
        P, Fp = len(ph_ids), codes_p.shape[1]
        ids = [BOS] + ph_ids
        if self.cot:
            ids += [PROS] + [t for d, f in zip(durs_p, pitch_p) for t in (v.dur0 + min(d, v.n_dur - 1), v.pitch0 + f)]
        block = self.model.args.block_size
        # frames budget: about 4x a typical espeak-ng length (4 frames per phoneme), within the context
        before = len(ids) + (2 * len(ph_t) if self.cot else 0) + 1 + Fp       # slots before the first new frame
        room = block - before - 1
        if room < 2 * len(ph_t):
            raise ValueError(f"text + voice prompt too long for the model's context ({block} positions): "
                             "use a shorter prompt or split the text into sentences")
        cap = min(max_frames or 16 * len(ph_t) + 50, room)
        max_seq = block if self.compile else before + cap + 1   # one static shape: compiled once
        step = compiled_decode_step(self.model) if self.compile else decode_step
        x = torch.tensor([ids], device=dev)
        prefix = P + 1
        block_ids = torch.cat([torch.zeros(prefix, dtype=torch.long), torch.arange(1, len(ids) - prefix + 1)])
        h, state = prefill(self.model, x, torch.ones_like(x), max_seq, static=self.compile,
                           block_ids=block_ids.to(dev))
        lm = self.model.heads["lm"]

        def pick(h, lo, hi, k, extra=None):
            logits = lm(h).float()
            allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)
            allowed[lo:hi] = True
            if extra is not None:
                allowed[extra] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
            return sample_from_logits(logits, SamplingParams(temperature=temperature, top_k=k), g)

        # 2. RALL-E chain of thought: duration and pitch per phoneme of the text
        durs_t, pitch_t = [], []
        if self.cot:
            for i in range(len(ph_t)):
                d = pick(h, v.dur0, v.pitch0, prosody_top_k)
                h = decode_one_token(self.model, d, state, step)
                f = pick(h, v.pitch0, v.code0, prosody_top_k)
                h = decode_one_token(self.model, f, state, step)
                durs_t.append(int(d) - v.dur0)
                pitch_t.append(int(f) - v.pitch0)
        # 3. level-0 codes
        n_t = min(sum(durs_t), cap) if self.duration_stop else cap
        if self.duration_stop and n_t == 0:
            raise ValueError("the model predicted zero frames for this text")
        owner = frame_phoneme((durs_p or []) + durs_t, Fp + n_t) if (self.cot and self.dgm_k is not None) else None
        pros0 = prefix + 1
        tok, frames = torch.tensor([SOS], device=dev), []
        for f in range(Fp + n_t):
            mask = None
            if owner is not None:   # the query that predicts frame f sees phonemes owner[f] +- k
                keys = dgm_keys(state.next_slot + 1, P, pros0, int(owner[f]), self.dgm_k, dev)
                if self.compile:   # the static cache's mask spans every slot; unwritten ones hidden
                    keys = torch.cat([keys, keys.new_zeros(max_seq - len(keys))])
                mask = keys[None, None, None, :]
            h = decode_one_token(self.model, tok, state, step, mask=mask)
            if f < Fp:
                tok = codes_p[0, f:f + 1].to(dev) + v.code0
            else:
                tok = pick(h, v.code0, v.vocab_size, top_k, None if self.duration_stop else EOS)
                if int(tok) == EOS:
                    break
            frames.append(int(tok) - v.code0)
        codes0 = torch.tensor(frames, dtype=torch.long)
        if len(codes0) <= Fp:
            raise ValueError("the model stopped before speaking any frame")
        # 4. NAR levels 1..n_q-1
        n_levels = n_levels or self.model.config["meta"].get("n_levels") or self.n_q
        if not 1 <= n_levels <= self.n_q:
            raise ValueError(f"n_levels must be in 1..{self.n_q}, got {n_levels}")
        codes = torch.zeros(self.n_q, len(codes0), dtype=torch.long)
        codes[0] = codes0
        codes[:, :Fp] = codes_p
        nar = self.model.heads["nar"]
        pass     # the NAR passes run without the cache
        for level in range(1, n_levels):
            nids, c, lv, f0 = nar_row(ph_ids, codes.numpy(), level, Fp)
            L = len(nids)
            h = self.model.backbone(input_ids=torch.tensor([nids], device=dev),
                                    embeds=self.model.adapters["codes"]({"codes": c[None].to(dev), "level": lv[None].to(dev)}),
                                    embed_mask=((c >= 0).any(-1) | (lv > 0))[None].to(dev),
                                    mask=torch.ones(1, 1, L, L, dtype=torch.bool, device=dev))
            codes[level, Fp:] = nar.sample(h[0, f0 + Fp:], level).cpu()
        # 5. decode the text's frames
        wav = self.codec.decode(codes[None, :n_levels, Fp:].to(dev))[0, 0].float().cpu().numpy()
        wav = np.clip(wav, -1.0, 1.0).astype(np.float32)
        return SpeechResult(wav, self.sample_rate, ph_t, durs_t, pitch_t, [v.pitch_hz(b) for b in pitch_t],
                            n_frames=len(codes0) - Fp)


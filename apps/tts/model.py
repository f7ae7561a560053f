"""Text-to-speech with the shipped codec LM (assets/speech-tts): VALL-E, or RALL-E when the
checkpoint was trained with its chain of thought.

    tts = SpeechModel.from_pretrained("assets/speech-tts")
    out = tts.synthesize("Hello world.")                         # out.wav: float32 at 16 kHz
    out = tts.synthesize("Hello world.", prompt_wav=ref, prompt_text="what the reference says")
    out = speak(tts, "Any length of text. Sentence by sentence.")
    omniar tts "Hello world." -o out.wav                          # cli_tts

Generation is one schedule over the generation loop (apps/tts/schedule.py): RALL-E's prosody
tokens, the AR codec codes (codebook 0), then the NAR codebooks; the codec decodes the text's frames.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from apps.tts.checks import (FRAME_RATE, MAX_CHARS, PAUSE_S, SAMPLE_RATE, check_settings, check_text,
                             check_voice_prompt, read_reference, split_sentences)
from apps.tts.schedule import SpeechSchedule
from backbone.container import OmniModel
from backbone.generate import run_to_end
from backbone.sampling import SamplingParams
from modalities.speech import SpeechVocab, phoneme_prosody
from modalities.speech_align import CTCRecognizer
from modalities.speech_codec import Codec
from modalities.speech_corpus import phonemes_of

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
        task = model.config["meta"].get("task")
        if task != "tts" or "vocab" not in model.config["meta"]:
            raise ValueError(f"{folder} is a {task or 'non-OmniAR-task'} checkpoint, not a text-to-speech one "
                             "(meta.task 'tts'); try --model assets/speech-tts")
        codec_dir = codec or model.config["meta"].get("codec", "assets/speech-codec")
        if not Path(codec_dir).is_absolute() and not Path(codec_dir).exists():
            codec_dir = ROOT / codec_dir
        al = None
        if aligner and (Path(aligner).exists() or (ROOT / aligner).exists()):
            al = CTCRecognizer.from_pretrained(aligner if Path(aligner).exists() else ROOT / aligner)
        return cls(model, Codec.from_pretrained(codec_dir, device=device), al, compile)

    # ---- text and prompt ----------------------------------------------------------------------
    def phonemize(self, text: str) -> list[str]:
        """Checked text -> the IPA phonemes espeak-ng speaks for it (ValueError if none)."""
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
        sched, finish = self.prepare(text, prompt_wav, prompt_text, seed, temperature, top_k, prosody_top_k,
                                     prompt_starts, max_frames, n_levels)
        return finish(run_to_end(self.model, sched))

    def prepare(self, text: str, prompt_wav: np.ndarray | None = None, prompt_text: str | None = None,
                seed: int | None = 0, temperature: float = 1.0, top_k: int = 50, prosody_top_k: int = 5,
                prompt_starts: list[int] | None = None, max_frames: int | None = None,
                n_levels: int | None = None):
        """``synthesize`` in two halves -> (SpeechSchedule, finish): run the schedule anywhere (alone,
        or as one row of a batching engine, apps/api/workers.py), then ``finish(schedule.result())``
        decodes its codes into a SpeechResult."""
        if (prompt_wav is None) != (prompt_text is None):
            raise ValueError("a voice prompt needs both the clip and its transcript (prompt_text)")
        v, dev = self.vocab, self._device()
        g = torch.Generator(device=dev)
        g.manual_seed(0 if seed is None else int(seed))
        ph_t = self.phonemize(text)
        ph_p, codes_p, durs_p, pitch_p = ([], torch.zeros(self.n_q, 0, dtype=torch.long), [], [])
        if prompt_wav is not None:
            ph_p, codes_p, durs_p, pitch_p = self.prompt_inputs(prompt_wav, prompt_text, prompt_starts)
        n_levels = n_levels or self.model.config["meta"].get("n_levels") or self.n_q
        if not 1 <= n_levels <= self.n_q:
            raise ValueError(f"n_levels must be in 1..{self.n_q}, got {n_levels}")
        sched = SpeechSchedule(
            self.model, v, v.phoneme_ids(ph_p + ph_t), len(ph_t), codes_p, durs_p or [], pitch_p or [],
            cot=self.cot, dgm_k=self.dgm_k, duration_stop=self.duration_stop, n_levels=n_levels,
            max_frames=max_frames, params=SamplingParams(temperature=temperature, top_k=top_k),
            prosody=SamplingParams(temperature=temperature, top_k=prosody_top_k), generator=g, compile=self.compile)
        Fp = codes_p.shape[1]

        @torch.no_grad()
        def finish(result) -> SpeechResult:
            codes, durs_t, pitch_t = result
            wav = self.codec.decode(codes[None, :n_levels, Fp:].to(dev))[0, 0].float().cpu().numpy()
            wav = np.clip(wav, -1.0, 1.0).astype(np.float32)
            return SpeechResult(wav, self.sample_rate, ph_t, durs_t, pitch_t, [v.pitch_hz(b) for b in pitch_t],
                                n_frames=codes.shape[1] - Fp)
        return sched, finish


class BatchedSpeech:
    """A SpeechModel whose syntheses run as rows of a continuous-batching engine
    (backbone/batching.py), so concurrent callers (the app's users, the API's requests) share
    decoding steps; each result equals ``synthesize`` alone. Everything else is the model's."""

    def __init__(self, sm: SpeechModel, engine, timeout: float = 300.0):
        self.sm, self.engine, self.timeout = sm, engine, timeout

    def __getattr__(self, name):
        return getattr(self.sm, name)

    def synthesize(self, text: str, prompt_wav=None, prompt_text=None, seed: int | None = 0,
                   temperature: float = 1.0, **kw) -> SpeechResult:
        return self.synthesize_all([text], prompt_wav, prompt_text, seed, temperature, **kw)[0]

    def synthesize_all(self, texts: list[str], prompt_wav=None, prompt_text=None, seed: int | None = 0,
                       temperature: float = 1.0, timeout: float | None = None, **kw) -> list[SpeechResult]:
        """Several texts (a long text's sentences) as rows decoding together -> their results.
        TimeoutError past ``timeout`` (default: the wrapper's); every row is cancelled if any fails."""
        timeout = self.timeout if timeout is None else timeout
        jobs = [self.sm.prepare(t, prompt_wav, prompt_text, seed, temperature, **kw) for t in texts]
        deadline = time.monotonic() + timeout
        tickets = []
        try:
            for sched, _ in jobs:
                tickets.append(self.engine.submit(sched, timeout=timeout))
            return [finish(t.result(max(0.0, deadline - time.monotonic()) + 1.0))
                    for t, (_, finish) in zip(tickets, jobs)]
        finally:
            for t in tickets:
                t.cancel()        # a no-op for finished rows


def speak(model, text: str, prompt_wav=None, prompt_text=None, seed: int | None = 0,
          temperature: float = 1.0, pause_s: float = PAUSE_S):
    """Speak ``text`` sentence by sentence (split_sentences at model.MAX_CHARS) with one seed and
    join the results: wav gets ``pause_s`` of silence between sentences, and the prosody lists a
    pause phoneme '_' of that many frames (pitch 0, nan Hz), or that many more frames on the
    sentence's own closing '_'. ``model``: a SpeechModel or anything with its ``synthesize``.
    Returns a SpeechResult (durations stay [] for VALL-E)."""
    limit = getattr(model, "MAX_CHARS", MAX_CHARS)
    pieces = split_sentences(text, limit)
    if not pieces:
        check_text(text, limit)                           # raises the user-facing reason
    results = [model.synthesize(check_text(p, limit), prompt_wav, prompt_text, seed=seed, temperature=temperature)
               for p in pieces]
    return join_speech(results, pause_s)


def join_speech(results: list, pause_s: float = PAUSE_S):
    """Sentence results -> one SpeechResult, ``pause_s`` of silence between sentences (see ``speak``)."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    frames = round(pause_s * FRAME_RATE)
    gap = np.zeros(frames * first.sample_rate // FRAME_RATE, np.float32)
    wav, phonemes, durations, pitch, pitch_hz = [], [], [], [], []
    prosody = all(r.durations for r in results)
    for i, r in enumerate(results):
        if i:
            wav.append(gap)
            if phonemes and phonemes[-1] == "_":          # a sentence's closing pause gets longer
                if prosody:
                    durations[-1] += frames
            else:
                phonemes.append("_")
                if prosody:
                    durations.append(frames)
                    pitch.append(0)
                    pitch_hz.append(float("nan"))
        wav.append(np.asarray(r.wav, np.float32))
        phonemes += list(r.phonemes)
        if prosody:
            durations += list(r.durations)
            pitch += list(r.pitch)
            pitch_hz += list(r.pitch_hz)
    extra = {}
    if all(isinstance(getattr(r, "n_frames", None), int) for r in results):   # SpeechResult keeps a frame count
        extra["n_frames"] = sum(r.n_frames for r in results) + frames * (len(results) - 1)
    return dataclasses.replace(first, wav=np.concatenate(wav), phonemes=phonemes, durations=durations,
                               pitch=pitch, pitch_hz=pitch_hz, **extra)


MAX_CLI_CHARS = 5000   # a stated bound on one `omniar tts` call (issue 21: 120,000 characters ran unbounded)


class _Progress:
    """A SpeechModel whose ``synthesize`` calls advance a tqdm bar (one per sentence)."""

    def __init__(self, model, total: int):
        from tqdm import tqdm
        self.model, self.bar = model, tqdm(total=total, unit="sentence", desc="speaking", leave=False)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def synthesize(self, *args, **kw):
        r = self.model.synthesize(*args, **kw)
        self.bar.update()
        return r


def cli_tts(a) -> None:
    """``omniar tts TEXT -o out.wav [--voice-prompt ref.wav --prompt-text ...] [--seed] [--temperature]
    [--model] [--device]``: every input is checked before the model loads."""
    out = Path(a.out)
    if out.suffix.lower() != ".wav":
        raise ValueError(f"-o must name a .wav file, got {a.out}")
    if isinstance(a.text, str) and len(a.text) > MAX_CLI_CHARS:
        raise ValueError(f"the text is {len(a.text)} characters long; `omniar tts` takes at most {MAX_CLI_CHARS} "
                         "(about 5 minutes of speech); split it into several files")
    pieces = split_sentences(a.text)
    if not pieces:
        check_text(a.text)                                # empty / nothing to pronounce: says why
    if a.prompt_text is not None and a.voice_prompt is None:
        raise ValueError("--prompt-text needs --voice-prompt (the clip it transcribes)")
    if a.voice_prompt is not None and not (a.prompt_text or "").strip():
        raise ValueError("--voice-prompt needs --prompt-text: the exact words spoken in the clip")
    seed, temperature = check_settings(a.seed, a.temperature)
    prompt_wav, prompt_text = check_voice_prompt(a.voice_prompt, a.prompt_text)
    for piece in pieces:
        check_text(piece)
    model = SpeechModel.from_pretrained(a.model, device=a.device)
    if prompt_wav is not None and model.sample_rate != SAMPLE_RATE:
        prompt_wav = read_reference(a.voice_prompt, model.sample_rate)
    if len(pieces) > 1:                                   # long work shows its progress, a sentence a step
        model = _Progress(model, len(pieces))
    result = speak(model, a.text, prompt_wav, prompt_text, seed=seed, temperature=temperature)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), np.clip(result.wav, -1, 1), result.sample_rate, subtype="PCM_16")
    except (OSError, RuntimeError) as e:                # soundfile's errors are RuntimeErrors
        raise ValueError(f"cannot write {out}: {e}") from None
    print(f"wrote {out} ({len(result.wav) / result.sample_rate:.1f} s at {result.sample_rate} Hz, "
          f"{len(pieces)} sentence{'s' * (len(pieces) > 1)})")

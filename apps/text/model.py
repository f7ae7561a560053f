"""Text generation for the CLI and the app: a prompt string in, decoded text pieces out.

``generate_tokens`` picks the decoder from the options (plain, drafted or contrastive: schedules
on the one loop of backbone/generate.py); ``stream_text`` turns a prompt into tokens, runs it and
decodes what it yields, honouring stop strings. ``make_drafter`` builds the drafter that
``omniar generate --draft KIND`` names.
"""
from __future__ import annotations

import queue
from typing import Iterator

from torch import Tensor

from backbone.container import OmniModel
from backbone.contrastive import generate_contrastive
from backbone.drafters import HeadDrafter, ModelDrafter, NgramTableDrafter, PromptLookupDrafter
from backbone.generate import TextSchedule, generate
from backbone.sampling import SamplingParams
from backbone.skip import LayerSkip
from backbone.speculative import generate_drafted


def make_drafter(kind: str, model, device: str = "cpu", ngram_n: int = 3, fallback: float | None = None):
    """A drafter for drafted decoding: ``prompt-lookup`` | ``ngram`` (ADED's table, context n-1) |
    ``head`` (the model's draft head) | a draft model folder (same tokenizer).
    ``fallback``: BiLD's fallback policy for a draft model or head (stop drafting when unsure)."""
    if fallback is not None and kind in ("prompt-lookup", "ngram"):
        raise ValueError("--fallback applies to a draft model or the draft head (it reads their confidence)")
    if kind == "prompt-lookup":
        return PromptLookupDrafter()
    if kind == "ngram":
        return NgramTableDrafter(n=ngram_n)
    if kind == "head":
        return HeadDrafter(model, fallback=fallback)
    return ModelDrafter(OmniModel.from_pretrained(kind, device=device), fallback=fallback)


def generate_tokens(model, prompts: list[list[int]], params: SamplingParams, head: str = "lm", pad_id: int = 0,
                    drafter=None, gamma: int = 4, rollback: float | None = None, stats: dict | None = None,
                    compile: bool = False, skip: LayerSkip | None = None) -> Iterator[Tensor]:
    """Stream (B,) token tensors for a batch of prompts with the decoder the options name:
    ``drafter`` (+ ``gamma``, ``rollback``, ``stats``): draft and verify (backbone/speculative.py);
    ``params.penalty_alpha > 0``: contrastive search (backbone/contrastive.py); otherwise plain
    sampling (backbone/generate.py), where ``skip`` applies. ``compile``: plain and drafted."""
    if params.penalty_alpha > 0 and drafter is not None:
        raise ValueError("choose drafting or contrastive search, not both")
    if rollback is not None and drafter is None:
        raise ValueError("rollback is a policy of drafted decoding; give a drafter")
    if skip is not None and (drafter is not None or params.penalty_alpha > 0):
        raise ValueError("layer skipping applies to plain decoding only")
    if drafter is not None:
        return generate_drafted(model, prompts, params, drafter, gamma, head, pad_id, rollback=rollback, stats=stats,
                                compile=compile)
    if params.penalty_alpha > 0:
        if compile:
            raise ValueError("compile applies to plain and drafted decoding")
        return generate_contrastive(model, prompts, params, head, pad_id)
    return generate(model, prompts, params, head, pad_id, compile=compile, skip=skip)


class TextStream:
    """Tokens in, text pieces out, for one prompt: stop tokens, stop strings (text that may start
    a stop string is held back until it cannot), and byte-level BPE's incomplete UTF-8 sequences.

        ts = TextStream(tokenizer, params)
        for t in tokens: piece = ts.push(t); ... if ts.stopped: break
        rest = ts.flush()
    """

    def __init__(self, tokenizer, params: SamplingParams):
        self.tok, self.stop_tokens = tokenizer, set(params.stop_tokens)
        self.stop_strings = [s for s in params.stop_strings if s]
        self.hold = max((len(s) for s in self.stop_strings), default=0)
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False        # a stop token or stop string ended the text

    def push(self, t: int) -> str:
        """One generated token (-1: the row already stopped) -> the text it releases (maybe "")."""
        if self.stopped:
            return ""
        if t < 0 or t in self.stop_tokens:
            self.stopped = True
            return self.flush()
        self.ids.append(t)
        text = self.tok.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._emit(text, cut)
        safe = len(text) - self.hold
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence from byte-level BPE
            safe = min(safe, len(text) - 1)
        return self._emit(text, safe)

    def flush(self) -> str:
        """The end of generation: release what was held back."""
        text = self.tok.decode(self.ids)
        if self.stopped:   # a stop string's text was already cut off by _emit
            cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=len(text))
            return self._emit(text, cut)
        return self._emit(text, len(text))

    def _emit(self, text: str, upto: int) -> str:
        if upto <= len(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted):upto], text[:upto]
        return piece


def stream_text(model, tokenizer, prompt: str, params, head: str = "lm", **generate_kw):
    """Yield decoded text pieces for one prompt, honouring stop strings and stop tokens (TextStream).
    ``generate_kw`` go to ``generate_tokens`` (drafter, gamma, rollback, skip, compile).

    Raises ValueError (clear message) for an empty prompt, unknown characters, a prompt
    longer than the context or absurd sampling settings.
    """
    ids = encode_prompt(tokenizer, prompt, model.args.block_size)
    params.validate()
    ts = TextStream(tokenizer, params)
    for tok in generate_tokens(model, [ids], params, head, **generate_kw):
        piece = ts.push(int(tok[0]))
        if piece:
            yield piece
        if ts.stopped:
            return
    piece = ts.flush()
    if piece:
        yield piece


def stream_text_batched(engine, tokenizer, prompt: str, params, timeout: float | None = None):
    """``stream_text`` as one row of a continuous-batching engine (backbone/batching.py), so
    concurrent callers (the app's users) share decoding steps. Same pieces as ``stream_text``
    for the same settings and seed. Raises QueueFull when the engine's queue is full; closing the
    generator (a user who left) frees the row at the next step."""
    ids = encode_prompt(tokenizer, prompt, engine.model.args.block_size)
    params.validate()
    q: queue.SimpleQueue = queue.SimpleQueue()
    ticket = engine.submit(TextSchedule(engine.model, [ids], params), on_sample=lambda x: q.put(int(x[0])),
                           timeout=timeout, on_end=lambda t: q.put(None))
    ts = TextStream(tokenizer, params)
    try:
        while (tok := q.get()) is not None:
            piece = ts.push(tok)
            if piece:
                yield piece
            if ts.stopped:
                return
        if ticket.reason == "error":
            raise ticket.error
        piece = ts.flush()
        if piece:
            yield piece
    finally:
        ticket.cancel()


def encode_prompt(tokenizer, prompt: str, block_size: int) -> list[int]:
    """A prompt string -> token ids; ValueError (clear message) when empty, not a string, with
    characters the tokenizer does not know, or longer than the context."""
    if not isinstance(prompt, str) or prompt == "":
        raise ValueError("the prompt is empty; type a few characters to start from")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    if len(ids) > block_size:
        raise ValueError(f"prompt is {len(ids)} tokens but the model's context is {block_size}")
    return ids

"""Text generation for the CLI and the app: a prompt string in, decoded text pieces out.

``generate_tokens`` picks the decoder from the options (plain, drafted or contrastive: schedules
on the one loop of backbone/generate.py); ``stream_text`` turns a prompt into tokens, runs it and
decodes what it yields, honouring stop strings. ``make_drafter`` builds the drafter that
``omniar generate --draft KIND`` names.
"""
from __future__ import annotations

from typing import Iterator

from torch import Tensor

from backbone.container import OmniModel
from backbone.contrastive import generate_contrastive
from backbone.drafters import HeadDrafter, ModelDrafter, NgramTableDrafter, PromptLookupDrafter
from backbone.generate import generate
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


def stream_text(model, tokenizer, prompt: str, params, head: str = "lm", **generate_kw):
    """Yield decoded text pieces for one prompt, honouring stop strings and stop tokens.
    ``generate_kw`` go to ``generate_tokens`` (drafter, gamma, rollback, skip, compile).

    Raises ValueError (clear message) for an empty prompt, unknown characters, a prompt
    longer than the context or absurd sampling settings.
    """
    if not isinstance(prompt, str) or prompt == "":
        raise ValueError("the prompt is empty; type a few characters to start from")
    params.validate()
    ids = tokenizer.encode(prompt)
    if len(ids) > model.args.block_size:
        raise ValueError(f"prompt is {len(ids)} tokens but the model's context is {model.args.block_size}")
    out: list[int] = []
    emitted = ""
    hold = max((len(s) for s in params.stop_strings), default=0)  # keep back text a stop string may start
    for tok in generate_tokens(model, [ids], params, head, **generate_kw):
        t = int(tok[0])
        if t < 0 or t in params.stop_tokens:
            break
        out.append(t)
        text = tokenizer.decode(out)
        cut = min((i for i in (text.find(s) for s in params.stop_strings if s) if i >= 0), default=-1)
        if cut >= 0:
            if cut > len(emitted):
                yield text[len(emitted):cut]
            return
        safe = len(text) - hold if hold else len(text)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence from byte-level BPE
            safe = min(safe, len(text) - 1)
        if safe > len(emitted):
            yield text[len(emitted):safe]
            emitted = text[:safe]
    text = tokenizer.decode(out)
    if len(text) > len(emitted):
        yield text[len(emitted):]

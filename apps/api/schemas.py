"""Request bodies of ``omniar serve``, OpenAI's shapes where OpenAI has one.

Parsing is strict: unknown fields are refused (a typo is not silently ignored), a number is a JSON
number (no ``"96"``), a boolean is not a number, and every size has a stated limit. Fields OpenAI
has but this server does not implement are refused when set to anything but their default, with
a message saying so. Extra fields that a model needs (image steps, guidance) follow vLLM's habit of
extending the OpenAI body.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPTS = 16            # prompts per completion request (a list prompt)
MAX_PROMPT_CHARS = 16_000
MAX_STOP, MAX_STOP_CHARS = 4, 64
MAX_N = 8                   # choices per prompt
MAX_IMAGES = 4
MAX_SPEECH_CHARS = 1_000    # speech input per request (OpenAI allows 4096; this CPU model is slower)
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _unsupported(name: str, v, default):
    if v != default:
        raise ValueError(f"{name} is not supported by this server (leave it at {default!r})")
    return v


class StreamOptions(Strict):
    include_usage: bool = False


class CompletionRequest(Strict):
    """POST /v1/completions."""
    model: str = Field(max_length=200)
    prompt: str | list[str] = Field(description="a prompt, or a list of up to 16 prompts")
    max_tokens: int = Field(16, ge=1, description="tokens to generate per choice (the server caps it)")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N, description="choices per prompt; choice i samples with seed + i")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    seed: int | None = Field(None, ge=0, le=2**62)
    echo: bool = False
    user: str | None = Field(None, max_length=256)
    # vLLM-style extras
    top_k: int | None = Field(None, ge=1, le=100_000)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    # OpenAI fields this server does not implement
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts:
            raise ValueError("the prompt list is empty")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"{len(prompts)} prompts; the limit is {MAX_PROMPTS}")
        for p in prompts:
            if p == "":
                raise ValueError("a prompt is empty")
            if len(p) > MAX_PROMPT_CHARS:
                raise ValueError(f"a prompt has {len(p)} characters; the limit is {MAX_PROMPT_CHARS}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"{len(stops)} stop strings; the limit is {MAX_STOP}")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop string needs 1 to {MAX_STOP_CHARS} characters")
        return v

    @field_validator("logprobs", "best_of", "suffix", "logit_bias")
    @classmethod
    def _none(cls, v, info):
        return _unsupported(info.field_name, v, None)

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _zero(cls, v, info):
        return _unsupported(info.field_name, v, 0.0)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ImageRequest(Strict):
    """POST /v1/images/generations (the image is returned as base64 PNG)."""
    model: str | None = Field(None, max_length=200, description="default: the server's image model")
    prompt: str = Field(min_length=1, max_length=1000)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    response_format: Literal["b64_json"] = Field("b64_json", description="b64_json only: the server keeps no files")
    size: str | None = Field(None, max_length=16, description="must be the model's own size, e.g. 32x32")
    user: str | None = Field(None, max_length=256)
    # the model's own options
    steps: int = Field(25, ge=1, le=100, description="denoising steps per patch")
    cfg: float = Field(3.0, ge=0, le=100, description="classifier-free guidance scale (1 = off)")
    temperature: float = Field(1.0, gt=0, le=10)
    seed: int | None = Field(None, ge=0, le=2**62, description="a seeded request runs alone: same seed, same image")
    rerank: int = Field(1, ge=1, le=8, description="draw this many candidates per image and keep the one the "
                        "model's own captioning finds likeliest (costs K generations)")


class SpeechRequest(Strict):
    """POST /v1/audio/speech (returns audio/wav)."""
    model: str | None = Field(None, max_length=200, description="default: the server's speech model")
    input: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS)
    voice: str = Field("alloy", max_length=32, description="one of OpenAI's voice names; each is a fixed "
                       "sampling seed of this single-speaker model, not a different speaker")
    response_format: Literal["wav"] = "wav"
    speed: float = Field(1.0, description="1.0 only")
    temperature: float = Field(1.0, gt=0, le=2)
    seed: int | None = Field(None, ge=0, le=2**62, description="overrides the voice's seed")

    @field_validator("voice")
    @classmethod
    def _voice(cls, v):
        if v not in VOICES:
            raise ValueError(f"unknown voice; choose one of {', '.join(VOICES)}")
        return v

    @field_validator("speed")
    @classmethod
    def _speed(cls, v):
        if not math.isfinite(v) or v != 1.0:
            raise ValueError("speed is not supported by this server (leave it at 1.0)")
        return v

"""What ``omniar serve`` runs requests on: one worker per loaded checkpoint.

* ``TokenWorker`` (text, CIF): a ``BatchEngine`` (backbone/batching.py) in a child process: continuous batching,
  each request a one-row TextSchedule; tokens stream back to the event loop as they are sampled.
* ``SpeechWorker``: the same engine over SpeechSchedule rows (the codec-token AR stage batches;
  every sentence of a request is its own row, so a long text decodes its sentences together).
* ``MicroBatcher`` (images, forecasts): requests with the same options that arrive within a short
  window run as one batched call.

Workers hold no state between requests, so any number of server replicas can serve the same load.
"""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from apps.api.engine_proc import EngineProcess
from apps.forecast.model import Forecaster, check_request
from apps.t2i.model import ImageModel
from apps.text.model import encode_prompt
from apps.tts.checks import check_text, split_sentences
from apps.tts.model import BatchedSpeech, SpeechModel, join_speech
from backbone.batching import BatchEngine, QueueFull
from backbone.sampling import SamplingParams
from modalities.shape_layout import describe
from modalities.text import load_tokenizer


KINDS = {"text": "text", "crystal": "cif", "t2i": "image", "tts": "speech", "forecast": "forecast"}


def checkpoint_kind(folder: str | Path) -> str:
    """text | cif | image | speech | forecast, from the checkpoint's ``meta.task``; ValueError when
    the folder is not a checkpoint this server can serve."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a checkpoint folder (no config.json)")
    try:
        task = json.loads(path.read_text()).get("meta", {}).get("task")
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a JSON object") from None
    if task not in KINDS:
        raise ValueError(f"{folder}: a {task!r} checkpoint; this server serves {', '.join(KINDS)}")
    return KINDS[task]


class TokenWorker:
    """A text or CIF checkpoint behind a continuous-batching engine in a child process, so decoding
    does not share the API's GIL (apps/api/engine_proc.py)."""

    def __init__(self, name: str, folder: str, kind: str, device: str = "cpu", max_rows: int = 32,
                 max_queue: int = 64):
        self.name, self.kind, self.folder = name, kind, folder
        self.tok = load_tokenizer(folder)
        self.eos = getattr(self.tok, "eos_id", None)
        self.engine = EngineProcess(folder, device, max_rows, max_queue, name=f"engine-{name}")
        self.block_size = self.engine.block_size

    def encode(self, prompt: str) -> list[int]:
        """ValueError with the reason for text the tokenizer cannot take or a prompt over the context."""
        return encode_prompt(self.tok, prompt, self.block_size)

    def submit(self, ids: list[int], params: SamplingParams, timeout: float, on_sample, on_end):
        """Start one row -> a handle with ``cancel()``, ``reason``, ``error``; ``on_sample(int)`` for
        each token and ``on_end(handle)`` run on the engine's reader thread. Raises QueueFull."""
        return self.engine.submit(ids, params.validate(), timeout, on_sample, on_end)

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    def free_queue(self) -> int:
        return self.engine.free()

    def close(self):
        self.engine.stop()


class SpeechWorker:
    """A TTS checkpoint: each sentence is a SpeechSchedule row of a continuous-batching engine
    (``BatchedSpeech``, which the Speech tab uses too)."""

    def __init__(self, name: str, folder: str, device: str = "cpu", max_rows: int = 8, max_queue: int = 32):
        self.name, self.kind, self.folder = name, "speech", folder
        sm = SpeechModel.from_pretrained(folder, device=device)
        self.engine = BatchEngine(sm.model, max_rows=max_rows, max_queue=max_queue, name=f"engine-{name}").start()
        self.speech = BatchedSpeech(sm, self.engine)

    def speak(self, text: str, seed: int, temperature: float, timeout: float):
        """Blocking (run it in a thread): text -> SpeechResult, its sentences decoding together.
        ValueError for unspeakable text, QueueFull when busy, TimeoutError past ``timeout``."""
        limit = self.speech.MAX_CHARS
        pieces = split_sentences(text, limit)
        if not pieces:
            check_text(text, limit)
        if len(pieces) > self.free_queue():
            raise QueueFull("the speech queue is full", retry_after=2.0)
        return join_speech(self.speech.synthesize_all([check_text(p, limit) for p in pieces], seed=seed,
                                                      temperature=temperature, timeout=timeout))

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    def free_queue(self) -> int:
        return self.engine.max_queue - self.engine.waiting

    def close(self):
        self.engine.stop()


@dataclass(eq=False)
class _Job:
    key: Any
    items: list
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None
    cancelled: bool = False


class MicroBatcher:
    """Run ``fn(key, items) -> results`` (one result per item) on one worker thread, merging the
    items of queued jobs with the same ``key`` that arrive within ``window_s`` of the first, up to
    ``max_items`` per call. ``max_queue`` jobs may wait; ``submit`` raises QueueFull beyond it."""

    def __init__(self, fn: Callable[[Any, list], list], window_s: float = 0.02, max_items: int = 64,
                 max_queue: int = 32, name: str = "microbatch"):
        self.fn, self.window_s, self.max_items, self.max_queue = fn, window_s, max_items, max_queue
        self.jobs: list[_Job] = []
        self.cv = threading.Condition()
        self.calls = 0
        self.items_done = 0
        self._stop = False
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    @property
    def waiting(self) -> int:
        return len(self.jobs)

    def free_queue(self) -> int:
        return self.max_queue - len(self.jobs)

    def submit(self, key, items: list) -> _Job:
        job = _Job(key, list(items))
        with self.cv:
            if len(self.jobs) >= self.max_queue:
                raise QueueFull(f"{len(self.jobs)} requests are already waiting", retry_after=1.0)
            self.jobs.append(job)
            self.cv.notify()
        return job

    def run_sync(self, key, items: list, timeout: float) -> list:
        """``run`` for a caller's own thread (a Gradio handler)."""
        job = self.submit(key, items)
        if not job.done.wait(timeout):
            job.cancelled = True
            raise TimeoutError("the request took longer than the time limit")
        if job.error is not None:
            raise job.error
        return job.result

    async def run(self, key, items: list, timeout: float) -> list:
        """Submit and wait without blocking the event loop -> the items' results."""
        job = self.submit(key, items)
        try:
            ok = await asyncio.get_running_loop().run_in_executor(None, job.done.wait, timeout)
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        if not ok:
            job.cancelled = True
            raise TimeoutError("the request took longer than the server's time limit")
        if job.error is not None:
            raise job.error
        return job.result

    def close(self):
        with self.cv:
            self._stop = True
            self.cv.notify_all()

    def _loop(self):
        while True:
            with self.cv:
                while not self._stop and not self.jobs:
                    self.cv.wait()
                if self._stop:
                    return
                first = self.jobs[0]
            time.sleep(self.window_s)                        # let same-key requests arrive
            with self.cv:
                batch, n = [], 0
                for j in list(self.jobs):
                    if j.cancelled:
                        self.jobs.remove(j)
                        j.done.set()
                    elif j.key == first.key and (not batch or n + len(j.items) <= self.max_items):
                        batch.append(j)
                        n += len(j.items)
                        self.jobs.remove(j)
            if not batch:
                continue
            items = [x for j in batch for x in j.items]
            try:
                out = self.fn(first.key, items)
                self.calls += 1
                self.items_done += len(items)
                i = 0
                for j in batch:
                    j.result, i = out[i:i + len(j.items)], i + len(j.items)
            except Exception as e:  # noqa: BLE001 - handed to every job of the call
                for j in batch:
                    j.error = e
            for j in batch:
                j.done.set()


class ImageWorker:
    """A text-to-image checkpoint behind a MicroBatcher: one ``text_to_image`` call per batch of
    requests with the same (steps, cfg, temperature, rerank, seed). A seeded request's key is unique,
    so it runs alone and gives what the CLI gives for that seed; unseeded requests share a random
    seed. Each result is (PNG bytes, the image's plan as a line; "" without a layout checkpoint)."""

    def __init__(self, name: str, folder: str, device: str = "cpu", window_s: float = 0.02,
                 max_items: int = 16, max_queue: int = 32):
        self.name, self.kind, self.folder = name, "image", folder
        self.im = ImageModel.from_pretrained(folder, device=device)
        side = getattr(self.im.tok, "size", None)                # square images
        self.size = f"{side}x{side}" if side else None
        self.batcher = MicroBatcher(self._run, window_s, max_items, max_queue, name=f"batch-{name}")

    @property
    def waiting(self) -> int:
        return self.batcher.waiting

    def check(self, prompt: str, size: str | None):
        """ValueError for words the model does not know or a size it cannot make."""
        if size is not None and self.size is not None and size != self.size:
            raise ValueError(f"size {size!r}: this model makes {self.size} images only")
        self.im.check_prompt(prompt)

    def _run(self, key, prompts: list[str]) -> list[tuple[bytes, str]]:
        steps, cfg, temperature, rerank, seeded = key
        seed = seeded[0] if seeded else int(torch.randint(0, 2**31 - 1, ()))
        imgs, plans = self.im.text_to_image(prompts, steps=steps, cfg=cfg, temperature=temperature, seed=seed,
                                            rerank=rerank, return_layouts=True)
        out = []
        for x, plan in zip(imgs, plans):                 # (3, H, W) in [0, 1] -> PNG bytes
            a = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            out.append((buf.getvalue(), describe(plan)))
        return out

    def close(self):
        self.batcher.close()


class ForecastWorker:
    """A forecasting checkpoint behind a MicroBatcher: the series of requests with the same
    (horizon, quantiles, freq) are forecast in one ``predict`` call. Each series is scaled alone, so
    its forecast does not depend on its batch-mates beyond float rounding (1e-6 on values of ~10,
    tests/apps/test_forecast_app.py)."""

    def __init__(self, name: str, folder: str, device: str = "cpu", window_s: float = 0.02,
                 max_items: int = 512, max_queue: int = 32, forecaster: Forecaster | None = None):
        self.name, self.kind, self.folder = name, "forecast", folder
        self.fc = forecaster or Forecaster.from_pretrained(folder, device=device)
        self.batcher = MicroBatcher(self._run, window_s, max_items, max_queue, name=f"batch-{name}")

    @property
    def waiting(self) -> int:
        return self.batcher.waiting

    def check(self, series: list, horizon: int, quantiles: list[float]):
        check_request(series, horizon)
        known = list(self.fc.model.heads["forecast"].quantiles)
        for q in quantiles:
            if q not in known:
                raise ValueError(f"quantile {q} is not one the model predicts; choose from {known}")

    def _run(self, key, items: list) -> list:
        """items: (series, timestamps or None[, season or None]) per series."""
        horizon, quantiles, freq, stamped = key
        series = [it[0] for it in items]
        stamps = [it[1] for it in items] if stamped else None
        seasons = [it[2] if len(it) > 2 else None for it in items]
        out = self.fc.predict(series, horizon, quantiles=list(quantiles), timestamps=stamps, freq=freq,
                              season=seasons)
        return list(out)

    def close(self):
        self.batcher.close()

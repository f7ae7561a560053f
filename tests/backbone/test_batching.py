"""Continuous batching (backbone/batching.py): every request gives exactly what it gives alone."""
import random

import pytest
import torch

from backbone.batching import BatchEngine, QueueFull
from backbone.generate import Feed, TextSchedule, run
from backbone.sampling import SamplingParams


def _solo(model, prompt, params, cls=TextSchedule):
    return [int(x[0]) for x in run(model, cls(model, [prompt], params)) if int(x[0]) >= 0]


def _requests(n, vocab, seed=0, max_new=(4, 60)):
    """Mixed requests: greedy and seeded sampling (top-p, top-k, repetition penalty), prompts of
    1-40 tokens, some long enough to slide the window (block_size 64), some with stop tokens."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rnd.randrange(1, vocab) for _ in range(rnd.randrange(1, 30))]
        params = SamplingParams(temperature=0.0 if i % 3 == 0 else 0.9, top_p=0.9 if i % 2 else None,
                                top_k=20 if i % 5 == 2 else None,
                                repetition_penalty=1.3 if i % 4 == 3 else 1.0,
                                max_new_tokens=rnd.randrange(*max_new), seed=100 + i,
                                stop_tokens=[rnd.randrange(1, vocab)] if i % 4 == 1 else [])
        out.append((prompt, params))
    return out


def _serve(engine, model, reqs, stagger=1, cls=TextSchedule):
    """Submit one request every ``stagger`` engine steps (so requests join a running batch) and
    run the engine dry -> (tokens per request, tickets)."""
    outs = [[] for _ in reqs]
    tickets = []
    for i, (p, q) in enumerate(reqs):
        tickets.append(engine.submit(cls(model, [p], q), on_sample=lambda x, i=i: outs[i].append(int(x[0]))))
        for _ in range(stagger):
            engine.step()
    while engine.step():
        pass
    return [[t for t in o if t >= 0] for o in outs], tickets


@pytest.mark.parametrize("max_rows,stagger", [(4, 1), (16, 0), (16, 3)])
def test_batched_equals_solo(tiny_model, max_rows, stagger):
    reqs = _requests(14, tiny_model.args.vocab_size)
    ref = [_solo(tiny_model, p, q) for p, q in reqs]
    engine = BatchEngine(tiny_model, max_rows=max_rows, max_queue=64)
    outs, tickets = _serve(engine, tiny_model, reqs, stagger)
    assert outs == ref
    assert all(t.reason == "done" for t in tickets)
    assert engine.running == 0 and engine.waiting == 0
    assert max(engine.stats.rows_hist) > 1                        # it did batch
    assert max(engine.stats.rows_hist) <= max_rows


class WindowMaskSchedule(TextSchedule):
    """A schedule that hands every one-token feed its own mask (the last 5 slots only), as RALL-E's
    duration-guided window does: the batched step must honour a row's mask."""

    def feed(self, tok):
        f = super().feed(tok)
        if f is not None and f.ids is not None:
            S = self.slot   # the fed token's slot + 1
            mask = torch.zeros(1, 1, 1, S, dtype=torch.bool)
            mask[..., max(0, S - 5):] = True
            f = Feed(ids=f.ids, mask=mask)
        return f


def test_row_masks_are_honoured(tiny_model):
    reqs = [(p, SamplingParams(temperature=1.0, max_new_tokens=20, seed=i))
            for i, (p, _) in enumerate(_requests(6, 64, seed=1))]
    ref = [_solo(tiny_model, p, q, WindowMaskSchedule) for p, q in reqs]
    assert ref != [_solo(tiny_model, p, q) for p, q in reqs]       # the mask changes the output
    outs, _ = _serve(BatchEngine(tiny_model, max_rows=8), tiny_model, reqs, 1, WindowMaskSchedule)
    assert outs == ref


def test_shipped_text_model_batched_equals_solo():
    from backbone.container import OmniModel
    model = OmniModel.from_pretrained("assets/text-shakespeare")
    reqs = _requests(10, model.args.vocab_size, seed=2, max_new=(20, 60))
    ref = [_solo(model, p, q) for p, q in reqs]
    outs, _ = _serve(BatchEngine(model, max_rows=6), model, reqs, 2)
    assert outs == ref


def test_queue_bound_and_cancel(tiny_model):
    engine = BatchEngine(tiny_model, max_rows=1, max_queue=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    a = engine.submit(TextSchedule(tiny_model, [[1, 2]], params))
    b = engine.submit(TextSchedule(tiny_model, [[3]], params))
    with pytest.raises(QueueFull):
        engine.submit(TextSchedule(tiny_model, [[4]], params))
    engine.step()                                    # a runs, b waits (one row)
    assert engine.running == 1 and engine.waiting == 1
    a.cancel()
    engine.step()                                    # a's row goes to b at the step boundary
    assert a.reason == "cancelled" and a.finished.is_set() and a.samples < 30
    while engine.step():
        pass
    assert b.reason == "done" and b.samples == 30


def test_deadline_ends_a_request(tiny_model):
    engine = BatchEngine(tiny_model, max_rows=2)
    t = engine.submit(TextSchedule(tiny_model, [[1]], SamplingParams(temperature=0.0, max_new_tokens=50)),
                      timeout=-1.0)   # already past
    engine.step()
    assert t.reason == "timeout" and t.samples == 0
    with pytest.raises(TimeoutError):
        engine.submit(TextSchedule(tiny_model, [[1]], SamplingParams(max_new_tokens=5))).result(timeout=0.01)


def test_a_failing_request_does_not_hurt_the_others(tiny_model):
    engine = BatchEngine(tiny_model, max_rows=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    outs = [[], [], []]
    good = [engine.submit(TextSchedule(tiny_model, [[i + 1]], params), on_sample=lambda x, i=i: outs[i].append(int(x[0])))
            for i in range(3)]
    boom = engine.submit(TextSchedule(tiny_model, [[9]], params), on_sample=lambda x: 1 / 0)
    while engine.step():
        pass
    assert boom.reason == "error" and isinstance(boom.error, ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        boom.result(0)
    assert [t.reason for t in good] == ["done"] * 3
    assert outs == [_solo(tiny_model, [i + 1], params) for i in range(3)]


def test_background_thread(tiny_model):
    engine = BatchEngine(tiny_model, max_rows=8).start()
    try:
        reqs = _requests(6, 64, seed=3, max_new=(5, 30))
        ref = [_solo(tiny_model, p, q) for p, q in reqs]
        outs = [[] for _ in reqs]
        tickets = [engine.submit(TextSchedule(tiny_model, [p], q), on_sample=lambda x, i=i: outs[i].append(int(x[0])))
                   for i, (p, q) in enumerate(reqs)]
        for t in tickets:
            t.result(timeout=60)
        assert [[t for t in o if t >= 0] for o in outs] == ref
    finally:
        engine.stop()

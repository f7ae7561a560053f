import math

import pytest
import torch

from backbone.container import OmniModel, part
from backbone.contrastive import generate_contrastive
from backbone.drafters import PromptLookupDrafter
from backbone.generate import Generation, TextSchedule, decode_one_token, generate, left_pad, prefill
from backbone.generate import run as loop
from backbone.sampling import SamplingParams
from backbone.speculative import generate_drafted
from backbone.transformer import ModelArgs
from heads.lm import LMHead

V = 40


def build(pos="rope", **kw) -> OmniModel:
    """Random model with an untied head and large weights, so greedy outputs vary."""
    extra = dict(norm="layernorm", mlp="gelu_tanh", pos="learned", qkv_bias=True) if pos == "learned" else {}
    args = ModelArgs.from_name("tiny", vocab_size=V, **extra, **kw)
    m = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=V, tie=False)})
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return m.eval()


def run(model, prompts, params, **kw):
    return torch.stack(list(generate(model, prompts, params, **kw)), dim=1)  # (B, n)


PROMPTS = [[3, 7, 1, 9, 2, 5, 8], [4], [0, 11, 0, 6]]  # token 0 == pad_id occurs in a prompt


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_batched_greedy_equals_one_by_one(seed, pos):
    model = build(pos)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = run(model, PROMPTS, params)
    assert batched.shape == (3, 12)
    for i, p in enumerate(PROMPTS):
        alone = run(model, [p], params)
        assert batched[i].tolist() == alone[0].tolist(), f"row {i}"
    # not trivial: rows differ and the batch uses several different tokens
    assert len({tuple(r) for r in batched.tolist()}) == 3
    assert len(set(batched.flatten().tolist())) >= 4


def test_batched_greedy_with_repetition_penalty_equals_one_by_one(seed):
    model = build()
    params = SamplingParams(temperature=0, max_new_tokens=10, repetition_penalty=1.8)
    batched = run(model, PROMPTS, params)
    for i, p in enumerate(PROMPTS):
        assert batched[i].tolist() == run(model, [p], params)[0].tolist()


def test_greedy_matches_full_forward_argmax(seed):
    # the cached loop agrees with re-running the whole sequence each step
    model = build()
    prompt = [5, 2, 8]
    toks = run(model, [prompt], SamplingParams(temperature=0, max_new_tokens=6))[0].tolist()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            h = model(torch.tensor([seq]))
            seq.append(int(model.heads["lm"](h[0, -1]).argmax()))
    assert toks == seq[len(prompt):]


def test_prefill_and_decode_state(seed):
    model = build()
    ids, am = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and am.tolist() == [[1, 1, 1], [0, 0, 1]]
    h, state = prefill(model, ids, am, max_seq=6)
    assert h.shape == (2, model.args.dim)
    assert state.positions.tolist() == [3, 1] and state.next_slot == 3
    decode_one_token(model, torch.tensor([5, 6]), state)
    assert state.positions.tolist() == [4, 2] and state.next_slot == 4


def test_left_pad_rejects_empty():
    with pytest.raises(ValueError):
        left_pad([[1], []])
    with pytest.raises(ValueError):
        left_pad([])


def test_stop_token_ends_row(seed):
    model = build()
    params = SamplingParams(temperature=0, max_new_tokens=12)
    free = run(model, PROMPTS, params)
    stop = int(free[0, 2])  # row 0 emits this at step 2 (or earlier)
    first = {i: (free[i] == stop).nonzero()[0, 0].item() if (free[i] == stop).any() else None
             for i in range(3)}
    out = list(generate(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=12, stop_tokens=[stop])))
    out = torch.stack(out, 1)
    for i in range(3):
        k = first[i]
        if k is None:
            assert out[i].tolist() == free[i, :out.shape[1]].tolist()
        else:
            assert out[i, :k + 1].tolist() == free[i, :k + 1].tolist()  # the stop token is yielded
            assert (out[i, k + 1:] == -1).all()
    # the loop ends once every row has stopped
    everyone = run(model, [PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12, stop_tokens=[stop]))
    assert everyone.shape[1] == first[0] + 1 and everyone[0, -1] == stop


def test_sampling_seed_reproducible(seed):
    model = build()
    a = run(model, PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=15, seed=123))
    torch.manual_seed(999)  # the global RNG must not matter
    b = run(model, PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=15, seed=123))
    c = run(model, PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=15, seed=124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_past_the_context_the_window_slides_like_nanogpt(seed, pos):
    """Beyond block_size, each token is predicted from the last block_size tokens (nanoGPT's crop)."""
    model = build(pos)  # block_size 64
    prompts = [[(7 * i) % V for i in range(60)], [5, 9, 2]]
    out = run(model, prompts, SamplingParams(temperature=0, max_new_tokens=30))
    assert out.shape == (2, 30)
    for row, prompt in zip(out.tolist(), prompts):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(30):
                h = model.backbone(torch.tensor([ids[-64:]]))
                ids.append(int(model.heads["lm"](h)[0, -1].argmax()))
        assert row == ids[len(prompt):]


def test_prompt_longer_than_context_raises(seed):
    model = build()
    next(generate(model, [[1] * 64], SamplingParams()))  # exactly the context is fine
    with pytest.raises(ValueError, match="context"):
        next(generate(model, [[1] * 65], SamplingParams()))


@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(temperature=math.nan), dict(top_p=0.0),
                                dict(top_p=1.5), dict(max_new_tokens=10**9), dict(max_new_tokens=0),
                                dict(top_k=0), dict(min_p=1.0), dict(repetition_penalty=0.0)])
def test_sampling_params_validate_rejects(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw).validate()


def test_sampling_params_validate_accepts_edges():
    p = SamplingParams(temperature=0, top_k=1, top_p=1.0, min_p=0.0, max_new_tokens=1)
    assert p.validate() is p


def test_generate_validates(seed):
    model = build()
    with pytest.raises(ValueError, match="temperature"):
        next(generate(model, [[1]], SamplingParams(temperature=-1)))


def _greedy_tokens(model, prompts, n, static=False):
    sched = TextSchedule(model, prompts, SamplingParams(temperature=0, max_new_tokens=n), static=static)
    return torch.stack([t.clone() for t in loop(model, sched)], 1)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_static_cache_matches_dynamic_cache(seed, pos):
    """The static cache (all block_size slots + mask) is what the compiled step traces."""
    model = build(pos)
    dyn = _greedy_tokens(model, PROMPTS, 12)
    sta = _greedy_tokens(model, PROMPTS, 12, static=True)
    assert torch.equal(dyn, sta)
    assert len(set(dyn.flatten().tolist())) >= 4


@pytest.mark.slow
def test_compiled_decode_gives_the_same_tokens(seed):
    model = build()
    p = SamplingParams(temperature=0, max_new_tokens=10)
    assert torch.equal(run(model, PROMPTS, p), run(model, PROMPTS, p, compile=True))


def _step_interleaved(model, schedules, order):
    """Step one Generation per schedule in the given order of indices (each until it ends)
    -> every generation's samples as (B, n)."""
    gens = [Generation(model, s) for s in schedules]
    out = [[] for _ in gens]
    for i in order:
        x = gens[i].step()
        if x is not None:
            out[i].append(x.clone())
    assert all(g.done for g in gens)
    return [torch.stack(o, 1) for o in out]


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_interleaved_generations_each_equal_their_solo_run(seed, compile):
    """Per-request state: two Generations on one model (a greedy batch and a seeded sampled
    prompt) stepped in an interleaved order give exactly what each gives alone. The caches,
    positions, generators and stop bookkeeping live in the generations, never on the model.
    compile=True: static caches and the compiled decode step, shared by both generations."""
    model = build()
    greedy = SamplingParams(temperature=0, max_new_tokens=9)
    sampled = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=13, seed=7)
    make = lambda: [TextSchedule(model, PROMPTS[:2], greedy, compile=compile),  # noqa: E731
                    TextSchedule(model, [[5, 2, 8, 8, 1]], sampled, compile=compile)]
    solo = [_step_interleaved(model, [s], [0] * 20)[0] for s in make()]
    order = [0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1] + [0, 1] * 5
    mixed = _step_interleaved(model, make(), order)
    assert solo[0].shape == (2, 9) and solo[1].shape == (1, 13)
    for a, b in zip(solo, mixed):
        assert torch.equal(a, b)
    assert not torch.equal(solo[1], _step_interleaved(  # the seed matters: not a degenerate model
        model, [TextSchedule(model, [[5, 2, 8, 8, 1]], SamplingParams(temperature=1.0, top_k=20,
                                                                      max_new_tokens=13, seed=8))], [0] * 20)[0])


def test_prefix_lm_model_reads_its_prompt_bidirectionally(make_tiny_lm):
    """A non-causal decoder (prefix_lm) prefills the prompt with a bidirectional mask: greedy
    generation (batched, left-padded) equals re-running the whole sequence with the prompt as
    the prefix, and differs from the causal reading of the same weights."""
    from backbone.masks import MaskSpec
    model = make_tiny_lm(40, prefix_lm=True).eval()
    causal = make_tiny_lm(40).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    causal.load_state_dict(model.state_dict())
    prompts = [[1, 2, 3, 4, 5, 6], [9, 8]]
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    batched = torch.stack(list(generate(model, prompts, sp)), 1)
    for row, p in enumerate(prompts):
        seq = list(p)
        with torch.no_grad():
            for _ in range(8):
                h = model.backbone(input_ids=torch.tensor([seq]), mask=MaskSpec(prefix_len=len(p)))
                seq.append(int(model.heads["lm"](h[0, -1]).argmax()))
        assert batched[row].tolist() == seq[len(p):]
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        assert not torch.allclose(model.backbone(ids, mask=MaskSpec(prefix_len=6))[:, -1], causal.backbone(ids)[:, -1])
    with pytest.raises(ValueError, match="prefix-LM"):
        list(generate_contrastive(model, prompts, SamplingParams(penalty_alpha=0.5, top_k=3, max_new_tokens=3)))
    with pytest.raises(ValueError, match="prefix-LM"):
        list(generate_drafted(model, prompts, SamplingParams(temperature=0, max_new_tokens=3), PromptLookupDrafter()))

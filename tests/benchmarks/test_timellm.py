"""Time-LLM reprogramming over a frozen text model: shapes, frozen weights, the prompt's
statistics, missing and constant series, checkpoint round trip, and learning a toy sine task.
A tiny random text OmniModel and a tiny BPE tokenizer are built here."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backbone.container import OmniModel, part
from backbone.transformer import ModelArgs
from benchmarks.baselines.timellm import TimeLLM, instance_norm
from heads.lm import LMHead
from modalities.text import BPETokenizer
from modalities.timeseries import instance_stats

CORPUS = ["Forecast the next steps. min max median trend up down lags\n",
          "Hourly power data: 0 1 2 3 4 5 6 7 8 9 -0.5 12.25 -3.75 24 48 168\n"] * 4
L, H = 64, 16
KW = dict(lookback=L, horizon=H, patch_len=8, stride=4, d_model=16, n_heads=2, n_prototypes=10, d_ff=16,
          dropout=0.0, description="Toy data.")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops gain nothing from threads, and lose much when another job holds the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """A saved tiny text model (2 layers, dim 32, block 96) with its BPE tokenizer."""
    torch.manual_seed(0)
    tok = BPETokenizer.train(CORPUS, vocab_size=300)
    args = ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, block_size=96)
    model = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=tok.vocab_size)})
    return model.save_pretrained(tmp_path_factory.mktemp("text"), tok)


def make(text_folder, seed: int = 0, **kw) -> TimeLLM:
    from modalities.text import load_tokenizer
    torch.manual_seed(seed)
    return TimeLLM(OmniModel.from_pretrained(text_folder), load_tokenizer(text_folder),
                   text_model_path=str(text_folder), **{**KW, **kw})


def sines(n: int, length: int, seed: int = 0) -> torch.Tensor:
    """(n, length) sines of random period (8..16), phase, level and scale."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    period = 8 + 8 * torch.rand(n, 1, generator=g)
    phase = 6.3 * torch.rand(n, 1, generator=g)
    return 3 * torch.rand(n, 1, generator=g) * torch.sin(2 * torch.pi * t / period + phase) + torch.randn(n, 1, generator=g)


def test_shapes(text_folder):
    m = make(text_folder).eval()
    assert m.n_patches == (L + 4 - 8) // 4 + 1 == 16 and m.prompt_budget == 96 - 16
    x = sines(3, L)
    assert m(x).shape == (3, H) and m(x, horizon=5).shape == (3, 5)
    assert m(sines(2, 80)).shape == (2, H) and m(sines(2, 40)).shape == (2, H)  # longer / shorter contexts
    assert m.predict(sines(5, L).numpy(), horizon=7, batch_size=2).shape == (5, 7)
    assert m.loss(x, sines(3, H)).dim() == 0
    with pytest.raises(ValueError, match="patches do not fit"):
        make(text_folder, lookback=100, patch_len=1, stride=1)  # 101 patches do not fit a context of 96
    n = sum(p.numel() for mod in (m.patch_embed, m.mapping, m.reprogram, m.head) for p in mod.parameters())
    assert m.trainable_parameters() == n


def test_text_model_stays_bit_identical(text_folder):
    m = make(text_folder).train()
    assert not m.llm.training                                # train() keeps the text model in eval mode
    before = {k: v.clone() for k, v in m.llm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    head_before = m.head.weight.clone()
    for _ in range(2):
        loss = m.loss(sines(4, L), sines(4, H, seed=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in m.llm.parameters())
    assert all(torch.equal(v, m.llm.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(head_before, m.head.weight)       # while the trainable parts moved


def test_prompt_holds_the_statistics(text_folder):
    m = make(text_folder)
    t = torch.arange(L, dtype=torch.float32)
    x = torch.stack([torch.sin(2 * torch.pi * t / 8) + 0.05 * t, 5 - 0.1 * t])           # up, down
    mean, std = instance_norm(x)
    z = (x - mean) / std
    texts = m.prompts(z, torch.ones_like(z, dtype=torch.bool))
    for i, text in enumerate(texts):
        assert text.startswith("Toy data. Forecast the next 16 steps.")
        for word, v in (("min", z[i].min()), ("max", z[i].max()), ("median", z[i].median())):
            assert f"{word} {float(v):.2f}" in text, text
    assert "trend up" in texts[0] and "trend down" in texts[1]
    assert texts[0].split("lags ")[1].split()[0] == "8"      # the period is the highest peak
    assert len(texts[0].split("lags ")[1].split()) == 5
    # a prompt too long for the context drops the description first
    long = make(text_folder, description="Hourly power data " * 20)
    long.embed_prompts(long.prompt_parts(z, torch.ones_like(z, dtype=torch.bool)))
    assert long.prompt_fit["no_description"] == 2 and long.prompt_fit["full"] == 0


def test_missing_and_constant_series(text_folder):
    x = sines(5, L)
    x[0] = 7.0                                               # constant
    x[1, 10:30] = float("nan")                               # a gap
    x[2] = float("nan")                                      # nothing observed
    x[3, :-1] = float("nan")                                 # one observed value
    mean, std = instance_norm(x)
    for i in (0, 1, 3, 4):
        m_ref, s_ref = instance_stats(x[i].double().numpy())
        assert abs(float(mean[i]) - m_ref) < 1e-5 and abs(float(std[i]) - s_ref) < 1e-5 * max(1, s_ref)
    m = make(text_folder).eval()
    y = m(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0], torch.full((H,), 7.0), atol=1e-2, rtol=0)  # std floor: stays at the level
    y.sum().backward()                                        # and gradients stay finite as well
    m.train()
    y = torch.where(torch.rand(5, H) < 0.3, float("nan"), sines(5, H))
    loss = m.loss(x, y) + m.loss(x, y, normalised=True)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def test_save_load_round_trip(text_folder, tmp_path):
    m = make(text_folder, dropout=0.1)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.loss(sines(4, L), sines(4, H)).backward()
    opt.step()
    m.save_pretrained(tmp_path / "tl", meta={"note": "test"})
    stored = load_file(str(tmp_path / "tl" / "model.safetensors"))
    assert stored and not any(k.startswith("llm.") for k in stored)     # only the trainable weights
    assert sum(v.numel() for v in stored.values()) == m.trainable_parameters()
    cfg = json.loads((tmp_path / "tl" / "config.json").read_text())
    assert cfg["kwargs"]["text_model"] == str(text_folder) and cfg["meta"] == {"note": "test"}
    assert not list((tmp_path / "tl").glob("*.tmp"))
    back = TimeLLM.from_pretrained(tmp_path / "tl")
    assert not back.training
    x = sines(3, L, seed=5)
    x[0, :9] = float("nan")
    with torch.no_grad():
        assert torch.equal(m.eval()(x), back(x))
    # a different text model is refused
    other = OmniModel.from_pretrained(text_folder)
    with torch.no_grad():
        other.backbone.tok_embeddings.weight[0, 0] += 1
    from modalities.text import load_tokenizer
    other.save_pretrained(tmp_path / "other", load_tokenizer(text_folder))
    with pytest.raises(ValueError, match="not the text model"):
        TimeLLM.from_pretrained(tmp_path / "tl", text_model=tmp_path / "other")


def test_loss_falls_on_sines(text_folder):
    """Sines of period 16, random phase: the loss first sits at ~1 (the mean forecast) while
    the cross-attention onto the prototypes is still near uniform, then falls."""
    m = make(text_folder).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    t = torch.arange(L + H, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(40):
        w = torch.sin(2 * torch.pi * t / 16 + 6.3 * torch.rand(16, 1, generator=g))
        loss = m.loss(w[:, :L], w[:, L:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses[::5]

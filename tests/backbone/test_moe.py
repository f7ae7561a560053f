"""AdaMoE mixture of experts with null experts (backbone/moe.py)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from backbone.container import OmniModel, part
from backbone.moe import MoE
from backbone.transformer import ModelArgs
from heads.lm import LMHead


def moe_args(**kw):
    return ModelArgs.from_name("tiny", vocab_size=64, **{"n_experts": 4, "n_null_experts": 4,
                                                        "experts_per_tok": 2, **kw})


def flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_routing_weights_sum_to_one_and_pick_top_k(seed):
    m = MoE(moe_args())
    x = torch.randn(50, 32)
    probs, w, idx = m.route(x)
    assert probs.shape == (50, 8) and w.shape == idx.shape == (50, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(50))
    torch.testing.assert_close(w.sum(-1), torch.ones(50))
    assert (w >= 0).all()
    torch.testing.assert_close(idx, probs.topk(2, -1).indices)


def test_null_experts_cost_zero_flops_and_output_zero(seed):
    a = moe_args()
    m = MoE(a)
    D, H = a.dim, a.intermediate_size
    x = torch.ones(1, 10, D)
    router = 2 * 10 * D * 8  # the router is the only cost when every slot goes to a null expert
    with torch.no_grad():  # route everything to the null experts: real rows score -D, null rows +D
        m.router.weight.copy_(torch.cat([-torch.ones(4, D), torch.ones(4, D)]))
        out = m(x)
    assert flops(lambda: m(x)) == router
    assert float(m.real_per_token) == 0.0
    assert torch.equal(out, torch.zeros_like(out))
    # one real expert per token: router + 10 tokens through one SwiGLU expert (3 matmuls)
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[0] = 1.0     # expert 0 wins
        m.router.weight[4] = 0.5     # then a null expert
    assert flops(lambda: m(x)) == router + 10 * 2 * (D * 2 * H + H * D)
    assert float(m.real_per_token) == 1.0


def test_output_is_weighted_sum_of_chosen_real_experts(seed):
    m = MoE(moe_args())
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        out = m(x)[0]
        _, w, idx = m.route(x[0])
    for t in range(6):
        want = sum(w[t, j] * m.experts[int(e)](x[0, t:t + 1])[0] for j, e in enumerate(idx[t]) if e < 4)
        torch.testing.assert_close(out[t], want if torch.is_tensor(want) else torch.zeros(32), atol=1e-6, rtol=1e-5)


def test_balance_loss_is_one_when_uniform_and_treats_nulls_as_a_group(seed):
    m = MoE(moe_args(experts_per_tok=1))
    probs = torch.full((8, 8), 1 / 8)
    idx = torch.arange(8)[:, None]                       # every expert once
    assert float(m.balance_loss(probs, idx)) == pytest.approx(1.0)
    # moving load between identical null experts changes nothing ...
    idx_nulls_lumped = torch.tensor([0, 1, 2, 3, 4, 4, 4, 4])[:, None]
    assert float(m.balance_loss(probs, idx_nulls_lumped)) == pytest.approx(1.0)
    # ... collapsing onto one real expert is penalised (Switch: E * f_0 * P_0 = 8 * 1 * 0.93)
    collapsed = torch.full((8, 8), 0.01)
    collapsed[:, 0] = 0.93
    assert float(m.balance_loss(collapsed, torch.zeros(8, 1, dtype=torch.long))) == pytest.approx(8 * 0.93)


def test_model_adds_aux_loss_in_training_only_and_learns(seed):
    a = moe_args()
    model = OmniModel.build(a, heads={"lm": part(LMHead, dim=a.dim, vocab_size=64)})
    x = torch.randint(64, (4, 16))
    loss, parts = model.train()(x, targets={"lm": x})
    assert set(parts) == {"lm", "moe_aux"}
    torch.testing.assert_close(loss, parts["lm"] + a.moe_aux_weight * parts["moe_aux"])
    loss.backward()
    assert model.backbone.layers[0].mlp.router.weight.grad.abs().sum() > 0
    _, parts = model.eval()(x, targets={"lm": x})
    assert set(parts) == {"lm"}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(30):
        loss, parts = model(x, targets={"lm": x})
        first = first if first is not None else float(parts["lm"].detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(parts["lm"].detach()) < first - 0.5


def test_config_errors():
    with pytest.raises(ValueError, match="experts_per_tok"):
        moe_args(experts_per_tok=9)
    with pytest.raises(ValueError, match="n_null_experts needs"):
        ModelArgs.from_name("tiny", n_null_experts=2)

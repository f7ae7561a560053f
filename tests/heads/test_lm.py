"""LM head: cross-entropy by default, EMO (Ren et al. 2023) as a fine-tuning option."""
import pytest
import torch
import torch.nn.functional as F

from heads.lm import LMHead


def emo_head(seed_=0) -> LMHead:
    torch.manual_seed(seed_)
    head = LMHead(dim=8, vocab_size=5, tie=False, emo=True)
    head.freeze_cost_embedding()
    return head


def test_plain_head_is_cross_entropy(seed):
    head = LMHead(dim=8, vocab_size=5, tie=False)
    h, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, -100])
    torch.testing.assert_close(head.loss(h, y), F.cross_entropy(head(h), y))
    assert not hasattr(head, "cost_embedding")


def test_emo_matches_the_formula_by_hand(seed):
    head = emo_head()
    h, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 1])
    logits = head(h).float()
    q = logits.softmax(-1)
    e = head.cost_embedding / head.cost_embedding.norm(dim=-1, keepdim=True)
    cost = 1 - e @ e.T                                                   # (V, V) transport cost
    demd = torch.stack([(q[i] * cost[:, y[i]]).sum() for i in range(6)])  # sum_i q_i c(i, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    want = (0.5 * (ce + torch.clamp(ce / demd, max=3.0) * demd)).mean()
    torch.testing.assert_close(head.loss(h, y), want)


def test_emo_cost_follows_embedding_geometry():
    head = emo_head()
    with torch.no_grad():  # token 1 is a near-synonym of token 0, token 2 its opposite
        base = torch.randn(8)
        head.cost_embedding[0], head.cost_embedding[1], head.cost_embedding[2] = base, base + 0.01, -base
    y = torch.tensor([0])
    near = torch.full((1, 5), -30.0)
    near[0, 1] = 30.0            # all mass on the synonym
    far = torch.full((1, 5), -30.0)
    far[0, 2] = 30.0             # all mass on the opposite
    demd = lambda logits: float(head.emo_loss(logits, y) * 2 - F.cross_entropy(logits, y))  # noqa: E731
    # same cross-entropy for both, but EMO's transport term separates them
    assert F.cross_entropy(near, y) == pytest.approx(float(F.cross_entropy(far, y)))
    assert demd(near) < demd(far)


def test_emo_ignores_padding_and_never_trains_the_cost(seed):
    head = emo_head()
    h = torch.randn(4, 8, requires_grad=True)
    y = torch.tensor([1, -100, 3, -100])
    loss = head.loss(h, y)
    torch.testing.assert_close(loss, head.loss(h[[0, 2]], y[[0, 2]]))
    loss.backward()
    assert head.cost_embedding.grad is None and head.proj.weight.grad is not None
    assert h.grad[1].abs().sum() == 0 and h.grad[0].abs().sum() > 0

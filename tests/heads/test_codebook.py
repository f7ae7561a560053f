import pytest
import torch

from heads.codebook import CodebookHead


def test_levels_pick_their_slice_and_loss_matches(seed):
    head = CodebookHead(dim=8, n_levels=3, bins=5)
    h = torch.randn(4, 8)
    full = head.proj(h).view(4, 3, 5)
    assert torch.allclose(head.logits(h, 2), full[:, 1])
    lv = torch.tensor([1, 3, 2, 3])
    assert torch.allclose(head.logits(h, lv), full[torch.arange(4), lv - 1])
    code = torch.tensor([0, 4, 2, 1])
    want = torch.nn.functional.cross_entropy(full[torch.arange(4), lv - 1], code)
    assert torch.allclose(head.loss(h, (lv - 1) * 5 + code), want)
    assert torch.equal(head.sample(h, 2), full[:, 1].argmax(-1))
    with pytest.raises(ValueError, match="level"):
        head.logits(h, 0)


def test_learns_a_mapping(seed):
    head = CodebookHead(dim=6, n_levels=2, bins=4)
    h = torch.eye(6)[:4]
    tgt = torch.tensor([4 + 3, 4 + 2, 1, 0])
    opt = torch.optim.Adam(head.parameters(), 0.1)
    for _ in range(100):
        opt.zero_grad()
        head.loss(h, tgt).backward()
        opt.step()
    assert head.loss(h, tgt) < 0.05

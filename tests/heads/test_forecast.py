"""The forecast head and segment adapter (heads/forecast.py): sorted quantiles as the head's sample,
the median's index, a pinball loss that ignores missing target points."""
import torch

from heads.forecast import QuantileHead, SegmentEmbed


def test_sample_is_the_sorted_quantiles_and_mid_the_median():
    torch.manual_seed(0)
    head = QuantileHead(dim=8, seg_len=3, quantiles=(0.1, 0.5, 0.9))
    h = torch.randn(2, 8)
    q = head.sample(h)
    assert q.shape == (2, 3, 3) and torch.equal(q, head(h)) and (q.diff(dim=-1) >= 0).all()
    assert head.mid == 1 and QuantileHead(8, 3, (0.1, 0.4, 0.8)).mid == 1     # the nearest to 0.5


def test_loss_ignores_missing_target_points():
    torch.manual_seed(0)
    head = QuantileHead(dim=8, seg_len=2, quantiles=(0.5,))
    h = torch.randn(1, 8)
    y = head(h)[0, :, 0].detach()                                              # (S,) the prediction itself
    exact = torch.cat([y, torch.ones(2)])[None]                                 # values, observed flags
    assert head.loss(h, exact) == 0
    gap = torch.tensor([[y[0].item(), 100.0, 1.0, 0.0]])                        # point 2 missing: no loss
    assert head.loss(h, gap) == 0


def test_segment_embed_starts_as_a_model_without_timestamps():
    """The timestamp branch's scale starts at 0: at step 0 the stamps change nothing."""
    torch.manual_seed(0)
    e = SegmentEmbed(seg_len=2, dim=8, time_dim=3)
    x = torch.randn(1, 4, 4)
    assert torch.equal(e(torch.cat([x, torch.randn(1, 4, 3)], -1)), e(torch.cat([x, torch.zeros(1, 4, 3)], -1)))

"""Segment forecasting (AutoTimes, Liu et al. 2024): an input adapter that embeds segment
tokens, and a quantile head that predicts the next segment from each hidden state.

The head outputs Q quantiles for each of the S points of the next segment and is trained with
the pinball (quantile) loss, so one forward gives a median and prediction intervals; longer
horizons are reached by feeding the median back, segment by segment (the rollout schedule in
apps/forecast/model.py).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class SegmentEmbed(nn.Module):
    """(B, T, 2S [+ 2S] [+ Dt]) segment tokens (values, observed-flags [, seasonal-lag values and
    flags] [, timestamp embedding]) -> (B, T, D) backbone embeddings.

    With ``lag`` each token also carries the seasonal-naive forecast of the next segment
    (modalities/timeseries.seasonal_lag), embedded with the segment itself.

    With ``time_dim`` the last Dt features are a text embedding of the segment's timestamps
    (modalities/timeseries_time), added through a linear map times a learned scale that starts
    at 0 (AutoTimes' timestamps as positions; at step 0 the model equals one without them).
    An all-zero timestamp vector means "no timestamps" and adds nothing."""

    def __init__(self, seg_len: int, dim: int, hidden: int | None = None, time_dim: int = 0, lag: bool = False):
        super().__init__()
        self.seg_len, self.time_dim, self.lag = seg_len, time_dim, lag
        self.n_in = (4 if lag else 2) * seg_len  # features before the timestamp embedding
        hidden = hidden or 2 * dim
        self.net = nn.Sequential(nn.Linear(self.n_in, hidden), nn.GELU(), nn.Linear(hidden, dim))
        if time_dim:
            self.time_proj = nn.Linear(time_dim, dim, bias=False)
            self.time_scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        e = self.net(x[..., :self.n_in])                                # (B, T, D)
        if self.time_dim:
            e = e + self.time_scale * self.time_proj(x[..., self.n_in:])
        return e


class QuantileHead(nn.Module):
    """h (..., D) -> quantiles of the next segment (..., S, Q), sorted along Q.
    ``loss(h, target)``: the pinball loss; ``sample(h)``: the quantiles themselves (a rollout feeds
    back ``[..., mid]``, the median)."""

    def __init__(self, dim: int, seg_len: int, quantiles: tuple[float, ...] = DEFAULT_QUANTILES):
        super().__init__()
        self.seg_len, self.quantiles = seg_len, tuple(quantiles)
        # the index of the median: the 0.5 quantile, or the one nearest to it
        self.mid = min(range(len(self.quantiles)), key=lambda j: abs(self.quantiles[j] - 0.5))
        self.register_buffer("q", torch.tensor(self.quantiles), persistent=False)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, seg_len * len(self.quantiles)))

    def forward(self, h: Tensor) -> Tensor:
        y = self.proj(h).unflatten(-1, (self.seg_len, len(self.quantiles)))
        return y.sort(-1).values  # no quantile crossing

    def loss(self, h: Tensor, target: Tensor) -> Tensor:
        """Pinball loss. h (N, D); target (N, 2S): normalised values then observed-flags (a
        missing target point adds nothing)."""
        y = self(h).float()                                                # (N, S, Q)
        val, obs = target[:, :self.seg_len, None].float(), target[:, self.seg_len:, None].float()
        err = val - y
        pin = torch.maximum(self.q * err, (self.q - 1) * err) * obs
        return pin.sum() / (obs.sum() * len(self.quantiles)).clamp(min=1)

    @torch.no_grad()
    def sample(self, h: Tensor) -> Tensor:
        """h (..., D) -> the next segment's quantiles (..., S, Q): the forecast head's sample."""
        return self(h)

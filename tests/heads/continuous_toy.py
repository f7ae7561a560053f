"""The toy conditional distribution both continuous heads are tested on (diffusion and flow):
z is one of K one-hot codes, the token for code k is TARGETS[k] plus a little noise."""
import torch
from torch import nn

K, D, C = 3, 4, 4                                   # codes, hidden size, token size
CODES = torch.eye(D)[:K]                            # z: one one-hot code per class
TARGETS = torch.tensor([[2., 0, 0, 1], [-2, 1, 0, 0], [0, -2, 2, 0]])   # token for each code


def train_toy(head, steps: int = 400):
    """Adam on z = code k -> token TARGETS[k] + N(0, 0.05^2); returns the head in eval mode."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        k = torch.randint(0, K, (48,))
        loss = head.loss(CODES[k], TARGETS[k] + 0.05 * torch.randn(48, C))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


class Probe(nn.Module):
    """Deterministic stand-in network: output depends on x, t and z."""

    def forward(self, x, t, z):
        return x + t.float()[:, None] / 1000 + z[:, :C] * 2


def check_backprop_into_z(head):
    """The loss reaches z once the zero-initialised layers have moved, and a dropped row's
    gradient goes to the learned null condition instead."""
    z, y = torch.randn(6, D, requires_grad=True), torch.randn(6, C)
    loss = head.loss(z, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() == 0   # connected; 0 while adaLN-Zero layers are 0
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(2):                               # step 1 moves the output layer, step 2 the modulation
        opt.step()
        opt.zero_grad()
        z.grad = None
        head.loss(z, y).backward()
    assert z.grad.abs().sum() > 0                    # from then on the backbone gets a signal
    z.grad, head.null_z.grad = None, None
    head.loss(z, y, drop_mask=torch.ones(6, dtype=torch.bool)).backward()   # all rows -> null_z
    assert z.grad.abs().sum() == 0 and head.null_z.grad.abs().sum() > 0


def check_cfg_one_equals_conditional(trained):
    """cfg = 1 through the [cond; null] batch is the plain conditional sample; per-row scales act per row."""
    z, g = CODES[[0, 1, 2, 0]], lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = trained.sample(z, steps=10, generator=g())
    torch.testing.assert_close(trained.sample(z, steps=10, cfg=torch.ones(4), generator=g()), plain)
    guided = trained.sample(z, steps=10, cfg=torch.tensor([1.0, 1.0, 1.0, 4.0]), generator=g())
    torch.testing.assert_close(guided[:3], plain[:3])
    assert not torch.allclose(guided[3], plain[3])

"""The toy conditional distribution both continuous heads are tested on (diffusion and flow):
z is one of K one-hot codes, the token for code k is TARGETS[k] plus a little noise."""
import torch

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

import torch


def val_loss_on_windows(model, ids: torch.Tensor, n_windows: int = 128, seed: int = 0) -> float:
    """Mean next-token loss (nats) over n seeded random windows of the model's context."""
    T = model.args.block_size
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids) - T - 1, (n_windows,), generator=g)
    win = ids[starts[:, None] + torch.arange(T + 1)]  # (n, T+1)
    with torch.no_grad():
        loss, _ = model(win[:, :-1], targets={"lm": win[:, 1:]})
    return float(loss)

"""The forecast picture the app shows and ``omniar forecast --plot`` writes: the recent history,
the median forecast and its 10-90% band."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHOW_HISTORY = 500  # points of history drawn before the forecast


def plot_forecast(history: np.ndarray, q: np.ndarray, title: str, times=None) -> np.ndarray:
    """history (L,), q (H, 3) = 10/50/90% -> RGB image (H, W, 3) uint8. ``times``: L + H dates
    for the x axis (else steps)."""
    import matplotlib  # only to draw: not loaded until the first forecast
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h = history[-SHOW_HISTORY:]
    t0 = len(h)
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=90)
    xs = np.arange(t0 + len(q)) if times is None else np.asarray(times[-(t0 + len(q)):])
    ax.plot(xs[:t0], h, color="0.3", lw=1, label="history")
    steps = xs[t0:]
    ax.fill_between(steps, q[:, 0], q[:, 2], color="tab:blue", alpha=0.25, label="10-90%")
    ax.plot(steps, q[:, 1], color="tab:blue", lw=1.5, label="median")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def save_plot(img: np.ndarray, path: str | Path):
    """Write an RGB image (H, W, 3) as PNG, atomically (a .tmp file renamed into place)."""
    from PIL import Image
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        Image.fromarray(img).save(tmp, format="PNG")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {path}: {e.strerror or e}") from None

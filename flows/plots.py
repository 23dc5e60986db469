"""PNG plots for run records (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_block_errors(errors: list[float], title: str, path: Path) -> Path:
    """Mean relative reconstruction error ‖(W−Ŵ)X‖²/‖WX‖² of each block's linears, by block index."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(range(len(errors)), errors, marker="o", markersize=3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("block")
    axes.set_ylabel("mean relative error")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

"""PNG plots for run records (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def plot_perplexity_vs_sparsity(rows: list[dict[str, Any]], path: Path) -> Path:
    """One line per method (and protocol): perplexity against achieved sparsity, log scale."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        label = f"{row['method']} ({row['pattern']})" if row["pattern"] not in ("unstructured", "-") else row["method"]
        series.setdefault(f"{label} | {row['protocol']}", []).append((row["sparsity"], row["perplexity"]))
    for label, points in sorted(series.items()):
        points.sort()
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    axes.set_yscale("log")
    axes.set_xlabel("achieved sparsity of the decoder linears")
    axes.set_ylabel("perplexity (token)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_block_errors_by_method(rows: list[dict[str, Any]], path: Path) -> Path:
    """Mean relative reconstruction error of each block's linears, one line per combination."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault(row["method"], []).append((row["block"], row["relative_error"]))
    for label, points in sorted(series.items()):
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=2, label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_yscale("log")
    axes.set_xlabel("block")
    axes.set_ylabel("mean relative error ‖(W−Ŵ)X‖²/‖WX‖²")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_speedups(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: speed-up over dense of every measured form, per prefill/decode case (1.0 = dense)."""
    cases = sorted({key for row in rows for key in row if key.endswith("_speedup")})
    labels = [f"{row['method']} {row['pattern']} {row['form']} ({row.get('device', 'cpu')})" for row in rows]
    figure, axes = plt.subplots(figsize=(max(6.5, 0.9 * len(rows) + 2), 4))
    width = 0.8 / max(len(cases), 1)
    for offset, case in enumerate(cases):
        axes.bar([index + offset * width for index in range(len(rows))], [row.get(case, 0.0) for row in rows],
                 width=width, label=case.removesuffix("_speedup"))
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks([index + 0.4 - width / 2 for index in range(len(rows))], labels, rotation=30, ha="right",
                    fontsize=7)
    axes.set_ylabel("speed-up over dense (x)")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

"""PNG plots for run records (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    from pruning.speed import Speedup


def plot_block_errors(errors: list[float], title: str, path: Path) -> Path:
    """One run's mean relative reconstruction error ‖(W−Ŵ)X‖²/‖WX‖² of each block's linears, by block index."""
    rows = [{"method": title, "block": block, "relative_error": error} for block, error in enumerate(errors)]
    return plot_block_errors_by_method(rows, path)


def _short_protocol(protocol: str) -> str:
    """token-ppl[<dataset>|seqlen=...|...] -> <dataset>."""
    return protocol.partition("[")[2].partition("|")[0] or protocol


def _lines_figure(count: int) -> tuple[Any, Any]:
    """A figure with room for a legend of `count` entries at its right, and a palette of 20 colours."""
    figure, axes = plt.subplots(figsize=(9, max(4.0, 0.18 * count + 1)))
    axes.set_prop_cycle(color=[plt.get_cmap("tab20")(index) for index in range(20)])
    return figure, axes


def _finish(figure: Any, axes: Any, path: Path) -> Path:
    axes.grid(alpha=0.3, which="both")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


QUALITY_AXES = {"perplexity": ("perplexity (token level)", "log"), "top1": ("top-1 accuracy", "linear")}


def plot_quality_vs_sparsity(rows: list[dict[str, Any]], path: Path, metric: str) -> Path:
    """One line per method and pattern: `metric` (perplexity, log scale; or a vision model's top-1 accuracy)
    against the achieved sparsity of the blocks' linears; the dense model as a dashed line. Several evaluation
    protocols get a line each."""
    protocols = sorted({row["protocol"] for row in rows})
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        label = row["method"] if row["pattern"] in ("unstructured", "-") else f"{row['method']} ({row['pattern']})"
        if len(protocols) > 1:
            label += f" | {_short_protocol(row['protocol'])}"
        series.setdefault(label, []).append((row["sparsity"], row[metric]))
    figure, axes = _lines_figure(len(series))
    for label, points in sorted(series.items()):
        points.sort()
        if label.startswith("dense"):
            axes.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label=label)
            continue
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    label, scale = QUALITY_AXES[metric]
    axes.set_yscale(scale)
    axes.set_xlabel("achieved sparsity of the blocks' linears (share of weights removed)")
    axes.set_ylabel(label)
    if len(protocols) == 1:
        axes.set_title(_short_protocol(protocols[0]), fontsize=9)
    return _finish(figure, axes, path)


def plot_block_errors_by_method(rows: list[dict[str, Any]], path: Path) -> Path:
    """Mean relative reconstruction error of each block's linears, one line per combination (log scale)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault(row["method"], []).append((row["block"], row["relative_error"]))
    figure, axes = _lines_figure(len(series))
    for label, points in sorted(series.items()):
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=2, label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_yscale("log")
    axes.set_xlabel("block")
    axes.set_ylabel("mean relative error ‖(W−Ŵ)X‖²/‖WX‖²")
    return _finish(figure, axes, path)


def plot_speedups(rows: list[Speedup], path: Path) -> Path:
    """Grouped bars: speed-up over dense of every measured form, per prefill/decode case (1.0 = dense), the
    whiskers the quartiles over the paired rounds."""
    cases = sorted({case for row in rows for case in row.ratios})
    labels = [f"{row.method} {row.pattern} {row.target_sparsity:g} {row.form} ({row.device or 'cpu'})" for row in rows]
    figure, axes = plt.subplots(figsize=(max(6.5, 0.9 * len(rows) + 2), 4))
    width = 0.8 / max(len(cases), 1)
    for offset, case in enumerate(cases):
        ratios = [row.ratios.get(case, 0.0) for row in rows]
        spreads = [row.spread.get(case, (ratio, ratio)) for row, ratio in zip(rows, ratios, strict=True)]
        error = [[ratio - low for ratio, (low, _) in zip(ratios, spreads, strict=True)],
                 [high - ratio for ratio, (_, high) in zip(ratios, spreads, strict=True)]]
        axes.bar([index + offset * width for index in range(len(rows))], ratios, width=width, label=case,
                 yerr=error, capsize=2)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks([index + 0.4 - width / 2 for index in range(len(rows))], labels, rotation=30, ha="right",
                    fontsize=7)
    axes.set_ylabel("speed-up over dense (x)")
    if not rows:
        axes.set_title("no speed measurements (run the bench stage or `pruneflow bench`)", fontsize=9)
    return _finish(figure, axes, path)

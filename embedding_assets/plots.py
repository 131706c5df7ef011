"""Small SVG plots embedded in markdown metadata, each under a line that says what it shows and its
key numbers. SVG keeps the text as text: sharp at any size, and its tick labels can be read back.

The Dagster UI shows a markdown entry inline only under 1,000 characters; a plot is longer, so its
row reads "[Show Markdown]". `Plot.entries` therefore puts the line in a text entry of its own,
`<key>_summary`, just above the plot's row.
"""

import base64
import io
from typing import NamedTuple

import dagster as dg


class Plot(NamedTuple):
    summary: str
    markdown: str

    def entries(self, key: str) -> dict:
        return {f"{key}_summary": self.summary, key: dg.MetadataValue.md(self.markdown)}

# Group ids in the SVG, so a reader can find an axis's tick labels.
LOSS_AXIS = "loss-axis"
RECALL_AXIS = "recall-axis"
SPEARMAN_AXIS = "spearman-axis"
TRAINING_PLOT_ALT = "loss and held-out fidelity per epoch"
HISTOGRAM_ALT = "score histogram"


def _markdown_svg(fig, alt: str, summary: str) -> Plot:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "embedding_assets"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return Plot(summary, f"{summary}\n\n![{alt}](data:image/svg+xml;base64,{base64.b64encode(buffer.getvalue()).decode()})")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def padded_limits(values: list[float], pad: float = 0.1, floor: float = 0.005) -> tuple[float, float]:
    """Axis limits around the values: their span plus `pad` of it on each side, at least `floor` wide."""
    low, high = min(values), max(values)
    margin = max((high - low) * pad, floor)
    return low - margin, high + margin


def training_curves(loss: list[float], fidelity: list[dict[str, float]]) -> Plot:
    """Loss, held-out recall@10 and held-out Spearman per epoch, one panel each, each scaled to its values."""
    from matplotlib.ticker import MaxNLocator

    if not loss:
        return Plot("No training epoch ran (epochs 0): nothing to plot", "No training epoch ran (epochs 0): nothing to plot.")
    plt = _pyplot()
    epochs = list(range(1, len(loss) + 1))
    series = [(LOSS_AXIS, "loss", "distillation loss (train)", loss, "tab:blue")]
    summary = f"Training over {len(loss)} epochs: loss {loss[0]:.4f} -> {loss[-1]:.4f}"
    if fidelity and all(fidelity):
        recall = [f["recall_at_10"] for f in fidelity]
        spearman = [f["spearman"] for f in fidelity]
        series += [
            (RECALL_AXIS, "recall@10", "held-out recall@10", recall, "tab:orange"),
            (SPEARMAN_AXIS, "Spearman", "held-out Spearman", spearman, "tab:green"),
        ]
        summary += (
            f"; held-out recall@10 {recall[0]:.3f} -> {recall[-1]:.3f} (best {max(recall):.3f}, epoch {1 + recall.index(max(recall))}), "
            f"Spearman {spearman[0]:.3f} -> {spearman[-1]:.3f}"
        )
    fig, axes = plt.subplots(len(series), 1, figsize=(7.5, 1.5 + 1.9 * len(series)), sharex=True, squeeze=False)
    for ax, (gid, ylabel, label, values, color) in zip(axes[:, 0], series):
        ax.set_gid(gid)
        ax.plot(epochs, values, marker="o", color=color, label=label)
        ax.set_ylim(*padded_limits(values, floor=1e-4 if gid == LOSS_AXIS else 0.005))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        # Beside the plot, never over a line.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    bottom = axes[-1, 0]
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlim(0.8, len(loss) + 0.2)
    axes[0, 0].set_title("Training: each panel scaled to its own values")
    return _markdown_svg(fig, TRAINING_PLOT_ALT, summary)


def score_histogram(counts: list[int], threshold: float, score_range: tuple[float, float] = (0.0, 1.0), summary: str = "") -> Plot:
    """Histogram of scores over the head's score range with the keep threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    low, high = score_range
    width = (high - low) / len(counts)
    ax.bar([low + i * width for i in range(len(counts))], counts, width=width, align="edge", color="tab:blue", label="documents")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"keep threshold {threshold:.3f}")
    ax.set_xlim(low, high)
    ax.set_xlabel("score")
    ax.set_ylabel("documents")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    summary = summary or f"Scores of {sum(counts):,} documents, with the keep threshold {threshold:.3f}"
    return _markdown_svg(fig, HISTOGRAM_ALT, summary)

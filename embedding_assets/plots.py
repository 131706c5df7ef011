"""Small PNG plots embedded in markdown metadata, so the Dagster UI shows them inline."""

import base64
import io


def _markdown_png(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def _figure(width: float = 6.0, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def training_curves(loss: list[float], fidelity: list[dict[str, float]]) -> str:
    """Loss per epoch, and held-out recall@10 and Spearman per epoch on a second axis."""
    fig, ax = _figure()
    epochs = range(1, len(loss) + 1)
    ax.plot(epochs, loss, color="tab:blue", label="distillation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    lines = ax.get_lines()
    if fidelity and all(fidelity):
        other = ax.twinx()
        other.plot(epochs, [f["recall_at_10"] for f in fidelity], color="tab:orange", label="held-out recall@10")
        other.plot(epochs, [f["spearman"] for f in fidelity], color="tab:green", label="held-out Spearman")
        other.set_ylabel("held-out fidelity")
        other.set_ylim(0, 1)
        lines = lines + other.get_lines()
    # One legend for both axes.
    ax.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    ax.set_title("Training")
    return _markdown_png(fig, "loss and held-out fidelity per epoch")


def score_histogram(counts: list[int], threshold: float, score_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """Histogram of a shard's scores over their range with the keep threshold marked."""
    fig, ax = _figure(5.0, 2.6)
    low, high = score_range
    width = (high - low) / len(counts)
    ax.bar([low + i * width for i in range(len(counts))], counts, width=width, align="edge", color="tab:blue")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"keep threshold {threshold:.3f}")
    ax.set_xlim(low, high)
    ax.set_xlabel("score")
    ax.set_ylabel("documents")
    ax.legend(fontsize=8)
    return _markdown_png(fig, "score histogram")

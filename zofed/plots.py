"""PNG plots of a run's metrics: loss and held-out accuracy vs step, accuracy vs bytes sent per client."""

from __future__ import annotations

import os


def plot_run(rows: list[dict], out: str, title: str = "") -> list[str]:
    """Write loss_accuracy.png and accuracy_bytes.png into `out`; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib (`pip install matplotlib`)") from exc
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "accuracy" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.6, alpha=0.5, label="train (clients' batches)")
    ax1.plot([r["step"] for r in evals], [r["test_loss"] for r in evals], "o-", label="held-out")
    ax1.set(xlabel="step", ylabel="loss", title=title)
    ax1.legend()
    ax2.plot([r["step"] for r in evals], [100 * r["accuracy"] for r in evals], "o-")
    ax2.set(xlabel="step", ylabel="held-out accuracy (%)")
    fig.tight_layout()
    paths = [os.path.join(out, "loss_accuracy.png"), os.path.join(out, "accuracy_bytes.png")]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["bytes_up"] for r in evals], [100 * r["accuracy"] for r in evals], "o-", label="up")
    ax.plot([r["bytes_down"] for r in evals], [100 * r["accuracy"] for r in evals], "s--", label="down")
    ax.set(xlabel="bytes per client (wire, framing included)", ylabel="held-out accuracy (%)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths

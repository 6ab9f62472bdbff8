"""Plots of runs' metrics: loss and held-out accuracy vs step, accuracy vs bytes sent per client."""

from __future__ import annotations

import json
import os


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib (`pip install matplotlib`)") from exc
    return plt


FORMATS = ("png", "pdf", "svg")  # what `zofed plot --out` writes, chosen by the file's extension


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1][1:].lower()
    if ext not in FORMATS:
        raise ValueError(f"cannot tell the plot format of {path}: name it .png, .pdf or .svg")
    return ext


def _save(fig, path: str) -> None:
    """Atomically, so a kill never leaves a torn file."""
    tmp = f"{path}.tmp"
    fig.savefig(tmp, dpi=100, format=_format(path))
    os.replace(tmp, path)


def plot_run(rows: list[dict], out: str, title: str = "") -> list[str]:
    """Write loss_accuracy.png and accuracy_bytes.png into `out`; returns their paths."""
    plt = _pyplot()
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
    _save(fig, paths[0])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["bytes_up"] for r in evals], [100 * r["accuracy"] for r in evals], "o-", label="up")
    ax.plot([r["bytes_down"] for r in evals], [100 * r["accuracy"] for r in evals], "s--", label="down")
    ax.set(xlabel="bytes per client (wire, framing included)", ylabel="held-out accuracy (%)", title=title)
    ax.legend()
    fig.tight_layout()
    _save(fig, paths[1])
    plt.close(fig)
    return paths


def read_runs(folders: list[str], labels: list[str] | None = None) -> dict[str, list[dict]]:
    """label -> the held-out evaluations (metrics.jsonl rows with an accuracy) of each run folder, in the order
    given; a run is labelled by its folder unless `labels` names each run. Never merges or drops a run."""
    folders = [os.path.normpath(f) for f in folders]
    for f in folders:
        if folders.count(f) > 1:
            raise ValueError(f"{f} is given twice")
    if labels is None:
        labels = folders
    elif len(labels) != len(folders):
        raise ValueError(f"{len(folders)} runs but {len(labels)} --label: give one label per run, in order")
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"two runs are labelled {label!r}: each curve needs its own label")
    curves = {}
    for label, folder in zip(labels, folders):
        try:
            with open(os.path.join(folder, "summary.json")) as f:
                json.load(f)  # only a finished run has one
            with open(os.path.join(folder, "metrics.jsonl")) as f:
                curves[label] = [r for r in map(json.loads, f) if "accuracy" in r]
        except (OSError, ValueError) as exc:
            raise ValueError(f"{folder} is not a finished zofed run folder: {exc}") from None
    return curves


def plot_runs(folders: list[str], path: str, labels: list[str] | None = None) -> str:
    """Overlay runs (folders written by `zofed run`): held-out accuracy vs step and vs bytes up per client, one
    curve per folder (see read_runs); the format follows path's extension (FORMATS)."""
    _format(path)  # refuse a name we cannot honour before any work
    return plot_curves(read_runs(folders, labels), path)


def plot_curves(curves: dict[str, list[dict]], path: str) -> str:
    """Held-out accuracy vs step, and vs bytes up per client for the runs that sent any, one line per label;
    rows as in metrics.jsonl (step, accuracy, bytes_up)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, evals in curves.items():
        ax1.plot([r["step"] for r in evals], [100 * r["accuracy"] for r in evals], "o-", ms=3, label=label)
        sent = [r for r in evals if r.get("bytes_up")]
        if sent:
            ax2.plot([r["bytes_up"] for r in sent], [100 * r["accuracy"] for r in sent], "o-", ms=3, label=label)
    ax1.set(xlabel="step", ylabel="held-out accuracy (%)")
    ax2.set(xlabel="bytes up per client (log scale)", ylabel="held-out accuracy (%)", xscale="log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path

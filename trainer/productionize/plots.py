"""Plots a person would rather look at than read: the variants' trade-offs, a confusion matrix.

Matplotlib with the Agg backend (files only, no display).
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np


def _pyplot() -> Any:
    return plt


def tradeoff_plot(rows: list[dict[str, Any]], path: str, title: str = "Model variants") -> str:
    """Accuracy vs size and accuracy vs latency, one point per variant.

    ``rows``: ``{"name", "accuracy", "bytes", "latency_ms"}`` (latency may be None: not drawn
    in the latency panel). Marker area grows with bytes in both panels.
    """
    plt = _pyplot()
    fig, (ax_size, ax_latency) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    sizes = np.array([max(r["bytes"], 1) for r in rows], dtype=np.float64)
    area = 40 + 300 * (np.log10(sizes) - np.log10(sizes.min())) / max(np.ptp(np.log10(sizes)), 1e-9)
    colors = plt.cm.tab10(np.arange(len(rows)) % 10)
    for i, row in enumerate(rows):
        ax_size.scatter(row["bytes"] / 1024, row["accuracy"], s=area[i], color=colors[i], alpha=0.8,
                        label=row["name"], edgecolors="black", linewidths=0.5)  # fmt: skip
        ax_size.annotate(row["name"], (row["bytes"] / 1024, row["accuracy"]), textcoords="offset points",
                         xytext=(6, 6), fontsize=8)  # fmt: skip
        if row.get("latency_ms") is not None:
            ax_latency.scatter(row["latency_ms"], row["accuracy"], s=area[i], color=colors[i], alpha=0.8,
                               edgecolors="black", linewidths=0.5)  # fmt: skip
            ax_latency.annotate(f"{row['name']}\n{row['bytes'] / 1024:.0f} KiB",
                                (row["latency_ms"], row["accuracy"]), textcoords="offset points",
                                xytext=(6, 6), fontsize=8)  # fmt: skip
    ax_size.set_xscale("log")
    ax_size.set_xlabel("size on disk (KiB, log)")
    ax_size.set_ylabel("eval accuracy")
    ax_latency.set_xscale("log")
    ax_latency.set_xlabel("latency per event, p50 (ms, batch 1, 1 thread, log)")
    for ax in (ax_size, ax_latency):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion_plot(matrix: np.ndarray, classes: list[str], path: str, title: str = "Confusion matrix") -> str:
    """Counts per (true, predicted) class, with row-normalised shading."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    n = len(classes)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)  # fmt: skip
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

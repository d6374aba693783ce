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

    ``rows``: ``{"name", "accuracy", "bytes", "latency_ms"}`` and optionally ``"format"`` (latency
    may be None: not drawn in the latency panel). Variants are told apart by colour and marker in
    one legend that names each one's size and format (labels next to the points collide where two
    variants sit close, as int8 and float16 do); the axes get plain-number ticks even when they
    span less than a decade.
    """
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, (ax_size, ax_latency) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    colors = plt.cm.tab10(np.arange(len(rows)) % 10)
    markers = "osD^vP*Xph"
    for i, row in enumerate(rows):
        kib = row["bytes"] / 1024
        fmt = f", {row['format']}" if row.get("format") else ""
        style = {"color": colors[i], "marker": markers[i % len(markers)], "s": 70, "alpha": 0.85,
                 "edgecolors": "black", "linewidths": 0.5}  # fmt: skip
        ax_size.scatter(kib, row["accuracy"], label=f"{row['name']} ({kib:,.0f} KiB{fmt})", **style)
        if row.get("latency_ms") is not None:
            ax_latency.scatter(row["latency_ms"], row["accuracy"], **style)
    for ax, label in (
        (ax_size, "size on disk (KiB, log)"),
        (ax_latency, "latency per event, p50 (ms, batch 1, 1 thread, log)"),
    ):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.1)
    ax_size.set_ylabel("eval accuracy")
    fig.legend(loc="lower center", ncol=min(4, max(1, len(rows))), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
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

"""The pre-training curve: what a person looks at to see whether the pretext learned."""

from __future__ import annotations

import os
from typing import Any


def plot_pretrain_curve(report: dict[str, Any], path: str) -> str:
    """NT-Xent loss per step (and its moving average) against the chance level; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses = np.asarray(report["losses"], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="#9ab", linewidth=0.8, label="NT-Xent loss per step")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="#036", label=f"moving mean ({window} steps)")
    ax.axhline(report["chance_loss"], color="#c33", linestyle="--", linewidth=0.8, label="chance, log(2B-1)")
    ax.set_xlabel("step")
    ax.set_ylabel("pretext loss")
    events = report["events"]["total"]
    ax.set_title(f"pre-training ({report['strategy']}): {events} events, batch {report['batch']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""The training-curve plot a person looks at instead of reading the loss list."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window: before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np


def plot_training_curve(report: dict[str, Any], path: str) -> str:
    """Per-step loss (and a moving average), the eval loss at every check and the best one, over
    the learning-rate schedule; returns ``path``."""

    losses = np.asarray(report["losses"], dtype=float)
    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    window = max(1, min(20, len(losses) // 10))
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(
            steps[window - 1 :], smooth, color="tab:blue", linewidth=2, label=f"loss ({window}-step mean)"
        )
    evals = report.get("eval_history") or []
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", color="tab:green",
                markersize=3, linewidth=1, label="eval loss")  # fmt: skip
        best = report.get("best") or {}
        if best:
            ax.axvline(
                best["step"], color="tab:green", linestyle=":", label=f"best eval loss (step {best['step']})"
            )
    if report.get("resumed_from_step"):
        ax.axvline(report["resumed_from_step"], color="gray", linestyle="--", label="resumed")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    lr_ax = ax.twinx()
    lr_ax.plot(np.arange(1, len(report["learning_rates"]) + 1), report["learning_rates"], color="tab:orange",
               linewidth=1, label="learning rate")  # fmt: skip
    lr_ax.set_ylabel("learning rate", color="tab:orange")
    lr_ax.set_ylim(0, 1.1 * max(report["learning_rates"] or [1.0]))
    mesh = ",".join(f"{k}={v}" for k, v in report["mesh"].items())
    layout = f" {report['fc_layout']}" if report.get("fc_layout") else ""
    ax.set_title(
        f"teacher {report['strategy']}{layout} ({mesh}), batch {report['global_batch_size']}: "
        f"eval accuracy {report['eval']['accuracy']:.3f}",
        fontsize=9,
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

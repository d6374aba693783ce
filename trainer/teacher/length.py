"""When the teacher stops: the patience rule, the decay's shape it depends on, and how a run's
length is worded in every report. Plain Python, so the pipeline's reports can import it
without TensorFlow."""

from __future__ import annotations

from typing import Any

from contract.config import TeacherConfig


def patience_exhausted(cfg: TeacherConfig, evals: list[dict[str, Any]], step: int, planned: int) -> bool:
    """True once ``patience`` eval checks in a row found no new lowest eval loss (past
    ``min_steps``), all of them made in the second half of the decay (``annealed_from``).

    Checks at a high learning rate do not count: the eval loss there is noisy and falls again as
    the rate decays, so stopping on it would export an unannealed checkpoint. A run of fixed
    length (``cfg.steps``), with ``patience`` 0 or at its ``planned`` end never stops early.
    """
    if cfg.steps > 0 or cfg.patience <= 0 or step < cfg.min_steps or step >= planned or not evals:
        return False
    best = min(range(len(evals)), key=lambda i: (evals[i]["loss"], evals[i]["step"]))
    waited = evals[best + 1 :]
    return len(waited) >= cfg.patience and waited[-cfg.patience]["step"] >= annealed_from(cfg, planned)


def steps_text(train_report: dict[str, Any]) -> str:
    """A train report's length as every report words it: '630 steps of 1061 planned, stopped
    early', or '1061 steps'."""
    trained = train_report.get("steps_trained", train_report.get("steps"))
    if train_report.get("stopped_early"):
        return f"{trained} steps of {train_report.get('steps')} planned, stopped early"
    return f"{trained} steps"


def hold_until(warmup_steps: int, decay_start: float, steps: int) -> float:
    """The step at which the cosine decay begins."""
    return max(float(max(warmup_steps, 0)), decay_start * float(steps))


def annealed_from(cfg: TeacherConfig, planned: int) -> float:
    """The step half way through the decay, from which eval checks count towards patience."""
    start = hold_until(cfg.warmup_steps, cfg.decay_start, planned)
    return start + max(0.0, planned - start) / 2

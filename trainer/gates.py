"""Blessing on plain numbers, for reports outside the pipeline (the productionize benchmark).

The pipeline does not call this: its gates are the TFMA thresholds of
``pipeline.evaluation.eval_config`` (run by the stock Evaluators) and the ReleaseGate's
student-vs-teacher check. ``decide_blessing`` applies exactly those (``check_accuracies`` walks
the same ``eval_config``; ``student_vs_teacher`` is the ReleaseGate's own function) to
accuracies measured elsewhere, with the same failure records and messages, so the two cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import layout
from pipeline.config import GateConfig


@dataclass
class BlessingDecision:
    blessed: bool
    reasons: list[str] = field(default_factory=list)  # why not blessed; empty when blessed
    checks: dict[str, Any] = field(default_factory=dict)  # failures (structured) and what was checked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _slices(overall: float, per_class: dict[str, float] | None) -> dict[str, float]:
    from pipeline.evaluation import OVERALL

    return {OVERALL: overall, **{f"{layout.LABEL_NAME}={c}": v for c, v in (per_class or {}).items()}}


def decide_blessing(
    teacher_accuracy: float,
    student_accuracy: float,
    gates: GateConfig,
    baseline_accuracy: float | None = None,
    *,
    teacher_class_accuracy: dict[str, float] | None = None,
    student_class_accuracy: dict[str, float] | None = None,
) -> BlessingDecision:
    """Bless the student iff every gate passes: the overall floor (both models), the per-class
    floor on each class given in ``*_class_accuracy`` ({class name: accuracy}), the student
    against the teacher, and (``baseline_accuracy``: the last blessed student's; None = first run)
    no regression."""
    from pipeline.evaluation import check_accuracies, student_vs_teacher

    baseline = None if baseline_accuracy is None else _slices(baseline_accuracy, None)
    failures = check_accuracies("teacher", _slices(teacher_accuracy, teacher_class_accuracy), gates)
    failures += check_accuracies("student", _slices(student_accuracy, student_class_accuracy), gates, baseline=baseline)
    relative = student_vs_teacher(teacher_accuracy, student_accuracy, gates.max_student_drop)
    if relative is not None:
        failures.append(relative)
    checks = {
        "failures": failures,
        "per_class": bool(teacher_class_accuracy or student_class_accuracy),
        "regression": "skipped: no blessed model yet" if baseline is None else "checked",
    }
    return BlessingDecision(not failures, [f["message"] for f in failures], checks)

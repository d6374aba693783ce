"""The release decision: everything that must hold before the student is pushed, in one verdict.

The stock Evaluators check the floors and the regression (``components.gates.accuracy``); the
verdict repeats each failure as TFMA recorded it, adds what TFMA cannot compare (the student
against the teacher of this run), the TFLite parity verdict and the serving validation. The
ReleaseGate applies it to the pipeline's artifacts; ``decide_on_accuracies`` applies the same
rules to accuracies a benchmark measured.
"""

from __future__ import annotations

from components.gates.accuracy import (
    LAST_BLESSED,
    MISSING,
    OVERALL,
    check_accuracies,
    overall_accuracy,
    student_vs_teacher,
    tfma_failures,
)
from contract import layout
from contract.config import GateConfig


def decide(
    *,
    teacher_accuracy: float,
    student_accuracy: float,
    failures: list,
    lite: dict | None,
    infra_blessed: bool | None,
    max_student_drop: float,
    teacher_blessed: bool = True,
    student_blessed: bool = True,
) -> dict:
    """The release verdict: ``failures`` (TFMA's, as ``tfma_failures`` reads them, or
    ``check_accuracies``') plus the student-vs-teacher check, and a problem line for each;
    then parity, serving.

    ``teacher_blessed`` / ``student_blessed`` are the Evaluators' blessings: a refusal that
    names no failure is still a refusal."""

    failures = list(failures)
    for model, blessed in (("teacher", teacher_blessed), ("student", student_blessed)):
        if not blessed and not any(f["model"] == model for f in failures):
            failures.append({"model": model, "metric": None, "slice": None, "kind": MISSING, "value": None,
                             "threshold": None,
                             "message": f"{model}: TFMA did not bless it and named no failure"})  # fmt: skip
    relative = student_vs_teacher(teacher_accuracy, student_accuracy, max_student_drop)
    if relative is not None:
        failures.append(relative)
    problems = [f["message"] for f in failures]
    if lite is not None:
        # int8 at the top level; float16 (when converted) under "float16"; the reference is the
        # float student they were converted from.
        reference = lite.get("reference", "the float student")
        checks = [("int8", lite)] + ([("float16", lite["float16"])] if lite.get("float16") else [])
        for variant, check in checks:
            if not check.get("agreement", 0) >= check.get("min_agreement", 1):
                problems.append(
                    f"{variant} TFLite: top-1 agreement with {check.get('reference', reference)} is "
                    f"{check.get('agreement', 0):.1%} of "
                    f"{check.get('events', 0)} events (train, unlabelled and eval), "
                    f"below lite.min_agreement {check.get('min_agreement', 0):.1%}"
                )
        if not lite.get("blessed", False) and not any("TFLite" in p for p in problems):
            problems.append("the TFLite models were not blessed by the LiteConverter")
    if infra_blessed is False:
        problems.append("the student did not load or answer correctly in the server (ServingValidator)")
    return {
        "blessed": not problems,
        "problems": problems,
        "failures": failures,
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "student_vs_teacher": student_accuracy / teacher_accuracy if teacher_accuracy else None,
        "lite": lite,
        "infra_blessed": infra_blessed,
    }


def release_verdict(
    teacher_evaluation_uri: str,
    student_evaluation_uri: str,
    *,
    lite: dict | None,
    infra_blessed: bool | None,
    max_student_drop: float,
    teacher_blessed: bool = True,
    student_blessed: bool = True,
) -> dict:
    """``decide`` on two Evaluator outputs: their accuracies and validation failures."""

    return decide(
        teacher_accuracy=overall_accuracy(teacher_evaluation_uri),
        student_accuracy=overall_accuracy(student_evaluation_uri),
        failures=tfma_failures(teacher_evaluation_uri, "teacher")
        + tfma_failures(student_evaluation_uri, "student", baseline=LAST_BLESSED),
        lite=lite,
        infra_blessed=infra_blessed,
        max_student_drop=max_student_drop,
        teacher_blessed=teacher_blessed,
        student_blessed=student_blessed,
    )


def _slices(overall: float, per_class: dict[str, float] | None) -> dict[str, float]:
    return {OVERALL: overall, **{f"{layout.LABEL_NAME}={c}": v for c, v in (per_class or {}).items()}}


def decide_on_accuracies(
    teacher_accuracy: float,
    student_accuracy: float,
    gates: GateConfig,
    baseline_accuracy: float | None = None,
    *,
    teacher_class_accuracy: dict[str, float] | None = None,
    student_class_accuracy: dict[str, float] | None = None,
) -> dict:
    """``decide`` on accuracies measured outside TFMA (a benchmark): the overall floor (both
    models), the per-class floor on each class given in ``*_class_accuracy`` ({class name:
    accuracy}), no regression against ``baseline_accuracy`` (the last blessed student's; None =
    first run) and the student against the teacher. No TFLite or serving verdict enters."""
    baseline = None if baseline_accuracy is None else _slices(baseline_accuracy, None)
    failures = check_accuracies("teacher", _slices(teacher_accuracy, teacher_class_accuracy), gates)
    failures += check_accuracies(
        "student", _slices(student_accuracy, student_class_accuracy), gates, baseline=baseline
    )
    verdict = decide(
        teacher_accuracy=teacher_accuracy, student_accuracy=student_accuracy, failures=failures,
        lite=None, infra_blessed=None, max_student_drop=gates.max_student_drop,
    )  # fmt: skip
    verdict["regression"] = "skipped: no blessed model yet" if baseline is None else "checked"
    return verdict

"""Blessing: may a student replace the production model? Decision logic and TFMA configs.

Three checks on eval accuracy (``pipeline.config.GateConfig``):

1. absolute floor: teacher and student both reach ``min_accuracy``;
2. relative to the teacher: student >= (1 - ``max_student_drop``) x teacher;
3. no regression: student >= last blessed model - ``max_regression`` (skipped on the first run,
   when nothing has been blessed yet).

``decide_blessing`` is the decision on plain numbers (what the pipeline, the benchmark and the
tests use); ``eval_config`` builds the equivalent stock TFMA ``EvalConfig`` for the Evaluator:
TFMA compares a candidate with one baseline, so check 2 is an Evaluator run with the teacher
as baseline and check 3 one with the last blessed model as baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import layout
from pipeline.config import GateConfig

ACCURACY_METRIC = "SparseCategoricalAccuracy"
BASELINES = ("teacher", "last_blessed")


@dataclass
class BlessingDecision:
    blessed: bool
    reasons: list[str] = field(default_factory=list)  # why not blessed; empty when blessed
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_blessing(
    teacher_accuracy: float,
    student_accuracy: float,
    gates: GateConfig,
    baseline_accuracy: float | None = None,
) -> BlessingDecision:
    """Bless the student iff every check passes; ``baseline_accuracy`` None = first run."""
    reasons: list[str] = []
    checks: dict[str, Any] = {}

    floor_ok = teacher_accuracy >= gates.min_accuracy and student_accuracy >= gates.min_accuracy
    checks["floor"] = {
        "passed": floor_ok,
        "min_accuracy": gates.min_accuracy,
        "teacher": teacher_accuracy,
        "student": student_accuracy,
    }
    if not floor_ok:
        for name, value in (("teacher", teacher_accuracy), ("student", student_accuracy)):
            if value < gates.min_accuracy:
                reasons.append(f"{name} accuracy {value:.4f} is below the floor {gates.min_accuracy:.4f}")

    required = (1.0 - gates.max_student_drop) * teacher_accuracy
    relative_ok = student_accuracy >= required
    checks["student_vs_teacher"] = {
        "passed": relative_ok,
        "required": required,
        "max_student_drop": gates.max_student_drop,
    }
    if not relative_ok:
        reasons.append(
            f"student accuracy {student_accuracy:.4f} < (1 - {gates.max_student_drop}) x teacher "
            f"{teacher_accuracy:.4f} = {required:.4f}"
        )

    if baseline_accuracy is None:
        checks["regression"] = {"passed": True, "skipped": "no blessed model yet"}
    else:
        allowed = baseline_accuracy - gates.max_regression
        regression_ok = student_accuracy >= allowed
        checks["regression"] = {
            "passed": regression_ok,
            "baseline": baseline_accuracy,
            "required": allowed,
            "max_regression": gates.max_regression,
        }
        if not regression_ok:
            reasons.append(
                f"student accuracy {student_accuracy:.4f} regresses more than {gates.max_regression} "
                f"from the last blessed model's {baseline_accuracy:.4f}"
            )
    return BlessingDecision(not reasons, reasons, checks)


def eval_config(gates: GateConfig, baseline: str | None = None) -> Any:
    """TFMA ``EvalConfig`` for the student (candidate) on the eval split.

    ``baseline``: None (floor only), ``"teacher"`` (relative drop: relative change >=
    -max_student_drop) or ``"last_blessed"`` (absolute change >= -max_regression). Models are
    fed serialized examples through the ``serving_examples`` signature; the label is the
    ``label`` feature and the prediction the ``probabilities`` output.
    """
    import tensorflow_model_analysis as tfma

    from trainer.export import EXAMPLES_SIGNATURE

    if baseline not in (None, *BASELINES):
        raise ValueError(f"baseline must be None or one of {BASELINES}, got {baseline!r}")

    def model_spec(name: str, is_baseline: bool = False) -> Any:
        return tfma.ModelSpec(
            name=name,
            signature_name=EXAMPLES_SIGNATURE,
            label_key=layout.LABEL,
            prediction_key=layout.OUT_PROBABILITIES,
            is_baseline=is_baseline,
        )

    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.min_accuracy})
    )
    if baseline == "teacher":
        threshold.change_threshold.CopyFrom(
            tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER, relative={"value": -gates.max_student_drop}
            )
        )
    elif baseline == "last_blessed":
        threshold.change_threshold.CopyFrom(
            tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -gates.max_regression}
            )
        )
    specs = [model_spec("candidate")]
    if baseline:
        specs.append(model_spec("baseline", is_baseline=True))
    return tfma.EvalConfig(
        model_specs=specs,
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name=ACCURACY_METRIC, threshold=threshold),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            )
        ],
    )

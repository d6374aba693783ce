"""Accuracy gates: the TFMA evaluation config the Evaluators apply (teacher and student), what
TFMA found, and the same thresholds on accuracies measured elsewhere.

The thresholds (``contract.config.GateConfig``), all on sparse categorical accuracy:

- ``min_accuracy``: the floor on the overall slice (teacher and student);
- ``min_class_accuracy``: the floor on every ``label_name`` slice, one class each;
- ``max_regression``: the student's overall accuracy may drop at most this much below the last
  blessed student's (the Evaluator's baseline; skipped on the first run, with no baseline);
- ``max_student_drop``: the student's overall accuracy >= (1 - max drop) x the teacher's
  (``student_vs_teacher``: TFMA cannot compare two different models of one run).

``tfma_failures`` turns an Evaluator output's validation result into one structured failure per
broken threshold, with a message naming the model, metric, slice, value and threshold, all read
from what TFMA wrote (never re-derived from the config). ``check_accuracies`` applies the same
``eval_config`` thresholds to accuracies measured elsewhere (a benchmark), with the same failure
records and messages, so the two paths cannot drift apart.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow_model_analysis as tfma

from contract import layout
from contract.config import GateConfig

ACCURACY = "sparse_categorical_accuracy"
EXAMPLES_SIGNATURE = "serving_examples"  # every exported model takes serialized layout examples here
OVERALL = "overall"  # the overall (unsliced) slice's name in failures and accuracies
BASELINE_MODEL = "baseline"  # tfma.BASELINE_KEY: the name the Evaluator gives its baseline model
LAST_BLESSED = "the last blessed student"  # the StudentEvaluator's baseline, in messages
# Failure kinds.
FLOOR = "floor"  # a lower bound on the overall slice
CLASS_FLOOR = "class_floor"  # a lower bound on one class's slice
REGRESSION = "regression"  # a change threshold against the baseline model
STUDENT_VS_TEACHER = "student_vs_teacher"  # the student's accuracy relative to the teacher's
MISSING = "missing"  # a threshold TFMA could not check (no metric, no matching slice, ...)


def eval_config(gates: GateConfig, *, with_baseline: bool) -> Any:
    """Accuracy on the eval split: ``min_accuracy`` on the overall slice, ``min_class_accuracy``
    on every class slice and, with a baseline, no overall regression beyond ``max_regression``
    against the last blessed model (the Evaluator drops it while there is none)."""

    overall = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.min_accuracy}),
    )
    if with_baseline:
        overall.change_threshold.CopyFrom(
            tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -gates.max_regression},
            )
        )
    per_class = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.min_class_accuracy}),
    )
    class_slices = tfma.SlicingSpec(feature_keys=[layout.LABEL_NAME])
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=EXAMPLES_SIGNATURE,
                label_key=layout.LABEL,
                prediction_key=layout.OUT_PROBABILITIES,
            )
        ],
        slicing_specs=[tfma.SlicingSpec(), class_slices],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name="SparseCategoricalAccuracy",
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()], threshold=overall
                            ),
                            tfma.PerSliceMetricThreshold(slicing_specs=[class_slices], threshold=per_class),
                        ],
                    ),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            )
        ],
    )


# -- failures and their messages -----------------------------------------------------------------
def _failure(model, metric, slice_, kind, value, threshold, message, **extra) -> dict[str, Any]:  # noqa: ANN001
    return {"model": model, "metric": metric, "slice": slice_, "kind": kind, "value": value,
            "threshold": threshold, **extra, "message": message}  # fmt: skip


def _on(slice_: str) -> str:
    return "the overall slice" if slice_ == OVERALL else f"slice {slice_}"


def _bound_failure(
    model: str, metric: str, slice_: str, value: float, bounds: Any, source: str
) -> dict[str, Any]:
    """A broken GenericValueThreshold (``bounds``) on ``slice_``."""
    kind = CLASS_FLOOR if slice_.startswith(f"{layout.LABEL_NAME}=") else FLOOR
    if bounds.HasField("lower_bound") and value < bounds.lower_bound.value:
        lower = bounds.lower_bound.value
        floor = "per-class floor" if kind == CLASS_FLOOR else "floor"
        return _failure(model, metric, slice_, kind, value, lower,
                        f"{model}: {metric} on {_on(slice_)} is {value:.3f}, "
                        f"below the {floor} {lower:.3f}{source}")  # fmt: skip
    upper = bounds.upper_bound.value
    return _failure(model, metric, slice_, kind, value, {"upper_bound": upper},
                    f"{model}: {metric} on {_on(slice_)} is {value:.3f}, "
                    f"above the bound {upper:.3f}{source}")  # fmt: skip


def _change_failure(
    model: str, metric: str, slice_: str, value: float | None, change: float, rule: Any,
    baseline_name: str, baseline: float | None, source: str,
) -> dict[str, Any]:  # fmt: skip
    """A broken GenericChangeThreshold (``rule``): ``change`` = value - baseline, as TFMA compares."""
    threshold: dict[str, Any] = {"baseline_model": baseline_name, "baseline": baseline}
    allowed = []
    if rule.HasField("absolute"):
        threshold["allowed_change"] = rule.absolute.value
        allowed.append(f"{rule.absolute.value:+.3f}")
    if rule.HasField("relative"):
        threshold["allowed_relative_change"] = rule.relative.value
        allowed.append(f"{rule.relative.value:+.1%} relative")
    against = f"{baseline_name} ({baseline:.3f})" if baseline is not None else baseline_name
    return _failure(
        model, metric, slice_, REGRESSION, value, threshold,
        f"{model}: {metric} on {_on(slice_)} changed by {change:+.3f} against {against}, "
        f"more than the allowed {' and '.join(allowed)}{source}",
        change=change,
    )  # fmt: skip


def student_vs_teacher(
    teacher_accuracy: float, student_accuracy: float, max_student_drop: float
) -> dict | None:
    """The failure when the student's overall accuracy is under (1 - max drop) x the teacher's."""
    needed = (1.0 - max_student_drop) * teacher_accuracy
    if student_accuracy >= needed:
        return None
    return _failure(
        "student", ACCURACY, OVERALL, STUDENT_VS_TEACHER, student_accuracy,
        {"baseline_model": "teacher", "baseline": teacher_accuracy,
         "allowed_relative_change": -max_student_drop, "lower_bound": needed},
        f"student vs teacher: {ACCURACY} on the overall slice is {student_accuracy:.3f} for the student, "
        f"below (1 - {max_student_drop:g}) x the teacher's {teacher_accuracy:.3f} = {needed:.3f}",
        change=student_accuracy / teacher_accuracy - 1.0 if teacher_accuracy else None,
    )  # fmt: skip


# -- reading an Evaluator output -----------------------------------------------------------------
class _Metric(NamedTuple):
    """A metric's identity apart from its model (so candidate and baseline keys match)."""

    name: str
    output_name: str
    sub_key: bytes
    aggregation_type: bytes
    is_diff: bool
    example_weighted: bool | None

    @classmethod
    def of(cls, key: Any, *, is_diff: bool | None = None) -> _Metric:
        return cls(
            key.name, key.output_name, key.sub_key.SerializeToString(deterministic=True),
            key.aggregation_type.SerializeToString(deterministic=True),
            key.is_diff if is_diff is None else is_diff,
            key.example_weighted.value if key.HasField("example_weighted") else None,
        )  # fmt: skip


def slice_name(slice_key: Any) -> str:
    """``overall`` or ``label_name=animal`` (``a=1,b=2`` for crosses) for a TFMA SliceKey proto."""
    parts = []
    for key in slice_key.single_slice_keys:
        value = getattr(key, key.WhichOneof("kind") or "bytes_value")
        parts.append(f"{key.column}={value.decode() if isinstance(value, bytes) else value}")
    return ",".join(parts) or OVERALL


def _metric_values(evaluation_uri: str) -> dict[tuple[str, str], dict[_Metric, float]]:
    """``{(slice, model name): {metric: value}}`` for every scalar metric TFMA wrote."""

    out: dict[tuple[str, str], dict[_Metric, float]] = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        name = slice_name(metrics.slice_key)
        for kv in metrics.metric_keys_and_values:
            if kv.value.WhichOneof("type") == "double_value":
                out.setdefault((name, kv.key.model_name), {})[_Metric.of(kv.key)] = (
                    kv.value.double_value.value
                )
    return out


def slice_accuracies(evaluation_uri: str) -> dict[str, float]:
    """The candidate's accuracy per slice, ``{"overall": 0.76, "label_name=animal": 0.43, ...}``."""
    out: dict[str, float] = {}
    for (name, model), values in _metric_values(evaluation_uri).items():
        if model != BASELINE_MODEL:
            for metric, value in values.items():
                if metric.name == ACCURACY and not metric.is_diff:
                    out[name] = float(value)
    return out


def overall_accuracy(evaluation_uri: str) -> float:
    """The candidate's overall accuracy from a TFMA Evaluator output."""
    accuracies = slice_accuracies(evaluation_uri)
    if OVERALL not in accuracies:
        raise ValueError(f"no overall {ACCURACY} in TFMA result {evaluation_uri}")
    return accuracies[OVERALL]


def tfma_failures(evaluation_uri: str, model: str, *, baseline: str = "the baseline") -> list[dict[str, Any]]:
    """Every threshold TFMA found broken in an Evaluator output, one dict each; [] when validated.

    ``model`` names the evaluated model in the messages ("teacher", "student"), ``baseline``
    its baseline (``LAST_BLESSED``). Each failure: ``model``, ``metric``, ``slice``, ``kind``
    (floor | class_floor | regression | missing), ``value`` (the model's metric on the slice),
    ``threshold`` (the lower bound; for a change threshold ``{"baseline_model", "baseline",
    "allowed_change"}``), ``change`` (change thresholds: the difference TFMA compared) and a
    one-line ``message``.
    """

    result = tfma.load_validation_result(evaluation_uri)
    if result.validation_ok:
        return []
    values = _metric_values(evaluation_uri)
    failures = []
    for per_slice in result.metric_validations_per_slice:
        if per_slice.HasField("cross_slice_key"):
            name = "cross slice " + str(tfma.slicer.deserialize_cross_slice_key(per_slice.cross_slice_key))
        else:
            name = slice_name(per_slice.slice_key)
        for failure in per_slice.failures:
            failures.append(_from_proto(failure, model, name, values, baseline))
    for spec in result.missing_slices:
        keys = ",".join(spec.feature_keys) or OVERALL
        failures.append(_failure(model, ACCURACY, keys, MISSING, None, None,
                                 f"{model}: no eval events in the slices {keys} "
                                 "a threshold names (TFMA)"))  # fmt: skip
    if result.missing_thresholds:
        failures.append(_failure(model, ACCURACY, OVERALL, MISSING, None, None,
                                 f"{model}: the TFMA config sets no thresholds, "
                                 "nothing was validated (TFMA)"))  # fmt: skip
    if not failures:
        failures.append(_failure(model, ACCURACY, OVERALL, MISSING, None, None,
                                 f"{model}: TFMA did not validate the model and named no failure "
                                 f"(see {evaluation_uri})"))  # fmt: skip
    return failures


def _from_proto(failure: Any, model: str, slice_: str, values: dict, baseline_name: str) -> dict[str, Any]:
    """One ValidationFailure proto as a structured failure with its message."""
    key, threshold = failure.metric_key, failure.metric_threshold
    if failure.metric_value.WhichOneof("type") != "double_value":
        return _failure(model, key.name, slice_, MISSING, None, None,
                        f"{model}: TFMA computed no {key.name} on {_on(slice_)} to check "
                        f"({failure.message.strip()})")  # fmt: skip
    value = failure.metric_value.double_value.value
    if not key.is_diff:
        return _bound_failure(model, key.name, slice_, value, threshold.value_threshold, " (TFMA)")
    plain = _Metric.of(key, is_diff=False)
    candidate = values.get((slice_, key.model_name), {}).get(plain)
    base = values.get((slice_, BASELINE_MODEL), {}).get(plain)
    if candidate is None and base is not None:
        candidate = base + value
    return _change_failure(model, key.name, slice_, candidate, value, threshold.change_threshold,
                           baseline_name, base, " (TFMA)")  # fmt: skip


# -- the same thresholds on accuracies measured elsewhere ----------------------------------------
def check_accuracies(
    model: str,
    accuracies: dict[str, float],
    gates: GateConfig,
    *,
    baseline: dict[str, float] | None = None,
    baseline_name: str = LAST_BLESSED,
) -> list[dict[str, Any]]:
    """``eval_config``'s thresholds applied to ``accuracies`` (``{"overall": ..., "label_name=c":
    ...}``, as ``slice_accuracies`` returns them), failures as ``tfma_failures`` gives them
    (without the "(TFMA)" mark). ``baseline``: the baseline's accuracies (None: first run)."""
    config = eval_config(gates, with_baseline=baseline is not None)
    failures = []
    for metric in config.metrics_specs[0].metrics:
        for rule in metric.per_slice_thresholds:
            keys = sorted(key for spec in rule.slicing_specs for key in spec.feature_keys)
            for slice_, value in accuracies.items():
                if sorted(part.split("=")[0] for part in slice_.split(",") if slice_ != OVERALL) != keys:
                    continue
                bounds = rule.threshold.value_threshold
                if (bounds.HasField("lower_bound") and value < bounds.lower_bound.value) or (
                    bounds.HasField("upper_bound") and value > bounds.upper_bound.value
                ):
                    failures.append(_bound_failure(model, ACCURACY, slice_, value, bounds, ""))
                base = (baseline or {}).get(slice_)
                change = rule.threshold.change_threshold
                if base is None or not change.ByteSize():
                    continue
                diff = value - base  # HIGHER_IS_BETTER, as eval_config sets it
                too_far = change.HasField("absolute") and diff < change.absolute.value
                too_far_relative = (
                    change.HasField("relative") and base > 0 and diff / base < change.relative.value
                )
                if too_far or too_far_relative:
                    failures.append(
                        _change_failure(model, ACCURACY, slice_, value, diff, change, baseline_name, base, "")
                    )
    return failures

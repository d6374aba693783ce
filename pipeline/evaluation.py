"""TFMA evaluation configs for the teacher and the student (stock Evaluator)."""

from __future__ import annotations

from typing import Any

from pipeline import layout
from pipeline.config import GateConfig

ACCURACY = "sparse_categorical_accuracy"
EXAMPLES_SIGNATURE = "serving_examples"  # every exported model takes serialized layout examples here


def eval_config(gates: GateConfig, *, with_baseline: bool) -> Any:
    """Accuracy on the eval split with the absolute floor; with a baseline, no regression beyond
    ``gates.max_regression`` against the last blessed model (skipped when there is none yet)."""
    import tensorflow_model_analysis as tfma

    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.min_accuracy}),
    )
    if with_baseline:
        threshold.change_threshold.CopyFrom(
            tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -gates.max_regression},
            )
        )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=EXAMPLES_SIGNATURE,
                label_key=layout.LABEL,
                prediction_key=layout.OUT_PROBABILITIES,
            )
        ],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[layout.LABEL_NAME])],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="SparseCategoricalAccuracy", threshold=threshold),
                    tfma.MetricConfig(class_name="ExampleCount"),
                ]
            )
        ],
    )


def overall_accuracy(evaluation_uri: str) -> float:
    """The candidate's overall accuracy from a TFMA Evaluator output."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation_uri)
    for slice_key, metrics in result.slicing_metrics:
        if slice_key == ():
            for _output, by_sub_key in metrics.items():
                for _sub_key, values in by_sub_key.items():
                    if ACCURACY in values:
                        return float(values[ACCURACY]["doubleValue"])
    raise ValueError(f"no overall {ACCURACY} in TFMA result {evaluation_uri}")

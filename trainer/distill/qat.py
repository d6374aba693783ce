"""Quantization-aware training of the pruned student that keeps its sparsity (TFMOT PQAT).

Post-training int8 quantization leaves the student's top-1 disagreeing with the float model
on a few percent of events (ties between classes that the rounding of activations flips;
docs/benchmarks.md, "Why the defaults are what they are"). QAT
fine-tunes with the int8 rounding simulated (fake-quant on weights and activations), so the
model learns margins that survive it; ``Default8BitPrunePreserveQuantizeScheme`` keeps the
pruning masks fixed while it does (Pruning-preserving QAT), so the zeros, and the sparse
encoding they buy, survive.

Every layer is annotated: stock layers through TFMOT's default 8-bit registry, our frame
reshapes (``MergeFrames``, ``SplitFrames``) as pass-through (an int8 reshape keeps its input's
scale; a range of their own makes the converter build a model that disagrees with its QAT
twin from the first layer on), our pooling layers with an output range. The TFLite converter
then finds a recorded range for every tensor.

The QAT model (float32 with the int8 rounding simulated) is the production float student:
TF Serving serves it, and the int8 TFLite converted from it is checked against it. Its
``float_twin``, the plain architecture holding the same weights without rounding, is what the
float16 TFLite is converted from (and checked against).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from contract import files
from trainer.models.student import CUSTOM_OBJECTS, MergeFrames, SplitFrames, build_student

QUANTIZE_INPUT_LAYER = "quantize_layer"
RESHAPES = (MergeFrames, SplitFrames)


def _quantize_configs() -> tuple[Any, Any]:
    """(OutputQuantizeConfig, PassThroughQuantizeConfig) for our weightless layers."""

    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """No weights to quantize; the layer's output gets an 8-bit moving-average range."""

        def get_weights_and_quantizers(self, layer: Any) -> list:
            return []

        def get_activations_and_quantizers(self, layer: Any) -> list:
            return []

        def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
            pass

        def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
            pass

        def get_output_quantizers(self, layer: Any) -> list:
            return [
                tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
                    num_bits=8, per_axis=False, symmetric=False, narrow_range=False
                )
            ]

        def get_config(self) -> dict:
            return {}

    class PassThroughQuantizeConfig(OutputQuantizeConfig):
        """A reshape: int8 kernels keep the input's scale, so the output gets no range of its own."""

        def get_output_quantizers(self, layer: Any) -> list:
            return []

    return OutputQuantizeConfig, PassThroughQuantizeConfig


def scope() -> Any:
    """``quantize_scope`` knowing our layers and their QuantizeConfig (to clone or load QAT models).

    TFMOT's wrappers deserialize the layer they wrap by its bare class name, so our layers are
    named both ways (``eventpipe>MergeFrames`` and ``MergeFrames``).
    """

    output, passthrough = _quantize_configs()
    bare = {name.rpartition(">")[2]: cls for name, cls in CUSTOM_OBJECTS.items()}
    return tfmot.quantization.keras.quantize_scope(
        {**CUSTOM_OBJECTS, **bare, "OutputQuantizeConfig": output, "PassThroughQuantizeConfig": passthrough}
    )


def save(qat: keras.Model, path: str) -> None:
    """Write the whole QAT model (wrappers, weights, ranges) to an H5 file ``load`` reads back."""
    with scope():
        qat.save(path)


def load(path: str) -> keras.Model:
    """The QAT model ``save`` wrote."""
    with scope():
        return keras.models.load_model(path, compile=False)


def trained_student(output: files.DistillerOutput) -> keras.Model | None:
    """The quantization-aware student of a Distiller output (None if QAT did not run).

    Loaded whole from H5, far faster than rebuilding it with ``quantize_apply``
    (docs/benchmarks.md, "Why the defaults are what they are").
    """
    return load(output.qat_h5) if os.path.exists(output.qat_h5) else None


def apply_qat(model: keras.Model, *, preserve_sparsity: bool = True) -> keras.Model:
    """A QAT copy of ``model`` (same weights); PQAT keeps its zeros when ``preserve_sparsity``."""

    annotate = tfmot.quantization.keras.quantize_annotate_layer
    output, passthrough = _quantize_configs()

    def annotate_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, RESHAPES):
            return annotate(layer, quantize_config=passthrough())
        if isinstance(layer, tuple(CUSTOM_OBJECTS.values())):
            return annotate(layer, quantize_config=output())
        return annotate(layer)

    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())
    with scope():
        annotated = keras.models.clone_model(base, clone_function=annotate_layer)
        if preserve_sparsity:
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
        else:
            qat = tfmot.quantization.keras.quantize_apply(annotated)
    return qat


RANGE_SUFFIXES = ("output_min", "output_max", "post_activation_min", "post_activation_max")


def calibrate_ranges(qat: keras.Model, float_model: keras.Model, batches: Any) -> int:
    """Start every activation range at what the float model's layers really output.

    TFMOT's moving-average quantizers start at [-6, 6] and move by 0.1% a step, so after the
    hundred-odd steps of a fine-tune a logit range is still ~[-5.4, 5.4]: the QAT model would
    learn with a coarse grid that post-training calibration does not have. Seeding each range
    with the observed min/max (always including 0, as TFMOT does) over ``batches`` fixes that;
    the fine-tune's moving averages then start from there. Returns the ranges set.
    """

    targets: dict[str, list[tuple[str, Any]]] = {}
    for weight in qat.weights:
        layer, _, leaf = weight.name.rpartition("/")
        leaf = leaf.split(":")[0]
        if layer.startswith("quant_") and leaf.endswith(RANGE_SUFFIXES):
            targets.setdefault(layer[len("quant_") :], []).append((leaf, weight))
    fresh = keras.models.clone_model(float_model)  # one graph (stripped models share layers with others)
    fresh.set_weights(float_model.get_weights())
    names = [n for n in targets if n in {layer.name for layer in fresh.layers}]
    probe = keras.Model(fresh.input, [fresh.get_layer(n).output for n in names])
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    for frames in batches:
        outputs = probe(frames, training=False)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for name, value in zip(names, outputs, strict=True):
            low[name] = min(low[name], float(tf.reduce_min(value)))
            high[name] = max(high[name], float(tf.reduce_max(value)))
    for name in names:
        for leaf, weight in targets[name]:
            weight.assign(np.float32(min(low[name], 0.0) if leaf.endswith("_min") else max(high[name], 0.0)))
    return sum(len(targets[n]) for n in names)


def pin_input_range(qat: keras.Model, low: float = 0.0, high: float = 1.0) -> None:
    """Fix the model input's quantization range to the pixel range [0, 1].

    The int8 input is then ``pixel - 128`` (uint8: ``pixel``), whatever range the moving
    averages saw during the short fine-tune, so an app can feed camera bytes directly.
    """
    layer = qat.get_layer(QUANTIZE_INPUT_LAYER)
    for weight in layer.weights:
        name = weight.name.split("/")[-1].split(":")[0]
        if name.endswith("_min"):
            weight.assign(np.float32(low))
        elif name.endswith("_max"):
            weight.assign(np.float32(high))


def float_twin(qat: keras.Model, spec: Any, cfg: Any) -> keras.Model:
    """The plain student architecture holding the QAT model's trained weights.

    The QAT wrappers keep the wrapped layers' variables under their original names
    (``stem/kernel:0``), beside the quantizers' ranges (``quant_stem/kernel_min:0``).
    """
    twin = build_student(spec, cfg)
    trained = {w.name: w for w in qat.weights}
    missing = [w.name for w in twin.weights if w.name not in trained]
    if missing:
        raise ValueError(f"the QAT model has no weights named {missing[:5]}")
    for weight in twin.weights:
        weight.assign(trained[weight.name])
    return twin


def sparsity_of(model: keras.Model, layer_names: list[str]) -> float:
    """Share of zeros in the kernels of ``layer_names`` (plain or QAT-wrapped model alike)."""
    zeros = size = 0
    for weight in model.weights:
        layer, _, leaf = weight.name.rpartition("/")
        if layer in layer_names and "kernel" in leaf and not leaf.endswith(("_min:0", "_max:0")):
            value = weight.numpy()
            zeros += int(np.sum(value == 0))
            size += value.size
    return zeros / size if size else 0.0

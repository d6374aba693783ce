"""Quantization-aware training of the pruned student that keeps its sparsity (TFMOT PQAT).

Post-training int8 quantization of the student left its top-1 disagreeing with the float
model on 2-4% of events (ties between classes that the rounding of activations flips). QAT
fine-tunes with the int8 rounding simulated (fake-quant on weights and activations), so the
model learns margins that survive it; ``Default8BitPrunePreserveQuantizeScheme`` keeps the
pruning masks fixed while it does (Pruning-preserving QAT), so the zeros, and the sparse
encoding they buy, survive.

Every layer is annotated: stock layers through TFMOT's default 8-bit registry, our small
frame-reshaping layers with ``OutputQuantizeConfig`` (no weights; their output quantized), so
the TFLite converter finds a recorded range for every tensor and needs no calibration guess.

The QAT model is what the int8 TFLite is converted from. Its float twin, the plain student
architecture holding the QAT-trained weights (``float_twin``), is the production float model
(SavedModel for TF Serving) that the int8 model is checked against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tf_keras as keras

from trainer.student_model import CUSTOM_OBJECTS, build_student

QUANTIZE_INPUT_LAYER = "quantize_layer"


def _output_quantize_config() -> Any:
    import tensorflow_model_optimization as tfmot

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

    return OutputQuantizeConfig


def scope() -> Any:
    """``quantize_scope`` knowing our layers and their QuantizeConfig (to clone or load QAT models)."""
    import tensorflow_model_optimization as tfmot

    config = _output_quantize_config()
    return tfmot.quantization.keras.quantize_scope({**CUSTOM_OBJECTS, "OutputQuantizeConfig": config})


def apply_qat(model: keras.Model, *, preserve_sparsity: bool = True) -> keras.Model:
    """A QAT copy of ``model`` (same weights); PQAT keeps its zeros when ``preserve_sparsity``."""
    import tensorflow_model_optimization as tfmot

    annotate = tfmot.quantization.keras.quantize_annotate_layer
    custom = tuple(CUSTOM_OBJECTS.values())
    config = _output_quantize_config()

    def annotate_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, custom):
            return annotate(layer, quantize_config=config())
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

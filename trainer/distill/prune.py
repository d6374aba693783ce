"""Magnitude pruning of the student with TFMOT, and the sparsity it reached.

Pruning runs while the student keeps distilling (``trainer.distill.kd``): ``prune_low_magnitude``
wraps every prunable kernel of at least ``MIN_PRUNABLE_WEIGHTS`` weights except the two output
layers (the class logits and the frame scores, where every weight matters); a
``PolynomialDecay`` schedule ramps sparsity from 0 to the target, ``UpdatePruningStep`` drives
it, and ``strip_pruning`` leaves a plain tf_keras model whose kernels hold the zeros (what the
TFLite converter encodes sparsely).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

from trainer.models.student import CONTEXT_SCORE_LAYER, LOGITS_LAYER, SCORE_LAYER

DEFAULT_EXCLUDE = (LOGITS_LAYER, SCORE_LAYER, CONTEXT_SCORE_LAYER)
# Kernels smaller than this (the stem, depthwise 3x3 filters, the first pointwise convs) stay
# dense: they are a sliver of the bytes, and pruning them costs demo accuracy
# (docs/benchmarks.md, "Why the defaults are what they are").
MIN_PRUNABLE_WEIGHTS = 2048


@dataclass(frozen=True)
class PruningPlan:
    """When the schedule starts, stops and how often it updates the masks (optimizer steps)."""

    target_sparsity: float
    begin_step: int
    end_step: int
    frequency: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_schedule(
    total_steps: int, target_sparsity: float, begin_fraction: float, end_fraction: float
) -> PruningPlan:
    """Place the polynomial ramp inside ``total_steps``; the last mask update lands on ``end_step``.

    TFMOT updates masks when ``(step - begin) % frequency == 0`` and ``begin <= step <= end``,
    so ``end - begin`` is made a multiple of ``frequency`` (about 10 updates over the ramp);
    otherwise the final update would fall short of the target.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    if not 0.0 <= begin_fraction < end_fraction <= 1.0:
        raise ValueError(
            f"pruning fractions need 0 <= begin < end <= 1, got begin={begin_fraction} end={end_fraction}"
        )
    if total_steps < 2:
        raise ValueError(f"pruning needs at least 2 training steps, got {total_steps}")
    begin = int(math.floor(begin_fraction * total_steps))
    ramp = max(1, int(math.floor(end_fraction * total_steps)) - begin)
    ramp = min(ramp, total_steps - 1 - begin)
    frequency = max(1, ramp // 10)
    ramp = max(frequency, (ramp // frequency) * frequency)
    return PruningPlan(target_sparsity, begin, begin + ramp, frequency)


def _kernel_names(layer: keras.layers.Layer) -> list[str]:
    """The weight names TFMOT prunes in ``layer`` ([] for layers it leaves alone)."""

    return list(prune_registry.PruneRegistry._LAYERS_WEIGHTS_MAP.get(type(layer), []))  # noqa: SLF001


def _prunable(layer: keras.layers.Layer, exclude: tuple[str, ...]) -> bool:
    if layer.name in exclude or not _kernel_names(layer):
        return False
    kernels = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0] in _kernel_names(layer)]
    return sum(int(np.prod(w.shape)) for w in kernels) >= MIN_PRUNABLE_WEIGHTS


def apply_pruning(
    model: keras.Model, plan: PruningPlan, exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> keras.Model:
    """A copy of ``model`` (same weights) whose prunable layers are wrapped for pruning.

    The copy owns its own variables, so training it leaves ``model`` (the dense student) intact.
    """

    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=plan.target_sparsity,
        begin_step=plan.begin_step,
        end_step=plan.end_step,
        frequency=plan.frequency,
    )
    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if _prunable(layer, exclude):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # clone_model keeps the layer objects ``wrap`` returns, so the wrappers hold base's weights.
    return keras.models.clone_model(base, clone_function=wrap)


def pruning_callbacks() -> list[keras.callbacks.Callback]:
    """The callbacks a pruned model must train with."""

    return [tfmot.sparsity.keras.UpdatePruningStep()]


def strip(model: keras.Model) -> keras.Model:
    """The plain tf_keras model under the pruning wrappers, zeros in its kernels."""

    return tfmot.sparsity.keras.strip_pruning(model)


def pruned_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers wrapped by ``prune_low_magnitude`` in a (not yet stripped) model."""

    return [layer.layer.name for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def sparsity_report(model: keras.Model, pruned_layers: list[str]) -> dict[str, Any]:
    """Per-layer and total sparsity of the kernels of ``pruned_layers`` (in a stripped model).

    ``total`` is over the pruned kernels; ``all_weights`` over every weight of the model
    (biases, batch-norm statistics and unpruned layers included), which is what file size sees.
    """
    layers: dict[str, Any] = {}
    zeros = size = 0
    for name in pruned_layers:
        layer = model.get_layer(name)
        weight_names = _kernel_names(layer)
        for w in layer.weights:
            if w.name.split("/")[-1].split(":")[0] not in weight_names:
                continue
            value = w.numpy()
            z = int(np.sum(value == 0))
            layers[f"{name}/{w.name.split('/')[-1].split(':')[0]}"] = {
                "weights": int(value.size),
                "zeros": z,
                "sparsity": z / value.size,
            }
            zeros += z
            size += value.size
    everything = [w.numpy() for w in model.weights]
    all_size = sum(v.size for v in everything)
    all_zeros = sum(int(np.sum(v == 0)) for v in everything)
    return {
        "layers": layers,
        "pruned_weights": int(size),
        "total": zeros / size if size else 0.0,
        "all_weights": all_zeros / all_size if all_size else 0.0,
    }

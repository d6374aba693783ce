"""Floating-point work of a model, for achieved-FLOP/s figures.

Counted by TensorFlow's graph profiler on the frozen forward pass of one event; a training
step costs about three forward passes (the backward pass computes two products per forward
product: gradients for inputs and for weights).
"""

from __future__ import annotations

from typing import Any

TRAINING_PASSES = 3


def forward_flops_per_event(model: Any, input_shape: tuple[int, ...]) -> int:
    """Float operations of ``model`` on a batch of one input of ``input_shape``."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False), autograph=False)
    concrete = fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    ).with_empty_output().build()
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    return int(info.total_float_ops)


def training_flops_per_event(model: Any, input_shape: tuple[int, ...]) -> int:
    """Approximate float operations of one training step per event (forward + backward)."""
    return TRAINING_PASSES * forward_flops_per_event(model, input_shape)

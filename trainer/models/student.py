"""The student: a small depthwise-separable event classifier that fits on a device.

Every frame of an event goes through the same MobileNet-style backbone (a strided 3x3 stem,
then stages of depthwise 3x3 + pointwise 1x1 blocks whose first block strides as configured,
global average pooling). Like the teacher's ``EventContrast``, the stem sees each frame and its
difference from the event's mean frame (two 3x3 convolutions, added): what moved is what tells
a vehicle from a person, and a backbone that sees one frame at a time cannot otherwise see it
(docs/benchmarks.md, "Why the defaults are what they are").
A per-frame score, computed
from the frame's features and the event's mean features (so what changed counts), is
softmax-normalised across the frames: those weights pool the frames. The same scores, tilted
towards earlier frames (``FrameOrder``), give the frame weights the model names its best frame
by: a score sees no frame position, and the best frame is the earliest of the frames that show
the object equally well. A small fully-connected head maps the pooled features to class logits.

The model maps ``[B, K, H, W, C]`` float32 in [0, 1] to ``{"logits": [B, C], "frame_weights":
[B, K]}`` so ``trainer.models.export.export_saved_model`` exports it with the teacher's signatures. All
layers are stock tf_keras layers or the small serializable layers below (no ``Lambda``): TFMOT
can clone and prune it, and every op has an int8 TFLite kernel.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras

from contract.config import StudentConfig, stem_stride
from contract.layout import EventSpec

PACKAGE = "eventpipe"
LOGITS_LAYER = "logits"
SCORE_LAYER = "frame_score"
CONTRAST_LAYER = "frame_contrast"
CONTRAST_STEM_LAYER = "stem_contrast"
CONTEXT_SCORE_LAYER = "frame_context_score"
# Batch-norm moving statistics must settle within a short distillation (a few hundred steps on
# small data sets); Keras' 0.99 leaves half of the initial statistics after 70 steps.
BN_MOMENTUM = 0.9
STEM_STRIDE = 2  # MobileNet's; small frames get 1 (contract.config.stem_stride)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MergeFrames(keras.layers.Layer):
    """``[B, K, H, W, C]`` -> ``[B*K, H, W, C]`` so the backbone sees frames as a batch."""

    def call(self, inputs: Any) -> Any:
        return tf.reshape(inputs, [-1, *inputs.shape[2:]])


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitFrames(keras.layers.Layer):
    """``[B*K, D]`` -> ``[B, K, D]``: per-frame features back into their events."""

    def __init__(self, frames: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, inputs: Any) -> Any:
        return tf.reshape(inputs, [-1, self.frames, inputs.shape[-1]])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrameMean(keras.layers.Layer):
    """``[B, K, D]`` -> ``[B, 1, D]``: the event's mean frame features (what every frame is compared to)."""

    def call(self, inputs: Any) -> Any:
        return tf.reduce_mean(inputs, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedPool(keras.layers.Layer):
    """``([B, K, D], [B, K])`` -> ``[B, D]``: frames pooled with the softmax of their scores."""

    def call(self, inputs: Any) -> Any:
        features, weights = inputs
        return tf.reduce_sum(features * tf.expand_dims(weights, -1), axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrameContrast(keras.layers.Layer):
    """``[B*K, H, W, C]`` -> the same frames minus their event's mean frame.

    Computed on ``[B, K, H*W*C]`` (a 3-D broadcast subtract, which every int8 TFLite kernel
    supports), then folded back.
    """

    def __init__(self, frames: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = frames

    def call(self, inputs: Any) -> Any:
        height, width, channels = inputs.shape[1:]
        flat = tf.reshape(inputs, [-1, self.frames, height * width * channels])
        contrast = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
        return tf.reshape(contrast, [-1, height, width, channels])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "frames": self.frames}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrameOrder(keras.layers.Layer):
    """``[B, K]`` frame scores -> ``score_k - tilt * k``: of frames that score alike, the earliest
    wins the argmax, and a later one must score ``tilt`` per frame higher to be named instead."""

    def __init__(self, tilt: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tilt = float(tilt)

    def call(self, inputs: Any) -> Any:
        order = tf.range(inputs.shape[-1], dtype=inputs.dtype)
        return inputs - self.tilt * order

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tilt": self.tilt}


CUSTOM_OBJECTS = {
    f"{PACKAGE}>{cls.__name__}": cls
    for cls in (MergeFrames, SplitFrames, FrameMean, WeightedPool, FrameContrast, FrameOrder)
}


def scaled_channels(filters: int, depth_multiplier: float) -> int:
    """MobileNet's width multiplier: ``filters * depth_multiplier``, at least 4, rounded to 4."""
    return max(4, int(round(filters * depth_multiplier / 4.0)) * 4)


def _separable_block(x: Any, filters: int, strides: int, name: str, l2: float) -> Any:
    """Depthwise 3x3 (+BN, ReLU6) then pointwise 1x1 (+BN, ReLU6), as in MobileNet v1."""
    reg = keras.regularizers.l2(l2) if l2 else None
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, depthwise_regularizer=reg, name=f"{name}_dw"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(
        filters, 1, padding="same", use_bias=False, kernel_regularizer=reg, name=f"{name}_pw"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_pw_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def _stem(x: Any, filters: int, name: str, reg: Any) -> Any:
    """Strided 3x3 convolution (stride 1 for small frames: ``contract.config.stem_stride``) and its
    batch norm."""
    stride = stem_stride(STEM_STRIDE, *x.shape[1:3])
    x = keras.layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=name, kernel_regularizer=reg
    )(x)
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)


def build_student(spec: EventSpec, cfg: StudentConfig | None = None) -> keras.Model:
    """The student for ``spec``'s geometry and classes; its size follows ``cfg``."""
    cfg = cfg or StudentConfig()
    if not cfg.filters:
        raise ValueError("student.filters must name at least one stage width")
    widths = [scaled_channels(f, cfg.depth_multiplier) for f in cfg.filters]
    l2 = cfg.weight_decay

    frames = keras.Input(shape=spec.input_shape, name="frames", dtype="float32")
    x = frames_folded = MergeFrames(name="merge_frames")(frames)
    reg = keras.regularizers.l2(l2) if l2 else None
    x = _stem(x, widths[0], "stem", reg)
    if cfg.frame_contrast and spec.frames > 1:  # one frame: nothing moves, the contrast is all zeros
        # Two convolutions (each with its batch norm, which TFMOT folds into it) and an add, not
        # a concat of [frame, contrast]: an int8 concat needs one scale for both inputs, and the
        # frame ([0, 1]) and its contrast ([-1, 1]) differ.
        contrast = FrameContrast(spec.frames, name=CONTRAST_LAYER)(frames_folded)
        x = keras.layers.Add(name="stem_sum")([x, _stem(contrast, widths[0], CONTRAST_STEM_LAYER, reg)])
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    strides = [*cfg.strides, *[2] * len(widths)][: len(widths)]  # stages without a stride halve
    for stage, width in enumerate(widths):
        x = _separable_block(x, width, strides[stage], f"stage{stage}_down", l2)
        for repeat in range(cfg.blocks_per_stage - 1):
            x = _separable_block(x, width, 1, f"stage{stage}_block{repeat + 1}", l2)
    x = keras.layers.GlobalAveragePooling2D(name="frame_pool")(x)
    per_frame = SplitFrames(spec.frames, name="split_frames")(x)

    # score_k = a . f_k + b . mean(f) + c: the frame's features and the event's mean (a linear
    # score of [f_k, f_k - mean] in two terms). Two dense layers and a broadcast add instead of a
    # concat, whose int8 kernel needs one scale for both halves and fails QAT conversion.
    own = keras.layers.Dense(1, name=SCORE_LAYER)(per_frame)
    context = keras.layers.Dense(1, use_bias=False, name=CONTEXT_SCORE_LAYER)(
        FrameMean(name="frame_mean")(per_frame)
    )
    scores = keras.layers.Add(name="frame_score_sum")([own, context])
    scores = keras.layers.Reshape((spec.frames,), name="frame_scores")(scores)
    pooling = keras.layers.Softmax(axis=-1, name="pool_weights")(scores)
    pooled = WeightedPool(name="event_pool")([per_frame, pooling])
    naming = FrameOrder(cfg.frame_tilt, name="frame_order")(scores) if spec.frames > 1 else scores
    weights = keras.layers.Softmax(axis=-1, name="frame_weights")(naming)

    h = keras.layers.Dense(cfg.head_units, activation="relu", name="head")(pooled)
    h = keras.layers.Dropout(cfg.dropout, name="head_dropout")(h)
    logits = keras.layers.Dense(spec.num_classes, name=LOGITS_LAYER)(h)
    return keras.Model(frames, {"logits": logits, "frame_weights": weights}, name="student")


def load_keras(path: str) -> keras.Model:
    """Load a student saved with ``model.save(path)`` (``.keras``/``.h5``), custom layers included."""
    with keras.saving.custom_object_scope(CUSTOM_OBJECTS):
        return keras.models.load_model(path, compile=False)

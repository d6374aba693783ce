"""The teacher: a large event classifier over K frames, built with tf_keras.

``[B, K, H, W, C]`` frames -> ``{"logits": [B, classes], "frame_weights": [B, K]}``:

1. a residual convolutional backbone applied to every frame with shared weights (frames are
   folded into the batch, ``B*K``): a strided stem (an early downsampling spends the FLOPs on
   width and depth), residual stages, global pooling to one embedding per frame (the mean; the
   maximum for single-frame events: ``contract.config.frame_pool``); its input is each frame
   plus the frame's difference from the event's mean frame (K > 1);
2. self-attention across the K frame embeddings (plus a learned frame-position embedding),
   so each frame's embedding can see what changed relative to the others;
3. attention pooling: a learned score per frame, softmax over frames; the weights name the
   best frame (trained to, where the event's best frame is known) and pool the event into
   one vector;
4. a fully-connected head (``fc_units``), the model-parallel part in the hybrid strategy;
   the backbone, not the head, holds most of the parameters.

Layer names are stable (``conv*``, ``attention*``, ``fc_<i>``, ``logits``): the hybrid
strategy's LayoutMap selects variables by them. Normalisation is per frame (group norm over
space and channel groups; ``teacher.norm=pixel``: a per-pixel layer norm), never over
the batch, so every strategy computes exactly the same function of a global batch.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras
from tensorflow.experimental import dtensor

from contract.config import TeacherConfig, frame_pool, stem_stride, teacher_stage_widths
from contract.layout import EventSpec

FC_PREFIX = "fc_"
LOGITS = "logits"
FRAME_WEIGHTS = "frame_weights"
FEATURES = "event_features"
BACKBONE_PREFIX = "conv"  # every backbone layer with weights: conv_stem, conv_<i>_*, conv_norm


def fc_layer_names(cfg: TeacherConfig) -> list[str]:
    """Names of the hidden fully-connected layers, in order."""
    return [f"{FC_PREFIX}{i}" for i in range(len(cfg.fc_units))]


class EventContrast(keras.layers.Layer):
    """[B, K, H, W, C] -> [B, K, H, W, 2C]: each frame and its difference from the event's mean.

    What changed between frames is the signal (an object entering) against a static scene;
    the difference channels hand the backbone that contrast directly.
    """

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        return tf.concat([x, x - tf.reduce_mean(x, axis=1, keepdims=True)], axis=-1)


class FoldFrames(keras.layers.Layer):
    """[B, K, H, W, C] -> [B*K, H, W, C]: the backbone sees frames as a batch."""

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        shape = tf.shape(x)
        return tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0))


class UnfoldFrames(keras.layers.Layer):
    """[B*K, F] -> [B, K, F]."""

    def __init__(self, frames: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = frames

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        return tf.reshape(x, [-1, self.frames, x.shape[-1]])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "frames": self.frames}


class FramePosition(keras.layers.Layer):
    """Adds a learned embedding of each frame's position in the event."""

    def build(self, input_shape: Any) -> None:
        self.position = self.add_weight(
            name="position",
            shape=(int(input_shape[1]), int(input_shape[2])),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        return x + tf.cast(self.position, x.dtype)


class AttentionPooling(keras.layers.Layer):
    """Scores every frame, softmax over frames; returns (pooled [B, F], weights [B, K])."""

    def build(self, input_shape: Any) -> None:
        self.score = keras.layers.Dense(1, name="score")
        self.score.build(input_shape)

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        scores = tf.squeeze(self.score(x), axis=-1)
        weights = tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)
        pooled = tf.reduce_sum(x * tf.cast(weights, x.dtype)[..., None], axis=1)
        return pooled, weights


class LayerNorm(keras.layers.Layer):
    """Layer normalisation over the last axis from plain moments.

    tf_keras's LayerNormalization lowers to FusedBatchNormV3, which DTensor cannot lay out.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        normed = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
        return normed * tf.cast(self.gamma, x.dtype) + tf.cast(self.beta, x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


class GroupNorm(keras.layers.Layer):
    """Group normalisation (Wu & He 2018) of ``[N, H, W, C]`` from plain moments.

    Per event and frame over space and a group of channels: like the per-pixel layer norm it
    never mixes events of a batch (every strategy computes the same function), but it keeps
    how bright and how structured a region is relative to the rest of the frame, which the
    per-pixel norm discards, and it trains to a far higher accuracy on the demo data
    (docs/benchmarks.md, "Teacher training").
    """

    def __init__(self, groups: int, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups, self.epsilon = groups, epsilon

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[-1])
        self.group_count = max(1, min(self.groups, dim))
        while dim % self.group_count:
            self.group_count -= 1
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        # Per-channel spatial moments, averaged within each group, then one scale and shift per
        # channel: two reductions and a multiply-add, about as cheap as the per-pixel norm.
        dim = x.shape[-1]
        per_group = dim // self.group_count
        mean_c = tf.reduce_mean(x, axis=[1, 2])  # [N, C]
        square_c = tf.reduce_mean(tf.square(x), axis=[1, 2])
        mean_g = tf.reduce_mean(tf.reshape(mean_c, [-1, self.group_count, per_group]), axis=-1, keepdims=True)
        square_g = tf.reduce_mean(
            tf.reshape(square_c, [-1, self.group_count, per_group]), axis=-1, keepdims=True
        )
        variance = tf.maximum(square_g - tf.square(mean_g), 0.0)
        scale = tf.reshape(
            tf.math.rsqrt(variance + self.epsilon)
            * tf.ones_like(tf.reshape(mean_c, [-1, self.group_count, per_group])),
            [-1, 1, 1, dim],
        ) * tf.cast(self.gamma, x.dtype)
        mean = tf.reshape(mean_g * tf.ones([1, 1, per_group], x.dtype), [-1, 1, 1, dim])
        return x * scale + (tf.cast(self.beta, x.dtype) - mean * scale)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


class FeatureRelayout(keras.layers.Layer):
    """Identity, or a DTensor relayout of the features (the 1-D layout's all-gather)."""

    def __init__(self, layout: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layout = layout

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        if self.layout is None:
            return x

        return dtensor.relayout(x, self.layout)

    def get_config(self) -> dict[str, Any]:
        return super().get_config()  # layouts are a training-time concern, not saved


def frame_embeddings(frames: Any, spec: EventSpec, cfg: TeacherConfig) -> Any:
    """The backbone: ``[B, K, H, W, C]`` frames -> ``[B, K, F]`` per-frame embeddings.

    Event contrast (multi-frame events only: one frame has no difference), a strided stem, the
    residual stages (``blocks_per_stage`` pre-activation blocks each, the first of every stage
    after the first halving the size), the final norm and global pooling. Every layer with
    weights is named ``conv*`` (``BACKBONE_PREFIX``), which is how a pre-trained backbone
    (``trainer.pretrain``) is found in and loaded into a teacher.
    """
    if not cfg.conv_filters:
        raise ValueError("teacher needs at least one conv stage")
    if cfg.blocks_per_stage < 1 or cfg.stem_stride < 1:
        raise ValueError("teacher.blocks_per_stage and teacher.stem_stride must be >= 1")
    widths = teacher_stage_widths(cfg)

    def norm(name: str) -> Any:
        if cfg.norm == "group":
            return GroupNorm(groups=cfg.norm_groups, name=name)
        if cfg.norm == "pixel":
            return LayerNorm(name=name)
        raise ValueError(f"teacher.norm must be group or pixel, got {cfg.norm!r}")

    x = EventContrast(name="event_contrast")(frames) if spec.frames > 1 else frames
    x = FoldFrames(name="fold_frames")(x)
    stride = stem_stride(cfg.stem_stride, spec.height, spec.width)
    x = keras.layers.Conv2D(widths[0], 3, strides=stride, padding="same", name="conv_stem")(x)
    for stage, filters in enumerate(widths):
        for block in range(cfg.blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"conv_{stage}" if block == 0 else f"conv_{stage}_{block}"
            x = _residual_block(x, filters, stride, name, norm)
    x = keras.layers.Activation("relu", name="conv_relu")(norm("conv_norm")(x))
    x = _pool(x, frame_pool(cfg.pool, spec.frames))
    return UnfoldFrames(spec.frames, name="unfold_frames")(x)


class AvgMaxPool(keras.layers.Layer):
    """``[N, H, W, C]`` -> ``[N, 2C]``: spatial mean and maximum, concatenated."""

    @tf.autograph.experimental.do_not_convert  # plain tensor code; converting it costs seconds
    def call(self, x: Any, training: Any = None) -> Any:  # Keras passes training
        return tf.concat([tf.reduce_mean(x, axis=[1, 2]), tf.reduce_max(x, axis=[1, 2])], axis=-1)


def _pool(x: Any, pool: str) -> Any:
    """One embedding per frame from the last stage's maps (``contract.config.frame_pool``)."""
    layer = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "avgmax": AvgMaxPool,
    }[pool]
    return layer(name="conv_pool")(x)


def _residual_block(x: Any, filters: int, stride: int, name: str, norm: Any) -> Any:
    """Pre-activation residual block; per-frame normalisation keeps every event independent of
    the others in its batch (no batch statistics), so all strategies agree exactly."""
    y = keras.layers.Activation("relu", name=f"{name}_relu_a")(norm(f"{name}_norm_a")(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_project")(y)
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", name=f"{name}_a")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu_b")(norm(f"{name}_norm_b")(y))
    y = keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer="zeros", name=f"{name}_b")(
        y
    )  # zero-initialised: each block starts as its shortcut
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def backbone_layers(model: Any) -> list[Any]:
    """The backbone's layers that hold weights (``conv*``), in model order."""
    return [layer for layer in model.layers if layer.name.startswith(BACKBONE_PREFIX) and layer.weights]


def build_teacher(spec: EventSpec, cfg: TeacherConfig, *, feature_layout: Any = None) -> Any:
    """The teacher as a functional tf_keras model (see the module docstring).

    ``feature_layout``: a DTensor layout the pooled event features are relaid out to
    before the fully-connected head (hybrid 1-D layout); ``None`` everywhere else.
    """
    if not cfg.conv_filters or not cfg.fc_units:
        raise ValueError("teacher needs at least one conv stage and one fc layer")
    relu = "relu"
    frames = keras.Input(shape=spec.input_shape, name="frames", dtype="float32")
    x = frame_embeddings(frames, spec, cfg)

    width = x.shape[-1]
    heads = max(1, min(cfg.attention_heads, width))
    x = FramePosition(name="attention_position")(x)
    attended = keras.layers.MultiHeadAttention(
        num_heads=heads, key_dim=max(1, width // heads), name="attention_self"
    )(x, x)
    x = LayerNorm(name="attention_norm")(keras.layers.Add(name="attention_add")([x, attended]))
    pooled, weights = AttentionPooling(name="attention_pool")(x)

    h = FeatureRelayout(feature_layout, name=FEATURES)(pooled)
    for name, units in zip(fc_layer_names(cfg), cfg.fc_units, strict=True):
        h = keras.layers.Dense(units, activation=relu, name=name)(h)
        if cfg.dropout > 0:
            h = keras.layers.Dropout(cfg.dropout, seed=cfg.seed, name=f"{name}_dropout")(h)
    logits = keras.layers.Dense(spec.num_classes, name=LOGITS, dtype="float32")(h)
    weights = keras.layers.Activation("linear", name=FRAME_WEIGHTS, dtype="float32")(weights)
    return keras.Model(frames, {LOGITS: logits, FRAME_WEIGHTS: weights}, name="teacher")


def parameter_counts(model: Any) -> dict[str, int]:
    """Total parameters and the share in the fully-connected head (fc_* and logits)."""
    total = fc = 0
    for v in model.trainable_variables:
        n = int(v.shape.num_elements())
        total += n
        if v.name.startswith(FC_PREFIX) or v.name.startswith(LOGITS + "/"):
            fc += n
    return {"total": total, "fully_connected": fc, "other": total - fc}

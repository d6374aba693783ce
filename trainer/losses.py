"""Loss terms shared by the teacher and the student."""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def frame_cross_entropy(best_frame: Any, frame_weights: Any) -> Any:
    """Per-event ``[B]`` cross-entropy of the frame-attention weights against the best frame.

    Events whose best frame is unknown (-1) count zero. A one-hot product, not a gather, so a
    batch-sharded DTensor needs no relayout.
    """
    best = tf.cast(best_frame, tf.int32)
    weights = tf.cast(frame_weights, tf.float32)
    log_w = tf.math.log(tf.maximum(weights, 1e-7))
    per_event = -tf.reduce_sum(tf.one_hot(tf.maximum(best, 0), weights.shape[-1]) * log_w, axis=-1)
    return tf.where(best >= 0, per_event, tf.zeros_like(per_event))

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
    log_w = _log_weights(frame_weights)
    per_event = -tf.reduce_sum(tf.one_hot(tf.maximum(best, 0), log_w.shape[-1]) * log_w, axis=-1)
    return _known_only(best, per_event)


def frame_ranking_loss(best_frame: Any, frame_weights: Any, margin: float, tilt: float) -> Any:
    """Per-event ``[B]`` hinge loss that trains frame scores to rank frames as the best frame ``y``.

    ``frame_weights`` are ``softmax(score_k - tilt * k)`` (``trainer.models.student.FrameOrder``),
    so ``log w_k + tilt * k`` is the score up to a per-event constant. The score sees no frame
    position, so the loss asks only what such a score can give: every earlier frame at least
    ``margin`` below ``y`` (it shows less of the object), every later one at most ``margin / 4``
    above it (frames that show the object equally well tie). A cross-entropy would push tied
    frames apart. The tilt is the naming prior on top, chosen on held-out events: 0.5 named more
    best frames than 0.25, a tilt under which a met loss guarantees the argmax with four frames
    (``margin / 4`` to ``margin / (K - 1)``), and a loss on the tilted scores named fewer
    (docs/benchmarks.md, "Best frame: the label by visible share, and the ranking loss
    adopted"). Events whose best frame is unknown (-1) count zero.
    """
    best = tf.cast(best_frame, tf.int32)
    log_w = _log_weights(frame_weights)
    frames = log_w.shape[-1]
    position = tf.range(frames)
    score = log_w + tilt * tf.cast(position, tf.float32)
    own = tf.reduce_sum(tf.one_hot(tf.maximum(best, 0), frames) * score, axis=-1, keepdims=True)
    before = tf.cast(position[None, :] < best[:, None], tf.float32)
    after = tf.cast(position[None, :] > best[:, None], tf.float32)
    hinge = before * tf.nn.relu(score - own + margin) + after * tf.nn.relu(score - own - margin / 4.0)
    return _known_only(best, tf.reduce_sum(hinge, axis=-1))


def _log_weights(frame_weights: Any) -> Any:
    return tf.math.log(tf.maximum(tf.cast(frame_weights, tf.float32), 1e-7))


def _known_only(best: Any, per_event: Any) -> Any:
    """Zero where the best frame is unknown (-1)."""
    return tf.where(best >= 0, per_event, tf.zeros_like(per_event))

"""The pretext's input: two augmented views of every event and the frame each view is read at.

Temporal contrast (frames of one event are positive pairs): for each event two frames ``i``
and ``j`` are picked, ``j != i`` when the event has more than one real frame, and each is read
from its own independently augmented copy of the whole event, so the backbone still sees each
frame beside the event's mean frame exactly as in the teacher (``EventContrast``). A
single-frame event pairs its frame with itself under two different augmentations, which is
plain SimCLR. Labels are never read: labelled and unlabelled events are the same here.

The negatives of a view are the other events of its batch, and by default a batch holds events
of one camera. Frames of one event share their camera's background, so against events of other
cameras the pretext is solved by recognising the background, and the backbone learns cameras, not
objects (measured: a linear probe on it did worse than on random weights). Among events of one
camera only what entered the scene tells them apart.

All randomness is stateless in ``(seed, the event's position in the stream, view)``, like
the teacher's input (``trainer.teacher.data``), so every strategy sees the same batches.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from contract import layout
from contract.layout import EventSpec
from trainer.teacher.data import record_stream

VIEW_A, VIEW_B, PICK_A, PICK_B = "view_a", "view_b", "pick_a", "pick_b"
# Camera negatives: device ids hash into this many groups (bounds the records waiting in them).
CAMERA_GROUPS = 64
# The noise's seeds: a stream of their own (``key + 1`` would be the next event's other view).
_NOISE_STREAM = tf.constant([1_000_003, 0], tf.int64)


def augment_view(frames: Any, positions: Any, seed: int, view: int, augmentations: list[str]) -> Any:
    """``[B, K, H, W, C]`` in [0, 1] -> one augmented view; the same transform for all K frames.

    ``flip``: horizontal flip with probability 1/2; ``shift``: up to 1/4 of the frame each way
    (edges reflected); ``color``: brightness +-0.2 and contrast x[0.6, 1.4]; ``noise``: Gaussian
    sensor noise of standard deviation up to 0.05. Stronger than the teacher's augmentation:
    the pretext must not be solvable from exact pixels.
    """
    _, _, height, width, _ = frames.shape
    pad_y, pad_x = height // 4, width // 4

    def one(args: Any) -> Any:
        event, position = args
        key = tf.stack([tf.constant(seed, tf.int64) * 7919 + view, position])
        u = tf.random.stateless_uniform([6], seed=key)
        if "flip" in augmentations:
            event = tf.where(u[0] < 0.5, tf.reverse(event, axis=[2]), event)
        if "shift" in augmentations and (pad_y or pad_x):
            padded = tf.pad(event, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
            dy = tf.cast(tf.round(u[1] * 2 * pad_y), tf.int32)
            dx = tf.cast(tf.round(u[2] * 2 * pad_x), tf.int32)
            event = tf.slice(padded, tf.stack([0, dy, dx, 0]), tf.shape(event))
        if "color" in augmentations:
            mean = tf.reduce_mean(event)
            event = (event - mean) * (0.6 + 0.8 * u[3]) + mean + (u[4] - 0.5) * 0.4
        if "noise" in augmentations:
            event = event + tf.random.stateless_normal(tf.shape(event), seed=key + _NOISE_STREAM) * 0.05 * u[5]
        return tf.clip_by_value(event, 0.0, 1.0)

    return tf.map_fn(one, (frames, positions), fn_output_signature=tf.TensorSpec(frames.shape[1:], tf.float32))


def frame_picks(counts: Any, positions: Any, seed: int, frames: int, *, temporal: bool = True) -> tuple[Any, Any]:
    """One-hot ``[B, K]`` masks of the two frames each event is read at: distinct if it has two and
    ``temporal``, else the same frame twice."""
    keys = tf.stack([tf.fill(tf.shape(positions), tf.constant(seed, tf.int64) * 7919 + 17), positions], axis=1)
    u = tf.map_fn(
        lambda k: tf.random.stateless_uniform([2], seed=k), keys, fn_output_signature=tf.TensorSpec([2], tf.float32)
    )
    n = tf.maximum(tf.cast(counts, tf.float32), 1.0)
    first = tf.cast(tf.floor(u[:, 0] * n), tf.int32)
    step = 1 + tf.cast(tf.floor(u[:, 1] * tf.maximum(n - 1.0, 1.0)), tf.int32)  # 1..n-1
    n_int = tf.cast(n, tf.int32)
    second = tf.where(n_int > 1, (first + step) % n_int, first) if temporal else first
    return tf.one_hot(first, frames), tf.one_hot(second, frames)


def event_batches(files: list[str], *, batch_size: int, seed: int, epoch_size: int, negatives: str = "camera") -> Any:
    """Endless ``(positions [B], serialized [B])`` batches of the shuffled stream of ``files``.

    ``negatives="camera"``: the stream is grouped by ``device_id`` (hashed into at most
    ``CAMERA_GROUPS`` groups, which bounds the records held while groups fill) and each batch is
    ``batch_size`` events of one group, so an event's negatives share its camera's background.
    ``"batch"``: consecutive events of the shuffled stream, whatever their camera.
    """
    ds = record_stream(files, seed=seed, epoch_size=epoch_size).enumerate()
    if negatives == "batch":
        return ds.batch(batch_size, drop_remainder=True)
    device = {layout.DEVICE_ID: tf.io.FixedLenFeature([], tf.string, default_value="")}

    @tf.autograph.experimental.do_not_convert
    def camera(position: Any, serialized: Any) -> Any:
        return tf.strings.to_hash_bucket_fast(tf.io.parse_single_example(serialized, device)[layout.DEVICE_ID],
                                              CAMERA_GROUPS)  # fmt: skip

    return ds.group_by_window(camera, lambda _, w: w.batch(batch_size, drop_remainder=True), window_size=batch_size)


def contrastive_batches(
    files: list[str], spec: EventSpec, *, batch_size: int, seed: int, epoch_size: int, augmentations: list[str],
    temporal: bool = True, negatives: str = "camera",
) -> Any:
    """Endless batches ``{view_a, view_b, pick_a, pick_b}`` of ``batch_size`` events from ``files``
    (``temporal=False``: both views read at the same frame; ``negatives``: see ``event_batches``)."""
    ds = event_batches(files, batch_size=batch_size, seed=seed, epoch_size=epoch_size, negatives=negatives)

    @tf.autograph.experimental.do_not_convert
    def views(positions: Any, serialized: Any) -> dict[str, Any]:
        parsed = tf.io.parse_example(serialized, layout.feature_spec())
        frames = layout.decode_frames(layout.encoded_frames(parsed, spec), spec)
        counts = tf.minimum(parsed[layout.FRAME_COUNT], spec.frames)
        pick_a, pick_b = frame_picks(counts, positions, seed, spec.frames, temporal=temporal)
        return {
            VIEW_A: augment_view(frames, positions, seed, 1, augmentations),
            VIEW_B: augment_view(frames, positions, seed, 2, augmentations),
            PICK_A: pick_a,
            PICK_B: pick_b,
        }

    return ds.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)

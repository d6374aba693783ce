"""The pretext's input: two augmented views of every event and the frame each view is read at.

Temporal contrast (frames of one event are positive pairs): for each event two frames ``i``
and ``j`` are picked, ``j != i`` when the event has more than one real frame, and each is read
from its own independently augmented copy of the whole event, so the backbone still sees each
frame beside the event's mean frame exactly as in the teacher (``EventContrast``). A
single-frame event pairs its frame with itself under two different augmentations, which is
plain SimCLR. Labels are never read: labelled and unlabelled events are the same here.

The negatives of a view are the other events of its batch, and by default a batch holds events
of one camera (``camera_groups``; cameras with too few events for that are batched together).
Frames of one event share their camera's background, so against events of other cameras the
pretext is solved by recognising the background, and the backbone learns cameras, not objects
(a linear probe on it does worse than on random weights: docs/benchmarks.md, "Label efficiency
with self-supervised pre-training"). Among events of one camera
only what entered the scene tells them apart.

All randomness is stateless in ``(seed, the event's position in the stream, view)``, like
the teacher's input (``trainer.data``), so every strategy sees the same batches.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tensorflow as tf

from contract import layout
from contract.layout import EventSpec
from trainer.data import record_stream

VIEW_A, VIEW_B, PICK_A, PICK_B = "view_a", "view_b", "pick_a", "pick_b"
# Camera negatives: at most this many groups (bounds the records waiting in group_by_window to
# CAMERA_GROUPS x (batch - 1) beside the shuffle window); more cameras share groups round-robin.
CAMERA_GROUPS = 64
# A camera gets a group of its own only with this many batches' worth of events: with fewer, its
# batches would repeat its events, and a repeat is a false negative (views of one event pushed apart).
MIN_BATCHES_PER_CAMERA = 2
MIXED_GROUP = 0  # the cameras too small for their own group, batched together
DEVICE_FEATURE = {layout.DEVICE_ID: tf.io.FixedLenFeature([], tf.string, default_value="")}
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
            event = (
                event + tf.random.stateless_normal(tf.shape(event), seed=key + _NOISE_STREAM) * 0.05 * u[5]
            )
        return tf.clip_by_value(event, 0.0, 1.0)

    return tf.map_fn(
        one, (frames, positions), fn_output_signature=tf.TensorSpec(frames.shape[1:], tf.float32)
    )


def frame_picks(
    counts: Any, positions: Any, seed: int, frames: int, *, temporal: bool = True
) -> tuple[Any, Any]:
    """One-hot ``[B, K]`` masks of the two frames each event is read at: distinct if it has two and
    ``temporal``, else the same frame twice."""
    keys = tf.stack(
        [tf.fill(tf.shape(positions), tf.constant(seed, tf.int64) * 7919 + 17), positions], axis=1
    )
    u = tf.map_fn(
        lambda k: tf.random.stateless_uniform([2], seed=k),
        keys,
        fn_output_signature=tf.TensorSpec([2], tf.float32),
    )
    n = tf.maximum(tf.cast(counts, tf.float32), 1.0)
    first = tf.cast(tf.floor(u[:, 0] * n), tf.int32)
    step = 1 + tf.cast(tf.floor(u[:, 1] * tf.maximum(n - 1.0, 1.0)), tf.int32)  # 1..n-1
    n_int = tf.cast(n, tf.int32)
    second = tf.where(n_int > 1, (first + step) % n_int, first) if temporal else first
    return tf.one_hot(first, frames), tf.one_hot(second, frames)


def events_per_camera(files: list[str]) -> Counter:
    """Events per device_id in ``files`` (one read; its total is the number of events)."""
    events: Counter = Counter()
    if not files:
        return events
    ids = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024)
    ids = ids.map(
        lambda s: tf.io.parse_example(s, DEVICE_FEATURE)[layout.DEVICE_ID],
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    for chunk in ids:
        events.update(chunk.numpy().tolist())
    return events


def camera_groups(events: Counter, batch_size: int) -> dict[bytes, int]:
    """``device_id -> group`` for camera negatives, from ``events_per_camera``.

    Every camera with at least ``MIN_BATCHES_PER_CAMERA`` batches of events gets a group of its
    own (1..``CAMERA_GROUPS``, the largest first; beyond that they share round-robin); the other
    cameras are ``MIXED_GROUP``, absent from the mapping.
    """
    large = sorted(
        (c for c, n in events.items() if n >= MIN_BATCHES_PER_CAMERA * batch_size),
        key=lambda c: (-events[c], c),
    )
    return {camera: 1 + i % CAMERA_GROUPS for i, camera in enumerate(large)}


def event_batches(
    files: list[str], *, batch_size: int, seed: int, epoch_size: int, groups: dict[bytes, int] | None = None
) -> Any:
    """Endless ``(positions [B], serialized [B])`` batches of the shuffled stream of ``files``.

    ``groups`` (``camera_groups``): each batch is ``batch_size`` consecutive events of one group,
    so an event's negatives share its camera's background, and never holds an event twice; None
    or empty: consecutive events of the stream, whatever their camera. Positions are taken before
    grouping, so every event keeps the stateless seeds of its place in the stream.
    """
    ds = record_stream(files, seed=seed, epoch_size=epoch_size).enumerate()
    if not groups:
        return ds.batch(batch_size, drop_remainder=True)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(groups)), tf.constant(list(groups.values()), tf.int64)
        ),
        default_value=MIXED_GROUP,
    )

    @tf.autograph.experimental.do_not_convert
    def with_group(position: Any, serialized: Any) -> Any:
        return (
            position,
            serialized,
            table.lookup(tf.io.parse_single_example(serialized, DEVICE_FEATURE)[layout.DEVICE_ID]),
        )

    ds = ds.map(with_group, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.group_by_window(lambda p, s, group: group, lambda _, w: w.batch(batch_size, drop_remainder=True),
                            window_size=batch_size)  # fmt: skip

    @tf.autograph.experimental.do_not_convert
    def distinct(positions: Any, serialized: Any, group: Any) -> Any:
        fingerprints = tf.strings.to_hash_bucket_fast(serialized, 2**62)
        return tf.equal(tf.size(tf.unique(fingerprints).y), tf.size(fingerprints))

    # A group's window can reach into the next epoch and meet an event again; such a batch (rare
    # for a camera's own group, common in a small mixed group) is skipped, not trained on.
    return ds.filter(distinct).map(lambda p, s, group: (p, s))


def contrastive_batches(
    files: list[str],
    spec: EventSpec,
    *,
    batch_size: int,
    seed: int,
    epoch_size: int,
    augmentations: list[str],
    temporal: bool = True,
    groups: dict[bytes, int] | None = None,
) -> Any:
    """Endless batches ``{view_a, view_b, pick_a, pick_b}`` of ``batch_size`` events from ``files``
    (``temporal=False``: both views read at the same frame; ``groups``: see ``event_batches``)."""
    ds = event_batches(files, batch_size=batch_size, seed=seed, epoch_size=epoch_size, groups=groups)

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

"""The teacher's input stream: a deterministic function of (files, seed, record position).

Every strategy reads the same sequence of training events, so single, mirrored,
multi-worker and hybrid runs see the same global batches, and a resumed run continues at
exactly the record where the checkpoint was taken. Epoch ``e`` is the train split in an
order shuffled statelessly with seed ``(seed, e)``; resuming at record ``p`` starts at epoch
``p // epoch_size`` and skips ``p % epoch_size`` serialized records (no decoding), so a
resume costs at most one epoch of reading, never the whole history.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from contract import layout
from contract.errors import UserError
from contract.layout import EventSpec

SHUFFLE_BUFFER = 8192


def count_records(files: list[str], cache_path: str | None = None) -> int:
    """Number of records in ``files`` (cached in ``cache_path`` keyed by the file list)."""

    key = "|".join(files)
    if cache_path and os.path.exists(cache_path):
        with open(cache_path, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("files") == key:
            return int(cached["records"])
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if cache_path:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        with open(cache_path, "w", encoding="utf-8") as f:
            json.dump({"files": key, "records": count}, f)
    return count


def record_stream(files: list[str], *, seed: int, epoch_size: int, start_record: int = 0) -> Any:
    """Endless serialized records: epoch ``e`` shuffled with seed ``(seed, e)``, from ``start_record``.

    Per epoch: the file order is a stateless shuffle, files are interleaved, and every window
    of ``SHUFFLE_BUFFER`` consecutive records is permuted by stateless random keys (a full
    permutation when the split fits one window). All randomness is stateless in ``(seed,
    epoch, window)``, so any epoch can be produced without replaying the ones before it.
    """

    if epoch_size < 1:
        raise UserError("the train split is empty")
    first_epoch, offset = divmod(start_record, epoch_size)
    window = min(epoch_size, SHUFFLE_BUFFER)
    names = tf.constant(files)
    cycle = min(4, len(files))

    def epoch(e: Any) -> Any:
        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + e
        order = tf.random.experimental.stateless_shuffle(
            names, seed=tf.stack([epoch_seed, tf.constant(0, tf.int64)])
        )
        records = tf.data.Dataset.from_tensor_slices(order).interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"), cycle_length=cycle
        )

        def permute(i: Any, chunk: Any) -> Any:
            keys = tf.random.stateless_uniform(tf.shape(chunk)[:1], seed=tf.stack([epoch_seed, i + 1]))
            return tf.gather(chunk, tf.argsort(keys))

        return (
            records.batch(window).enumerate().map(tf.autograph.experimental.do_not_convert(permute)).unbatch()
        )

    epochs = tf.data.Dataset.range(first_epoch, 2**62)
    stream = epochs.flat_map(tf.autograph.experimental.do_not_convert(epoch)).skip(offset)
    # flat_map hides that the stream never ends; declared, a multi-worker iterator skips the
    # per-step cross-worker "does every worker still have data?" all-reduce.
    return stream.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def train_batches(
    files: list[str],
    spec: EventSpec,
    *,
    batch_size: int,
    seed: int,
    epoch_size: int,
    start_record: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    augment: bool = False,
) -> Any:
    """Decoded batches ``{"frames", "label"}`` of ``batch_size`` from the record stream.

    With ``num_shards > 1`` (one input pipeline per worker), batch ``i`` of the stream goes to
    shard ``i % num_shards``; a global step then consumes ``num_shards`` consecutive batches.
    ``augment``: each event is augmented with randomness drawn from ``(seed, its position in the
    stream)``, so every strategy, shard layout and resumed run sees the same augmented events.
    """

    ds = record_stream(files, seed=seed, epoch_size=epoch_size, start_record=start_record)
    ds = ds.enumerate(start=start_record).batch(batch_size, drop_remainder=True)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    decode = _features_fn(spec)

    @tf.autograph.experimental.do_not_convert
    def features(positions: Any, serialized: Any) -> dict[str, Any]:
        out = decode(serialized)
        if augment:
            out[layout.FRAMES] = augment_events(out[layout.FRAMES], positions, seed)
        return out

    ds = ds.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_events(frames: Any, positions: Any, seed: int, *, flip: bool = True) -> Any:
    """Light camera-style augmentation of ``[B, K, H, W, C]`` frames in [0, 1].

    Per event, the same for all of its frames (motion between frames is the signal): a
    horizontal flip with probability 1/2 (``flip``), a shift of up to 1/8 of the frame each way
    (edges reflected), brightness +-0.1 and contrast x[0.8, 1.2] around the event's mean. The
    random draws do not depend on ``flip``.
    """

    _, _, height, width, _ = frames.shape
    pad_y, pad_x = height // 8, width // 8

    def one(args: Any) -> Any:
        event, position = args
        u = tf.random.stateless_uniform([5], seed=tf.stack([tf.constant(seed, tf.int64), position]))
        if flip:
            event = tf.where(u[0] < 0.5, tf.reverse(event, axis=[2]), event)
        if pad_y or pad_x:
            padded = tf.pad(event, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
            dy = tf.cast(tf.round(u[1] * 2 * pad_y), tf.int32)
            dx = tf.cast(tf.round(u[2] * 2 * pad_x), tf.int32)
            event = tf.slice(padded, tf.stack([0, dy, dx, 0]), tf.shape(event))
        mean = tf.reduce_mean(event)
        event = (event - mean) * (0.8 + 0.4 * u[3]) + mean + (u[4] - 0.5) * 0.2
        return tf.clip_by_value(event, 0.0, 1.0)

    return tf.map_fn(
        one, (frames, positions), fn_output_signature=tf.TensorSpec(frames.shape[1:], tf.float32)
    )


def eval_batches(files: list[str], spec: EventSpec, *, batch_size: int, max_batches: int = 0) -> Any:
    """Decoded eval batches in file order (scoring skips unlabelled events, label -1)."""

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
    ds = ds.map(_features_fn(spec), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if max_batches > 0:
        ds = ds.take(max_batches)
    return ds.prefetch(tf.data.AUTOTUNE)


def _features_fn(spec: EventSpec) -> Any:
    """Serialized batch -> {"frames", "label", "best_frame"}; plain tensor code, so autograph is skipped."""

    @tf.autograph.experimental.do_not_convert
    def features(serialized: Any) -> dict[str, Any]:
        parsed = layout.parse_batch(serialized, spec)
        return {key: parsed[key] for key in (layout.FRAMES, layout.LABEL, layout.BEST_FRAME)}

    return features

"""The event feature layout: the single definition shared by ingest, training and serving.

An ingested event is one ``tf.train.Example`` with the features named below. Frames stay
encoded (PNG/JPEG bytes) on disk and on the wire; ``decode_frames`` is the one place that
turns them into the model input ``[frames, height, width, channels]`` float32 in [0, 1].

The model geometry (frames K, height, width, channels) and the class vocabulary travel as
an ``EventSpec`` (``event_spec.json``) written by ingest next to the examples, so nothing
downstream hard-codes them. Events with fewer than K frames repeat their last frame;
frames of another size are resized; grayscale/RGB is converted to the spec's channels.

TensorFlow is imported lazily: the on-device runner uses ``EventSpec`` without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from contract.errors import UserError

# Feature names of an ingested tf.Example.
FRAMES = "frames"  # bytes list: encoded PNG/JPEG, one per frame, in time order
FRAME_COUNT = "frame_count"  # int64: number of frames in the event
HEIGHT = "height"  # int64: frame height in the source
WIDTH = "width"  # int64
CHANNELS = "channels"  # int64: 1 (gray) or 3 (RGB) in the source
LABEL = "label"  # int64: class id in EventSpec.classes; -1 for unlabelled events
LABEL_NAME = "label_name"  # bytes: class name; b"" for unlabelled events
EVENT_ID = "event_id"  # bytes
DEVICE_ID = "device_id"  # bytes
TIMESTAMP = "timestamp"  # bytes: RFC 3339 as received
BEST_FRAME = "best_frame"  # int64: 0-based frame that shows the object best (ground truth); -1 unknown

UNLABELLED = -1
UNKNOWN_FRAME = -1  # BEST_FRAME of events without a known best frame
SPEC_FILE = "event_spec.json"

# Splits written by ingest. Unlabelled events are valid but feed distillation only.
TRAIN, EVAL, UNLABELLED_SPLIT = "train", "eval", "unlabelled"
SPLITS = (TRAIN, EVAL, UNLABELLED_SPLIT)

# Names used by exported models and by serving clients.
SERVING_INPUT = "frames"  # [batch, 1..K] encoded frame bytes (short events are padded with "")
DECODED_INPUT = "frames"  # [batch, K, H, W, C] float32 in the decoded signature
OUT_PROBABILITIES = "probabilities"
OUT_LOGITS = "logits"
OUT_CLASS = "class_name"
OUT_CLASS_ID = "class_id"
OUT_BEST_FRAME = "best_frame"
DECODED_SIGNATURE = "decoded_frames"


@dataclass(frozen=True)
class EventSpec:
    """Model-facing geometry and vocabulary of an event data set."""

    classes: tuple[str, ...]
    frames: int
    height: int
    width: int
    channels: int

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("EventSpec needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"duplicate class names in {self.classes}")
        for name in ("frames", "height", "width", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"EventSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ValueError(f"EventSpec.channels must be 1 or 3, got {self.channels}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.height, self.width, self.channels)

    def class_id(self, name: str) -> int:
        return self.classes.index(name)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EventSpec:
        return cls(
            classes=tuple(d["classes"]),
            frames=int(d["frames"]),
            height=int(d["height"]),
            width=int(d["width"]),
            channels=int(d["channels"]),
        )

    def save(self, directory: str) -> str:
        path = os.path.join(directory, SPEC_FILE)
        os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> EventSpec:
        """Load from ``event_spec.json`` or a directory holding it (e.g. an Examples artifact)."""
        if os.path.isdir(path):
            path = os.path.join(path, SPEC_FILE)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def examples_dir_of(split_pattern: str) -> str:
    """The Examples artifact root for a TFX split file pattern (``<uri>/Split-train/*``)."""
    path = split_pattern.rstrip("/*")
    while path and not os.path.basename(path).startswith("Split-"):
        parent = os.path.dirname(path)
        if parent == path:
            raise ValueError(f"{split_pattern!r} is not inside a TFX Examples artifact")
        path = parent
    return os.path.dirname(path)


def split_dir(examples_uri: str, split: str) -> str:
    return os.path.join(examples_uri, f"Split-{split}")


def split_files(examples_uri: str, split: str, *, required: bool = False) -> list[str]:
    """Sorted TFRecord files of one split of an Examples artifact: ``[]`` when the split is absent
    or empty, unless ``required`` (then an error that says what to point at)."""
    import tensorflow as tf

    directory = split_dir(examples_uri, split)
    files = sorted(f for f in tf.io.gfile.glob(os.path.join(directory, "*")) if not tf.io.gfile.isdir(f))
    if required and not files:
        raise UserError(
            f"no {split} examples under {directory}: point --data at an ingested Examples artifact"
        )
    return files


# -- tf.Example construction (ingest) -----------------------------------------------------
def make_example(
    *,
    frames: list[bytes],
    height: int,
    width: int,
    channels: int,
    label: int,
    label_name: str,
    event_id: str,
    device_id: str,
    timestamp: str,
    best_frame: int = UNKNOWN_FRAME,
) -> Any:
    """Build the ``tf.train.Example`` for one accepted event (``best_frame``: -1 = unknown)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    def b(values: list[bytes]) -> feature_pb2.Feature:
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=values))

    def i(value: int) -> feature_pb2.Feature:
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[value]))

    feature = {
        FRAMES: b(list(frames)),
        FRAME_COUNT: i(len(frames)),
        HEIGHT: i(height),
        WIDTH: i(width),
        CHANNELS: i(channels),
        LABEL: i(label),
        LABEL_NAME: b([label_name.encode()]),
        EVENT_ID: b([event_id.encode()]),
        DEVICE_ID: b([device_id.encode()]),
        TIMESTAMP: b([timestamp.encode()]),
        BEST_FRAME: i(best_frame),
    }
    return example_pb2.Example(features=feature_pb2.Features(feature=feature))


# -- TensorFlow parsing and decoding ------------------------------------------------------
def feature_spec() -> dict[str, Any]:
    """``tf.io.parse_example`` spec for the layout."""
    import tensorflow as tf

    return {
        FRAMES: tf.io.VarLenFeature(tf.string),
        FRAME_COUNT: tf.io.FixedLenFeature([], tf.int64),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        CHANNELS: tf.io.FixedLenFeature([], tf.int64),
        LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELLED),
        LABEL_NAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        EVENT_ID: tf.io.FixedLenFeature([], tf.string),
        DEVICE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        TIMESTAMP: tf.io.FixedLenFeature([], tf.string, default_value=""),
        BEST_FRAME: tf.io.FixedLenFeature([], tf.int64, default_value=UNKNOWN_FRAME),
    }


def encoded_frames(parsed: dict[str, Any], spec: EventSpec) -> Any:
    """Dense ``[batch, K]`` encoded frames from parsed examples ("" pads short events)."""
    import tensorflow as tf

    sparse = parsed[FRAMES]
    shape = tf.stack([sparse.dense_shape[0], tf.constant(spec.frames, tf.int64)])
    sparse = tf.sparse.slice(sparse, tf.zeros([2], tf.int64), shape)  # drop frames beyond K
    return tf.sparse.to_dense(tf.sparse.reset_shape(sparse, shape), default_value="")


def read_encoded_events(examples_uri: str, spec: EventSpec, count: int) -> tuple[Any, list[str]]:
    """Up to ``count`` eval events (train if there is no eval split): ``[N, K]`` encoded frames
    (numpy bytes, "" pads) and their ids, what a client sends to the served model."""
    import tensorflow as tf

    files = split_files(examples_uri, EVAL) or split_files(examples_uri, TRAIN)
    if not files:
        raise UserError(f"no eval or train split under {examples_uri}")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count).batch(count)
    for serialized in ds:
        parsed = tf.io.parse_example(serialized, feature_spec())
        ids = [i.decode("utf-8") for i in parsed[EVENT_ID].numpy()]
        return encoded_frames(parsed, spec).numpy(), ids
    raise UserError(f"the examples under {examples_uri} hold no events")


def decode_event(encoded: Any, spec: EventSpec) -> Any:
    """``[K]`` encoded frames -> ``[K, H, W, C]`` float32 in [0, 1].

    Empty strings are padding: they repeat the last real frame, so a short event looks like
    a camera that stopped moving rather than like black frames.
    """
    import tensorflow as tf

    encoded = tf.reshape(encoded, [spec.frames])
    real = tf.maximum(tf.reduce_sum(tf.cast(tf.strings.length(encoded) > 0, tf.int32)), 1)
    encoded = tf.gather(encoded, tf.minimum(tf.range(spec.frames), real - 1))

    def decode_one(data: Any) -> Any:
        image = tf.io.decode_image(data, channels=spec.channels, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        image = tf.image.resize(image, [spec.height, spec.width])
        return tf.ensure_shape(image, spec.frame_shape)

    # K is fixed by the spec, so the frames are unrolled: a map_fn while loop per event costs a
    # measurable share of the decode's CPU (docs/benchmarks.md, "Why the defaults are what they are").
    return tf.stack([decode_one(encoded[k]) for k in range(spec.frames)])


def pad_frames(encoded: Any, spec: EventSpec) -> Any:
    """``[batch, n]`` encoded frames, 1 <= n <= K -> ``[batch, K]`` ("" pads, as ingest pads).

    A client sends an event's frames as the camera took them; more than K is an error, not a
    silent cut, since the model was never shown those frames.
    """
    import tensorflow as tf

    sent = tf.shape(encoded)[1]
    checks = [
        tf.debugging.assert_greater_equal(sent, 1, message="an event needs at least one frame"),
        tf.debugging.assert_less_equal(
            sent, spec.frames, message=f"an event has at most {spec.frames} frames for this model"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.pad(encoded, [[0, 0], [0, spec.frames - sent]], constant_values="")


def decode_frames(encoded: Any, spec: EventSpec) -> Any:
    """``[batch, K]`` encoded frames -> ``[batch, K, H, W, C]`` float32 in [0, 1]."""
    import tensorflow as tf

    return tf.map_fn(
        lambda e: decode_event(e, spec),
        encoded,
        fn_output_signature=tf.TensorSpec(spec.input_shape, tf.float32),
    )


def parse_batch(serialized: Any, spec: EventSpec) -> dict[str, Any]:
    """Serialized examples ``[batch]`` -> ``{"frames": [B,K,H,W,C], "label": [B], ...}``.

    ``best_frame`` ``[B]`` int32 is -1 where unknown, and also where it lies beyond the K frames
    the model sees (an event longer than the spec is cut to its first K frames).
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, feature_spec())
    best = tf.cast(parsed[BEST_FRAME], tf.int32)
    return {
        FRAMES: decode_frames(encoded_frames(parsed, spec), spec),
        LABEL: tf.cast(parsed[LABEL], tf.int32),
        EVENT_ID: parsed[EVENT_ID],
        BEST_FRAME: tf.where((best >= 0) & (best < spec.frames), best, UNKNOWN_FRAME),
    }


def dataset(
    file_pattern: str | list[str],
    spec: EventSpec,
    batch_size: int,
    *,
    shuffle: bool = False,
    repeat: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> Any:
    """A ``tf.data`` pipeline of decoded batches from gzipped TFRecords of the layout.

    Decoding is batched (parse_example on a batch) and parallel; the result is prefetched.
    """
    import tensorflow as tf

    files = tf.io.gfile.glob(file_pattern) if isinstance(file_pattern, str) else list(file_pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    if shuffle:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda s: parse_batch(s, spec), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

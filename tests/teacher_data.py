"""Small synthetic Examples artifacts for trainer tests and benchmarks.

Events of K PNG frames: class 0 is noise only, the other classes draw a distinct shape
(square, horizontal bar, vertical bar, ...) that appears in a random subset of the frames
at a moving position, so the frames differ and one of them is the informative one. Written
as a TFX Examples artifact (Split-train/, Split-eval/, event_spec.json) through
``contract.layout.make_example``, exactly what ingest produces.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from contract import layout
from contract.layout import EventSpec

DEFAULT_CLASSES = ("empty", "person", "vehicle", "animal")


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    image = frame[..., 0] if frame.shape[-1] == 1 else frame
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def render_event(rng: np.random.Generator, label: int, spec: EventSpec) -> list[bytes]:
    """K encoded frames of one event of class ``label``."""
    h, w, c = spec.frame_shape
    base = rng.uniform(40, 90)
    present = rng.random(spec.frames) < 0.6
    present[rng.integers(spec.frames)] = True
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    dy, dx = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
    size = max(2, h // 4)
    frames = []
    for k in range(spec.frames):
        img = rng.normal(base, 12.0, size=(h, w, c))
        if label > 0 and present[k]:
            y, x = (y0 + dy * k) % (h - size), (x0 + dx * k) % (w - size)
            shape = label % 3
            if shape == 1:
                img[y : y + size, x : x + size] += 120  # square
            elif shape == 2:
                img[y : y + max(1, size // 3), max(0, x - size) : x + size] += 120  # wide bar
            else:
                img[max(0, y - size) : y + size, x : x + max(1, size // 3)] += 120  # tall bar
        frames.append(_png(np.clip(img, 0, 255).astype(np.uint8)))
    return frames


def write_split(path: str, spec: EventSpec, n: int, seed: int, *, shards: int = 2) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [
        tf.io.TFRecordWriter(os.path.join(path, f"data_tfrecord-{i:05d}-of-{shards:05d}.gz"), options)
        for i in range(shards)
    ]
    for i in range(n):
        label = int(rng.integers(spec.num_classes))
        example = layout.make_example(
            frames=render_event(rng, label, spec),
            height=spec.height,
            width=spec.width,
            channels=spec.channels,
            label=label,
            label_name=spec.classes[label],
            event_id=f"syn{seed}-{i:06d}",
            device_id=f"cam{i % 3:02d}",
            timestamp="2026-01-05T12:00:00Z",
        )
        writers[i % shards].write(example.SerializeToString())
    for w in writers:
        w.close()


def write_examples(
    root: str,
    *,
    train: int = 256,
    eval: int = 64,
    frames: int = 4,
    size: int = 16,
    channels: int = 3,
    classes: tuple[str, ...] = DEFAULT_CLASSES,
    seed: int = 0,
) -> EventSpec:
    """Write a synthetic Examples artifact at ``root``; returns its EventSpec."""
    spec = EventSpec(classes=tuple(classes), frames=frames, height=size, width=size, channels=channels)
    write_split(layout.split_dir(root, layout.TRAIN), spec, train, seed)
    write_split(layout.split_dir(root, layout.EVAL), spec, eval, seed + 1)
    spec.save(root)
    return spec

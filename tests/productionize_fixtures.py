"""Small generated event data and a stand-in teacher for the productionize tests and benchmark.

The events are learnable but not trivial: class 0 is sensor noise only, class 1 a bright
square that appears in one random frame, class 2 a vertical bar present in every frame (plus
noise and brightness changes). Written as a TFX Examples artifact in the layout (gzipped
TFRecords under Split-*/, event_spec.json at the root), exactly what ingest produces.
"""

from __future__ import annotations

import io
import os

import numpy as np

from contract import layout
from contract.layout import EventSpec

CLASSES = ("empty", "square", "bar")


def render_event(rng: np.random.Generator, label: int, spec: EventSpec) -> np.ndarray:
    """``[K, H, W, C]`` uint8 frames of one event of class ``label``."""
    k, h, w, c = spec.input_shape
    base = rng.uniform(40, 120)
    frames = np.clip(base + rng.normal(0, 18, size=(k, h, w, c)), 0, 255)
    frames += rng.uniform(-20, 20, size=(k, 1, 1, 1))  # lighting change
    if label == 1:
        t = rng.integers(k)
        s = max(2, h // 4)
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        frames[t, y : y + s, x : x + s, :] = rng.uniform(220, 255)
    elif label == 2:
        bw = max(1, w // 8)
        x = rng.integers(0, w - bw + 1)
        frames[:, :, x : x + bw, :] = rng.uniform(0, 15)
    return np.clip(frames, 0, 255).astype(np.uint8)


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    image = frame[..., 0] if frame.shape[-1] == 1 else frame
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encoded_event(spec: EventSpec, label: int = 1, seed: int = 0) -> list[bytes]:
    """One event as the PNG frames a serving client sends."""
    return [_png(f) for f in render_event(np.random.default_rng(seed), label, spec)]


def write_examples(
    root: str,
    spec: EventSpec,
    counts: dict[str, int],
    seed: int = 0,
    devices: int = 1,
) -> str:
    """Write an Examples artifact at ``root`` with ``counts`` events per split (event ``i`` from
    camera ``cam<i % devices>``); returns ``root``."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    spec.save(root)
    for split, n in counts.items():
        directory = layout.split_dir(root, split)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "data_tfrecord-00000-of-00001.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for i in range(n):
                label = int(rng.integers(spec.num_classes))
                frames = render_event(rng, label, spec)
                unlabelled = split == layout.UNLABELLED_SPLIT
                example = layout.make_example(
                    frames=[_png(f) for f in frames],
                    height=spec.height,
                    width=spec.width,
                    channels=spec.channels,
                    label=layout.UNLABELLED if unlabelled else label,
                    label_name="" if unlabelled else spec.classes[label],
                    event_id=f"{split}-{i:06d}",
                    device_id=f"cam{i % devices:02d}",
                    timestamp="2026-01-05T12:00:00Z",
                )
                writer.write(example.SerializeToString())
    return root


def train_stand_in_teacher(
    root: str, spec: EventSpec, export_dir: str, epochs: int = 6, seed: int = 0
) -> str:
    """A small conv model with the teacher's outputs, trained on the train split, exported."""
    import tensorflow as tf
    import tf_keras as keras

    from trainer.models.export import export_saved_model
    from trainer.models.student import MergeFrames, SplitFrames, WeightedPool

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(spec.input_shape, name="frames")
    x = MergeFrames()(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    per_frame = SplitFrames(spec.frames)(x)
    scores = keras.layers.Reshape((spec.frames,))(keras.layers.Dense(1)(per_frame))
    weights = keras.layers.Softmax(axis=-1)(scores)
    pooled = WeightedPool()([per_frame, weights])
    logits = keras.layers.Dense(spec.num_classes)(keras.layers.Dense(64, activation="relu")(pooled))
    model = keras.Model(inputs, {"logits": logits, "frame_weights": weights})
    ds = layout.dataset(layout.split_files(root, layout.TRAIN), spec, 32, shuffle=True, seed=seed)
    ds = ds.map(lambda b: (b[layout.FRAMES], b[layout.LABEL]))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    model.fit(ds.map(lambda f, y: (f, {"logits": y})), epochs=epochs, verbose=0)
    tf.io.gfile.makedirs(export_dir)
    return export_saved_model(model, spec, export_dir)

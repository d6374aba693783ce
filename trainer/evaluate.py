"""Score several model variants on one split in a single streaming pass over its events.

Frames are decoded once per batch (``pipeline.layout.dataset``) and handed to every variant
(Keras model, SavedModel signature, TFLite interpreter), so comparing five variants costs one
decode, and memory stays bounded by the batch size whatever the split's size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline import layout
from pipeline.layout import EventSpec

# A variant: float frames [B, K, H, W, C] -> logits [B, C] (numpy in, numpy out).
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class Predictions:
    """Labels (-1 = unlabelled) and one variant's logits for every event of a split."""

    labels: np.ndarray
    logits: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return np.argmax(self.logits, axis=-1)

    def accuracy(self) -> float:
        labelled = self.labels >= 0
        if not labelled.any():
            return float("nan")
        return float(np.mean(self.predicted[labelled] == self.labels[labelled]))

    def confusion(self, num_classes: int) -> np.ndarray:
        """``[true, predicted]`` counts over labelled events."""
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        labelled = self.labels >= 0
        np.add.at(matrix, (self.labels[labelled], self.predicted[labelled]), 1)
        return matrix

    def agreement(self, other: Predictions) -> float:
        """Share of events (labelled or not) where both variants pick the same class."""
        if len(self.logits) == 0:
            return float("nan")
        return float(np.mean(self.predicted == other.predicted))


def keras_predictor(model: Any) -> Predictor:
    def predict(frames: np.ndarray) -> np.ndarray:
        return model(frames, training=False)["logits"].numpy()

    return predict


def saved_model_predictor(export_dir: str) -> Predictor:
    """The ``decoded_frames`` signature of an exported model (teacher or student)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(export_dir)
    signature = loaded.signatures[layout.DECODED_SIGNATURE]

    def predict(frames: np.ndarray, _owner: Any = loaded) -> np.ndarray:  # _owner keeps the variables alive
        return signature(**{layout.DECODED_INPUT: tf.constant(frames)})[layout.OUT_LOGITS].numpy()

    return predict


def tflite_predictor(model: str | bytes, num_threads: int = 1) -> Predictor:
    """An eventpipe ``.tflite`` (batch 1), run event by event as a device would."""
    from trainer.lite_runtime import LiteEventClassifier

    classifier = LiteEventClassifier(model, num_threads=num_threads)

    def predict(frames: np.ndarray) -> np.ndarray:
        return np.stack([classifier.invoke(classifier.prepare(event))[0] for event in frames])

    return predict


def predict_split(
    files: list[str],
    spec: EventSpec,
    predictors: dict[str, Predictor],
    *,
    batch_size: int = 64,
    max_events: int = 0,
    desc: str = "evaluate",
) -> dict[str, Predictions]:
    """Every predictor's logits on the events of ``files`` (the first ``max_events`` if > 0)."""
    labels: list[np.ndarray] = []
    logits: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    seen = 0
    ds = layout.dataset(files, spec, batch_size)
    for batch in tqdm(ds, desc=desc, unit="batch", leave=False):
        frames = batch[layout.FRAMES].numpy()
        batch_labels = batch[layout.LABEL].numpy()
        if max_events and seen + len(frames) > max_events:
            frames, batch_labels = frames[: max_events - seen], batch_labels[: max_events - seen]
        labels.append(batch_labels.astype(np.int64))
        for name, predict in predictors.items():
            logits[name].append(np.asarray(predict(frames), dtype=np.float32))
        seen += len(frames)
        if max_events and seen >= max_events:
            break
    all_labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
    return {
        name: Predictions(
            all_labels,
            np.concatenate(chunks) if chunks else np.zeros([0, spec.num_classes], np.float32),
        )
        for name, chunks in logits.items()
    }

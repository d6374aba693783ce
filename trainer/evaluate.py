"""Score several model variants on one split in a single streaming pass over its events.

Frames are decoded once per batch (``contract.layout.dataset``) and handed to every variant
(Keras model, SavedModel signature, TFLite interpreter), so comparing five variants costs one
decode, and memory stays bounded by the batch size whatever the split's size.

Besides the class, every variant names a best frame (the argmax of its attention over the
frames); where the examples know the true best frame (``best_frame``, written by the simulator),
``Predictions.best_frame_accuracy`` measures how often the model names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from contract import layout
from contract.layout import EventSpec
from ondevice.runtime import LiteEventClassifier

FRAME_WEIGHTS = "frame_weights"  # the models' per-frame weights; argmax = the frame named best


class Output(NamedTuple):
    """What a predictor returns for a batch of ``B`` events."""

    logits: np.ndarray  # [B, C]
    frame_weights: np.ndarray | None = None  # [B, K] weights over the frames (softmax)
    best_frame: np.ndarray | None = None  # [B] the frame the model names; default argmax(frame_weights)


# A variant: float frames [B, K, H, W, C] -> logits [B, C] or an Output (numpy in, numpy out).
Predictor = Callable[[np.ndarray], "np.ndarray | Output"]


def as_output(result: Any) -> Output:
    """A predictor's result as a numpy ``Output``.

    A bare array is logits; a tuple holds ``Output``'s fields in order; a mapping uses the
    model and signature output names (``logits``, ``frame_weights``, ``best_frame``).
    """
    if isinstance(result, Mapping):
        result = Output(
            result[layout.OUT_LOGITS], result.get(FRAME_WEIGHTS), result.get(layout.OUT_BEST_FRAME)
        )
    elif isinstance(result, tuple):
        result = Output(*result)
    else:
        result = Output(result)
    weights = None if result.frame_weights is None else np.asarray(result.frame_weights, dtype=np.float32)
    best = result.best_frame
    if best is None and weights is not None:
        best = np.argmax(weights, axis=-1)
    return Output(
        np.asarray(result.logits, dtype=np.float32),
        weights,
        None if best is None else np.asarray(best, dtype=np.int64).reshape(-1),
    )


@dataclass
class Predictions:
    """One variant's outputs for every event of a split, with the events' ground truth.

    ``labels``: -1 = unlabelled. ``best_frames``: the true best frame per event, -1 = unknown
    (None: not read). ``frame_weights`` ``[N, K]``: the variant's attention, when it exposes it (a
    SavedModel signature gives only the frame it names). ``named_frames`` ``[N]``: the frame the
    variant names as best (argmax of ``frame_weights``); None when it names none. ``event_ids``
    ``[N]``: the events' ids in split order (None: not read), so single predictions can be shown.
    """

    labels: np.ndarray
    logits: np.ndarray
    frame_weights: np.ndarray | None = None
    best_frames: np.ndarray | None = None
    named_frames: np.ndarray | None = None
    event_ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.named_frames is None and self.frame_weights is not None:
            self.named_frames = np.argmax(self.frame_weights, axis=-1)

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

    def best_frame_events(self) -> int:
        """How many events have a known best frame (what ``best_frame_accuracy`` averages over)."""
        return 0 if self.best_frames is None else int(np.sum(self.best_frames >= 0))

    def best_frame_accuracy(self) -> float:
        """Share of events with a known best frame where the variant names that frame.

        Labelled or not, whatever class it predicts. NaN when no event has a known best frame
        or the variant names no frame.
        """
        if self.best_frames is None or self.named_frames is None:
            return float("nan")
        known = self.best_frames >= 0
        if not known.any():
            return float("nan")
        return float(np.mean(self.named_frames[known] == self.best_frames[known]))


def keras_predictor(model: Any) -> Predictor:
    """A tf_keras event model (``{"logits", "frame_weights"}`` outputs)."""

    def predict(frames: np.ndarray) -> Output:
        out = model(frames, training=False)
        weights = out.get(FRAME_WEIGHTS)
        return Output(out["logits"].numpy(), None if weights is None else weights.numpy())

    return predict


def saved_model_predictor(export_dir: str) -> Predictor:
    """The ``decoded_frames`` signature of an exported model (teacher or student).

    The signature returns the frame the model names (``best_frame``), not the weights.
    """

    loaded = tf.saved_model.load(export_dir)
    signature = loaded.signatures[layout.DECODED_SIGNATURE]

    def predict(frames: np.ndarray, _owner: Any = loaded) -> Output:  # _owner keeps the variables alive
        out = signature(**{layout.DECODED_INPUT: tf.constant(frames)})
        best = out.get(layout.OUT_BEST_FRAME)
        return Output(out[layout.OUT_LOGITS].numpy(), best_frame=None if best is None else best.numpy())

    return predict


def tflite_predictor(model: str | bytes, num_threads: int = 1) -> Predictor:
    """An eventpipe ``.tflite`` (batch 1), run event by event as a device would."""

    classifier = LiteEventClassifier(model, num_threads=num_threads)

    def predict(frames: np.ndarray) -> Output:
        outs = [classifier.invoke(classifier.prepare(event)) for event in frames]
        return Output(np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]))

    return predict


SOLO_PREFIX = "solo_frame_"


def solo_frame_predictors(name: str, predict: Predictor, frames: int) -> dict[str, Predictor]:
    """``predict`` on each frame alone: the event with every frame replaced by frame ``k``.

    Named ``solo_frame_<k>_<name>``; with ``confidence_pick`` they give the per-frame-confidence
    baseline for best-frame accuracy (the frame that alone gives the surest right answer).
    """

    def alone(k: int) -> Predictor:
        return lambda batch: predict(np.repeat(batch[:, k : k + 1], frames, axis=1))

    return {f"{SOLO_PREFIX}{k}_{name}": alone(k) for k in range(frames)}


def confidence_pick(preds: dict[str, Predictions], name: str, frames: int) -> np.ndarray | None:
    """Per event, the frame whose solo prediction gives the event's class the highest probability
    (its label; unlabelled events: the class the full event is predicted as by ``name``)."""
    solo = [preds.get(f"{SOLO_PREFIX}{k}_{name}") for k in range(frames)]
    if any(p is None for p in solo) or name not in preds:
        return None
    target = np.where(preds[name].labels >= 0, preds[name].labels, preds[name].predicted)
    probability = np.stack([softmax(p.logits)[np.arange(len(target)), target] for p in solo], axis=1)
    return np.argmax(probability, axis=1)


def softmax(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict_split(
    files: list[str],
    spec: EventSpec,
    predictors: dict[str, Predictor],
    *,
    batch_size: int = 64,
    max_events: int = 0,
    desc: str = "evaluate",
) -> dict[str, Predictions]:
    """Every predictor's outputs on the events of ``files`` (the first ``max_events`` if > 0)."""
    labels: list[np.ndarray] = []
    best_frames: list[np.ndarray] = []
    event_ids: list[str] = []
    outputs: dict[str, list[Output]] = {name: [] for name in predictors}
    seen = 0
    ds = layout.dataset(files, spec, batch_size)
    for batch in tqdm(ds, desc=desc, unit="batch", leave=False, disable=None):
        frames = batch[layout.FRAMES].numpy()
        n = len(frames) if not max_events else min(len(frames), max_events - seen)
        frames = frames[:n]
        labels.append(batch[layout.LABEL].numpy()[:n].astype(np.int64))
        best_frames.append(batch[layout.BEST_FRAME].numpy()[:n].astype(np.int64))
        event_ids.extend(i.decode("utf-8", "replace") for i in batch[layout.EVENT_ID].numpy()[:n])
        for name, predict in predictors.items():
            outputs[name].append(as_output(predict(frames)))
        seen += n
        if max_events and seen >= max_events:
            break
    all_labels = np.concatenate(labels) if labels else np.zeros([0], np.int64)
    all_best = np.concatenate(best_frames) if best_frames else np.zeros([0], np.int64)
    return {name: _collect(chunks, all_labels, all_best, event_ids, spec) for name, chunks in outputs.items()}


def _collect(
    chunks: list[Output], labels: np.ndarray, best_frames: np.ndarray, event_ids: list[str], spec: EventSpec
) -> Predictions:
    def joined(field: str, empty: np.ndarray) -> np.ndarray | None:
        parts = [getattr(c, field) for c in chunks]
        if not parts:
            return empty
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return Predictions(
        labels,
        joined("logits", np.zeros([0, spec.num_classes], np.float32)),
        frame_weights=joined("frame_weights", np.zeros([0, spec.frames], np.float32)),
        best_frames=best_frames,
        named_frames=joined("best_frame", np.zeros([0], np.int64)),
        event_ids=event_ids,
    )

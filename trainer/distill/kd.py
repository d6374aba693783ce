"""Knowledge distillation: the student learns from labels and from the teacher's soft labels.

Loss per event (Hinton et al. 2015)::

    alpha * CE(label, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Unlabelled events (label -1) contribute only the distillation term, so more unlabelled data
means fewer labels are needed. The frame scores are trained, with weight ``frame_weight`` and
a ranking loss (``trainer.losses.frame_ranking_loss``), to name the event's best frame: the
known one where ingest has it, else the teacher's pick (the scratch baseline gets the known
ones only).

Consistent teaching (Beyer et al. 2022): the student trains on augmented views of its events
(``trainer.data.augment_events``, the teacher's augmentation without the mirror flip, which
turns some classes into others: digits), and its soft labels are the teacher's logits on
exactly that view. The teacher labels ``views`` views per event once, up front (one pass over
the data through the teacher SavedModel's ``decoded_frames`` signature); pass ``e`` over the
events shows every event as view ``e % views``, re-made from the same stateless seed, so passes
never re-run the teacher. ``views`` 0: no augmentation, one view, the event as it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tqdm import tqdm

from contract import layout
from contract.config import StudentConfig
from contract.layout import EventSpec
from trainer.data import augment_events
from trainer.losses import frame_ranking_loss

TEACHER_LOGITS = "teacher_logits"
# The student's views are never mirrored: on scikit-learn's digits a flip cost the scratch student
# 3.4 points, and on the demo it gained nothing (docs/benchmarks.md, "Consistent teaching on
# augmented views").
FLIP = False


def distillation_loss(
    labels: Any, student_logits: Any, teacher_logits: Any, temperature: float, alpha: float
) -> Any:
    """Per-event loss ``[B]``; events with ``label < 0`` get the distillation term only."""

    labels = tf.cast(labels, tf.int32)
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_logits = tf.cast(teacher_logits, tf.float32)
    labelled = tf.cast(labels >= 0, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=student_logits)
    t = float(temperature)
    teacher_log_p = tf.nn.log_softmax(teacher_logits / t, axis=-1)
    student_log_p = tf.nn.log_softmax(student_logits / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    return alpha * labelled * ce + (1.0 - alpha) * (t * t) * kl


def view_count(views: int) -> int:
    """Teacher views per event: ``views``, or 1 (the event as it is) when there is no augmentation."""
    return max(1, int(views))


def view_positions(index: Any, view: Any, views: int) -> Any:
    """The augmentation seed position of view ``view`` of event ``index``: distinct per (event, view)."""
    return tf.cast(index, tf.int64) * view_count(views) + tf.cast(view, tf.int64)


def teacher_soft_labels(
    teacher_dir: str,
    files: list[str],
    spec: EventSpec,
    batch_size: int = 64,
    *,
    views: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's logits ``[N, V, C]`` and best frames ``[N, V]`` for every record of ``files``
    (``sorted(files)`` order) and each of its ``V = view_count(views)`` views."""

    model = tf.saved_model.load(teacher_dir)
    if layout.DECODED_SIGNATURE not in model.signatures:
        raise ValueError(f"teacher at {teacher_dir} has no {layout.DECODED_SIGNATURE!r} signature")
    decoded = model.signatures[layout.DECODED_SIGNATURE]

    count = view_count(views)

    @tf.function(reduce_retracing=True)
    def label(frames: Any, first: Any) -> tuple[Any, Any]:
        """Every view of the batch in one teacher call, view-major, reshaped to ``[B, V, ...]``."""
        if views > 0:
            index = first + tf.range(tf.shape(frames, out_type=tf.int64)[0])
            frames = tf.concat(
                [
                    augment_events(frames, view_positions(index, v, views), seed, flip=FLIP)
                    for v in range(count)
                ],
                0,
            )
        out = decoded(**{layout.DECODED_INPUT: frames})

        def per_event(x: Any) -> Any:
            return tf.transpose(tf.reshape(x, [count, -1, *x.shape[1:]]), [1, 0, *range(2, x.shape.rank + 1)])

        return per_event(out[layout.OUT_LOGITS]), per_event(out[layout.OUT_BEST_FRAME])

    chunks, frames, first = [], [], 0
    ds = layout.dataset(sorted(files), spec, batch_size)
    for batch in tqdm(ds, desc="teacher soft labels", unit="batch", leave=False, disable=None):
        logits, picked = label(batch[layout.FRAMES], tf.constant(first, tf.int64))
        chunks.append(logits.numpy().astype(np.float32))
        frames.append(picked.numpy().astype(np.int32))
        first += len(chunks[-1])
    if not chunks:
        raise ValueError(f"no examples in {files}")
    logits = np.concatenate(chunks, axis=0)
    if logits.shape[-1] != spec.num_classes:
        raise ValueError(
            f"teacher predicts {logits.shape[-1]} classes but the examples have {spec.num_classes}"
        )
    return logits, np.concatenate(frames, axis=0)


def distillation_dataset(
    files: list[str],
    teacher_logits: np.ndarray,
    spec: EventSpec,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    cache_bytes: int = 0,
    teacher_frames: np.ndarray | None = None,
    views: int = 0,
) -> Any:
    """``(frames, {"label", "teacher_logits", "best_frame"})`` batches; the teacher's outputs are
    paired with records by position.

    ``teacher_logits``: ``[N, V, C]`` from ``teacher_soft_labels`` with the same ``views`` (or
    ``[N, C]``, the same for every view); ``files`` must hold exactly ``N`` records. ``views`` > 0:
    pass ``e`` over the events (a pass is not a Keras epoch: see ``epoch_steps``) shows each as
    its augmented view ``e % views``, with that view's teacher outputs; every new iterator (each
    phase) starts again at pass 0, and a one-pass stream (``shuffle`` False) shows view 0.
    ``best_frame``: the event's known best frame, else ``teacher_frames``' pick (-1 without it).

    ``shuffle``: a training stream (reshuffled every epoch, endless); otherwise one pass in order.
    ``cache_bytes``: when the decoded events fit in this many bytes they are decoded once and
    kept in memory (float32, so exactly what the serving signature computes), and every later
    epoch and phase skips the PNG decoding, which otherwise competes with the small student's
    step for the same cores. Larger data streams from the files.
    """

    events, count = len(teacher_logits), view_count(views)
    logits = np.asarray(teacher_logits, np.float32)
    if logits.ndim == 3 and logits.shape[1] != count:
        raise ValueError(f"teacher logits hold {logits.shape[1]} views per event; the stream shows {count}")
    logits = logits[:, None] if logits.ndim == 2 else logits
    logits = np.broadcast_to(logits, [events, count, spec.num_classes])
    if teacher_frames is None:
        teacher_frames = np.full([events, count], layout.UNKNOWN_FRAME, np.int32)
    picks = teacher_frames.reshape(events, -1)
    if picks.shape[1] not in (1, count):
        raise ValueError(f"teacher best frames hold {picks.shape[1]} views per event, the stream {count}")
    picks = np.broadcast_to(picks, [events, count])
    logits_by_view = tf.constant(logits.reshape(events * count, -1))
    picks_by_view = tf.constant(picks.reshape(-1).astype(np.int32))
    records = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    indexed = tf.data.Dataset.zip((records, tf.data.Dataset.range(events)))

    def parse(serialized: Any, index: Any) -> tuple[Any, Any]:
        parsed = layout.parse_batch(serialized, spec)
        return parsed[layout.FRAMES], (parsed[layout.LABEL], parsed[layout.BEST_FRAME], index)

    def view(frames: Any, event: Any, seen: Any) -> tuple[Any, dict[str, Any]]:
        """A batch of events as their views; ``seen``: each one's place in the stream, so its
        pass is ``seen // events``."""
        label, known, index = event
        position = view_positions(index, (seen // events) % count, views)
        if views > 0:
            frames = augment_events(frames, position, seed, flip=FLIP)
        best = tf.where(known >= 0, known, tf.gather(picks_by_view, position))
        return frames, {layout.LABEL: label, TEACHER_LOGITS: tf.gather(logits_by_view, position),
                        layout.BEST_FRAME: best}  # fmt: skip

    def counted(stream: Any) -> Any:
        """Each event with its place in the stream, batched."""
        return tf.data.Dataset.zip((stream, tf.data.Dataset.counter())).batch(batch_size)

    if decoded_bytes(events, spec) <= cache_bytes:
        decoded = indexed.batch(256).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch().cache()
        if shuffle:
            decoded = decoded.shuffle(events, seed=seed, reshuffle_each_iteration=True).repeat()
        stream = counted(decoded).map(lambda e, seen: view(*e, seen), num_parallel_calls=tf.data.AUTOTUNE)
        return stream.prefetch(tf.data.AUTOTUNE)
    if shuffle:
        # Repeated before batching: every batch is full, so the train step is traced once per
        # phase (a short last batch per epoch would retrace it, seconds each with TFMOT's wrappers).
        indexed = indexed.shuffle(min(events, 16384), seed=seed, reshuffle_each_iteration=True).repeat()
    stream = counted(indexed).map(lambda e, seen: view(*parse(*e), seen), num_parallel_calls=tf.data.AUTOTUNE)
    return stream.prefetch(tf.data.AUTOTUNE)


def decoded_bytes(events: int, spec: EventSpec) -> int:
    """Memory of ``events`` decoded events as float32 frames, twice over (the cache and the
    shuffle buffer each hold every event of an epoch)."""
    return 2 * events * int(np.prod(spec.input_shape)) * 4


class DistillationModel(keras.Model):
    """Trains ``student`` on the distillation loss; Keras callbacks (pruning) see the student inside."""

    def __init__(self, student: keras.Model, cfg: StudentConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.student = student
        self.temperature = float(cfg.temperature)
        self.alpha = float(cfg.alpha)
        self.frame_weight = float(cfg.frame_loss_weight)
        self.frame_margin = float(cfg.frame_margin)
        self.frame_tilt = float(cfg.frame_tilt)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.Mean(name="accuracy")  # labelled events only
        self.agreement = keras.metrics.Mean(name="teacher_agreement")

    @property
    def metrics(self) -> list[Any]:
        # alpha 1 (the scratch baseline) trains on labels alone: there are no teacher logits to agree with.
        return [self.loss_tracker, self.accuracy] + ([self.agreement] if self.alpha < 1.0 else [])

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.student(inputs, training=training)

    def _update_metrics(self, loss: Any, logits: Any, targets: dict[str, Any]) -> dict[str, Any]:
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        labels = tf.cast(targets[layout.LABEL], tf.int32)
        labelled = tf.cast(labels >= 0, tf.float32)
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(tf.cast(pred == labels, tf.float32), sample_weight=labelled)
        if self.alpha < 1.0:
            teacher = tf.argmax(targets[TEACHER_LOGITS], axis=-1, output_type=tf.int32)
            self.agreement.update_state(tf.cast(pred == teacher, tf.float32))
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data: Any) -> dict[str, Any]:
        frames, targets = data
        with tf.GradientTape() as tape:
            out = self.student(frames, training=True)
            logits = out["logits"]
            per_event = distillation_loss(
                targets[layout.LABEL], logits, targets[TEACHER_LOGITS], self.temperature, self.alpha
            )
            if self.frame_weight > 0 and layout.BEST_FRAME in targets:
                per_event += self.frame_weight * frame_ranking_loss(
                    targets[layout.BEST_FRAME], out["frame_weights"], self.frame_margin, self.frame_tilt
                )
            loss = tf.reduce_mean(per_event)
            if self.student.losses:
                loss += tf.add_n(self.student.losses)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return self._update_metrics(loss, logits, targets)

    def make_train_function(self, force: bool = False) -> Any:
        """``train_step`` as a tf.function without AutoGraph.

        The student, TFMOT's wrappers and this step have no tensor-dependent Python control
        flow, and AutoGraph-converting every Keras/TFMOT call makes tracing the dominant cost of
        a short distillation (tens of seconds). Single-device only: no distribution strategy.
        """

        if self.train_function is not None and not force:
            return self.train_function

        def step(iterator: Any) -> dict[str, Any]:
            return self.train_step(next(iterator))

        self.train_function = tf.function(step, autograph=False, reduce_retracing=True)
        return self.train_function

    def test_step(self, data: Any) -> dict[str, Any]:
        frames, targets = data
        logits = self.student(frames, training=False)["logits"]
        loss = tf.reduce_mean(
            distillation_loss(
                targets[layout.LABEL], logits, targets[TEACHER_LOGITS], self.temperature, self.alpha
            )
        )
        return self._update_metrics(loss, logits, targets)


class _TqdmEpochs(keras.callbacks.Callback):
    """One progress bar over all training steps of a phase, with the running metrics."""

    def __init__(self, total_steps: int, desc: str) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.desc = desc
        self.bar: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.bar = tqdm(total=self.total_steps, desc=self.desc, unit="step", leave=False, disable=None)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.bar.update(1)
        if logs and batch % 10 == 0:
            self.bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items()})

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.bar.close()


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size))


def distill(
    student: keras.Model,
    train: Any,
    *,
    steps: int,
    epochs: int,
    cfg: StudentConfig,
    learning_rate: float,
    callbacks: list[keras.callbacks.Callback] | None = None,
    validation: Any = None,
    desc: str = "distil",
    log_dir: str | None = None,
) -> dict[str, list[float]]:
    """Train ``student`` in place on ``train`` (a ``distillation_dataset``) for ``epochs`` epochs.

    Returns the Keras history (loss, accuracy on labelled events, agreement with the teacher);
    ``log_dir``: TensorBoard scalars of the same, per epoch.
    """
    if log_dir:
        tensorboard = keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0)
        callbacks = [*(callbacks or []), tensorboard]
    total = steps * epochs
    trainer = DistillationModel(student, cfg)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, total), alpha=0.05)
    trainer.compile(optimizer=keras.optimizers.Adam(schedule))
    history = trainer.fit(
        train.repeat(),
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=validation,
        callbacks=[*(callbacks or []), _TqdmEpochs(total, desc)],
        verbose=0,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}

"""How a training step runs on devices: one ``Runner`` per ``--strategy``.

- ``single``: ``OneDeviceStrategy`` on the first device.
- ``mirrored``: ``MirroredStrategy`` over all local (logical) devices; gradients all-reduced.
- ``multiworker``: ``MultiWorkerMirroredStrategy`` over the cluster in ``TF_CONFIG``
  (ring all-reduce); one process per worker.
- ``hybrid``: DTensor data x model parallelism (``trainer.parallel.hybrid``).

Every runner consumes the same global batches (``trainer.data``): data-parallel
runners split a global batch into per-replica slices in stream order, so one step sees the
same events whatever the strategy, and the loss is the sum of per-event losses divided by
the global batch size. That makes the per-step losses of all strategies equal up to float
rounding, which the tests check.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from contract import layout
from contract.config import STRATEGIES, TeacherConfig
from contract.errors import UserError
from contract.layout import EventSpec
from trainer.losses import frame_cross_entropy
from trainer.models.teacher import FRAME_WEIGHTS, LOGITS, build_teacher
from trainer.parallel.devices import DeviceSetup

UNSHARDED = "unsharded"

# (per-replica batch size, number of input pipelines, this pipeline's index) -> dataset
BatchesFn = Callable[[int, int, int], Any]


def event_loss(labels: Any, logits: Any, global_batch_size: int, label_smoothing: float = 0.0) -> Any:
    """Sum of per-event cross-entropies / global batch (unlabelled events, -1, count zero)."""
    labels = tf.cast(labels, tf.int32)
    logits = tf.cast(logits, tf.float32)
    classes = logits.shape[-1]
    target = tf.one_hot(tf.maximum(labels, 0), classes, dtype=tf.float32)
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / classes
    per_event = tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits)
    per_event = tf.where(labels >= 0, per_event, tf.zeros_like(per_event))
    return tf.reduce_sum(per_event) / float(global_batch_size)


def teacher_loss(labels: Any, best_frame: Any, out: dict[str, Any], cfg: TeacherConfig) -> Any:
    """The teacher's training loss: label-smoothed class cross-entropy plus the frame term."""
    loss = event_loss(labels, out[LOGITS], cfg.global_batch_size, cfg.label_smoothing)
    if cfg.frame_loss_weight > 0:
        frames = frame_cross_entropy(best_frame, out[FRAME_WEIGHTS])
        loss += cfg.frame_loss_weight * tf.reduce_sum(frames) / float(cfg.global_batch_size)
    return loss


def make_optimizer(cfg: TeacherConfig, learning_rate: Any, **kwargs: Any) -> Any:
    """Adam, or AdamW with decoupled weight decay on kernels (not on norms, biases, embeddings)."""
    if cfg.weight_decay <= 0:
        return keras.optimizers.Adam(learning_rate, **kwargs)
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay, **kwargs)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "position"])
    return optimizer


def mixed_precision_policy(mode: str, device_type: str) -> str:
    """The tf_keras policy name for ``--mixed-precision``."""
    if mode == "off":
        return "float32"
    if mode == "bf16":
        return "mixed_bfloat16"
    if mode == "fp16":
        if device_type != "GPU":
            raise UserError("--mixed-precision fp16 needs a GPU; use bf16 on CPUs (or off)")
        return "mixed_float16"
    raise UserError(f"--mixed-precision must be off, bf16 or fp16, got {mode!r}")


class Runner(abc.ABC):
    """Builds the teacher on its devices and runs optimisation steps on global batches."""

    name = "base"

    def __init__(self, cfg: TeacherConfig, spec: EventSpec, setup: DeviceSetup) -> None:
        self.cfg = cfg
        self.spec = spec
        self.setup = setup
        self.model: Any = None
        self.optimizer: Any = None

    # -- cluster -------------------------------------------------------------------------
    @property
    def is_chief(self) -> bool:
        return True

    @property
    def worker_index(self) -> int:
        return 0

    @property
    def replicas(self) -> int:
        return 1

    @property
    def shares_checkpoints(self) -> bool:
        """Whether every process writes its part of one checkpoint in the chief's directory.

        MultiWorkerMirroredStrategy workers each save a whole copy (non-chiefs in their own
        directory); DTensor clients save one sharded checkpoint together.
        """
        return False

    def mesh_description(self) -> dict[str, int]:
        """Mesh axis -> size for the report."""
        return {"replicas": self.replicas}

    # -- lifecycle -----------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, initial_weights: list[np.ndarray], learning_rate: Any) -> None:
        """Create model and optimizer on the runner's devices from the given initial weights."""

    @abc.abstractmethod
    def batches(self, make: BatchesFn) -> Iterator[Any]:
        """Global batches placed the way this runner's step expects them."""

    @abc.abstractmethod
    def step(self, batch: Any) -> float:
        """One optimisation step on a global batch; returns the loss."""

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)

    def completed_steps(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def plain_weights(self) -> list[np.ndarray]:
        """Full (unsharded) values of every model weight, in ``model.weights`` order."""
        return self.model.get_weights()

    @abc.abstractmethod
    def variable_layouts(self) -> list[dict[str, Any]]:
        """Name, global shape, mesh axis per dimension and the placed shards of every variable."""

    def finish(self) -> None:  # noqa: B027 - optional hook: most runners have nothing to wait for
        """Called by every process at the end of training, after its report is written."""


class DistributeRunner(Runner):
    """single / mirrored / multiworker through ``tf.distribute`` and a custom training loop."""

    def __init__(self, cfg: TeacherConfig, spec: EventSpec, setup: DeviceSetup, name: str) -> None:
        super().__init__(cfg, spec, setup)
        self.name = name
        if name == "single":
            self.strategy = tf.distribute.OneDeviceStrategy(setup.devices[0])
        elif name == "mirrored":
            self.strategy = tf.distribute.MirroredStrategy(devices=list(setup.devices))
        elif name == "multiworker":
            options = tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.RING
            )
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        else:
            raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
        if cfg.global_batch_size % self.strategy.num_replicas_in_sync:
            raise UserError(
                f"--global-batch-size {cfg.global_batch_size} must be a multiple of the "
                f"{self.strategy.num_replicas_in_sync} replicas of {name}"
            )
        self._step_fn: Any = None

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if self.name != "multiworker" or resolver is None or not resolver.cluster_spec().as_dict():
            return True
        task_type, task_id = resolver.task_type, resolver.task_id
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)

    @property
    def worker_index(self) -> int:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if self.name != "multiworker" or resolver is None or resolver.task_id is None:
            return 0
        return int(resolver.task_id)

    def mesh_description(self) -> dict[str, int]:
        workers = 1
        if self.name == "multiworker":
            cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
            workers = max(1, sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")))
        return {"workers": workers, "replicas": self.replicas}

    def build(self, initial_weights: list[np.ndarray], learning_rate: Any) -> None:
        policy = mixed_precision_policy(self.cfg.mixed_precision, self.setup.device_type)
        keras.mixed_precision.set_global_policy(policy)
        try:
            with self.strategy.scope():
                self.model = build_teacher(self.spec, self.cfg)
                self.model.set_weights(initial_weights)
                optimizer = make_optimizer(self.cfg, learning_rate)
                if policy == "mixed_float16":
                    optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
                self.optimizer = optimizer
                # Slots exist before the first step, so a checkpoint restores into them at once.
                getattr(optimizer, "inner_optimizer", optimizer).build(self.model.trainable_variables)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        self._step_fn = self._make_step(loss_scaling=policy == "mixed_float16")

    def _make_step(self, loss_scaling: bool) -> Any:
        model, optimizer, strategy, cfg = self.model, self.optimizer, self.strategy, self.cfg

        def replica_step(batch: dict[str, Any]) -> Any:
            with tf.GradientTape() as tape:
                out = model(batch[layout.FRAMES], training=True)
                loss = teacher_loss(batch[layout.LABEL], batch[layout.BEST_FRAME], out, cfg)
                scaled = optimizer.get_scaled_loss(loss) if loss_scaling else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            if loss_scaling:
                grads = optimizer.get_unscaled_gradients(grads)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        @tf.function(autograph=False)  # no tensor-dependent Python control flow; skips AST conversion
        def step(dist_batch: Any) -> Any:
            per_replica = strategy.run(replica_step, args=(dist_batch,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return step

    def batches(self, make: BatchesFn) -> Iterator[Any]:
        def dataset_fn(ctx: tf.distribute.InputContext) -> Any:
            per_replica = ctx.get_per_replica_batch_size(self.cfg.global_batch_size)
            return make(per_replica, ctx.num_input_pipelines, ctx.input_pipeline_id)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def step(self, batch: Any) -> float:
        return float(self._step_fn(batch))

    def variable_layouts(self) -> list[dict[str, Any]]:
        rows = []
        for v in self.model.weights:
            components = list(getattr(v, "values", None) or (v,))
            rows.append(
                {
                    "name": v.name,
                    "shape": v.shape.as_list(),
                    "layout": [UNSHARDED] * v.shape.rank,
                    "shards": [{"device": c.device, "shape": c.shape.as_list()} for c in components],
                }
            )
        return rows

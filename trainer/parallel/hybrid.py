"""Hybrid data x model parallelism on DTensor: Krizhevsky's "one weird trick" (2014).

Convolutional and attention layers hold few parameters and much compute: they run data
parallel (weights replicated, activations sharded over the batch). The fully-connected
head holds most parameters and little compute: its kernels are sharded over devices
(model parallel), so no device stores or all-reduces the whole head. Two layouts:

- ``2d`` (default): a ``batch x model`` mesh. Activations are sharded over ``batch``; FC
  kernels are ``[unsharded, "model"]`` (column-parallel) and the logits kernel
  ``["model", unsharded]`` (row-parallel, one all-reduce of the small logits).
- ``1d`` (the paper's): one axis ``devices`` over all devices. Convolutions are data
  parallel over every device; the pooled event features are all-gathered (relayout to
  replicated) and the FC layers are sharded over all devices, each computing its slice of
  units for the whole batch.

Across hosts (``teacher.clients > 1``): one process per host, each a DTensor client with
its own logical devices, joins one mesh spanning all of them (``DTENSOR_JOBS``,
``DTENSOR_CLIENT_ID``, ... set by ``trainer.parallel.launch`` or an operator). Every client
runs the same program; collectives between clients go over gRPC. Each client feeds the
whole global batch and keeps the rows of its own devices; client 0 is the chief.

The tf_keras ``LayoutMap`` assigns layouts by variable path; everything it does not name
is replicated. Training is a custom loop: one ``tf.function`` computes the loss and
gradients, a second applies them (in one function, DTensor left tf_keras Adam's updates of
replicated variables unapplied in our measurements; two functions are exact).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.experimental import dtensor

from contract import layout
from contract.config import TeacherConfig, client_mesh_error, mesh_dims
from contract.errors import UserError
from contract.layout import EventSpec
from trainer.models.teacher import FC_PREFIX, LOGITS, build_teacher
from trainer.parallel.devices import DeviceSetup
from trainer.parallel.strategies import (
    UNSHARDED,
    BatchesFn,
    Runner,
    make_optimizer,
    mixed_precision_policy,
    teacher_loss,
)


def make_layout_map(mesh: Any, cfg: TeacherConfig) -> Any:
    """FC kernels sharded over the model axis; everything else replicated (the default)."""
    model_axis = mesh.dim_names[-1]
    layout_map = keras.dtensor.experimental.LayoutMap(mesh=mesh)
    layout_map[rf"{FC_PREFIX}\d+\..*kernel"] = dtensor.Layout([dtensor.UNSHARDED, model_axis], mesh)
    layout_map[rf"{FC_PREFIX}\d+\..*bias"] = dtensor.Layout([model_axis], mesh)
    layout_map[rf"{LOGITS}\..*kernel"] = dtensor.Layout([model_axis, dtensor.UNSHARDED], mesh)
    return layout_map


def to_mesh(value: Any, target: Any) -> Any:
    """A host tensor placed on ``target``'s mesh with ``target``'s layout."""
    value = tf.convert_to_tensor(value)
    replicated = dtensor.Layout.replicated(target.mesh, rank=value.shape.rank)
    return dtensor.relayout(dtensor.copy_to_mesh(value, replicated), target)


def unsharded_value(value: Any) -> np.ndarray:
    """The full value of a DTensor (variable or tensor) as numpy, gathered from its shards."""
    if isinstance(value, tf.Variable):
        value = value.read_value()
    full = dtensor.relayout(
        value, dtensor.Layout.replicated(dtensor.fetch_layout(value).mesh, value.shape.rank)
    )
    return dtensor.unpack(full)[0].numpy()


class HybridRunner(Runner):
    """DTensor batch x model mesh with a LayoutMap (see the module docstring)."""

    name = "hybrid"

    def __init__(self, cfg: TeacherConfig, spec: EventSpec, setup: DeviceSetup) -> None:
        super().__init__(cfg, spec, setup)
        dims = mesh_dims(cfg)
        needed = int(np.prod([size for _, size in dims]))
        self.clients = dtensor.num_clients()  # len(DTENSOR_JOBS); 1 (local mode) without it
        if self.clients > 1:
            problem = client_mesh_error(cfg.mesh, needed, self.clients, setup.count)
            if problem:  # an operator-started client checks too: the launcher's check never ran for it
                raise UserError(problem)
        elif needed > setup.count:
            raise UserError(
                f"--mesh {cfg.mesh} needs {needed} devices but {setup.count} are configured; "
                f"pass --logical-devices {needed}"
            )
        data_axis, model_axis = dims[0][0], dims[-1][0]
        data_size, model_size = dims[0][1], dims[-1][1]
        if cfg.global_batch_size % data_size:
            raise UserError(
                f"--global-batch-size {cfg.global_batch_size} must be a multiple of the "
                f"{data_axis} axis ({data_size})"
            )
        for units in cfg.fc_units:
            if units % model_size:
                raise UserError(
                    f"teacher.fc_units {cfg.fc_units} must be multiples of the "
                    f"{model_axis} axis ({model_size})"
                )
        if mixed_precision_policy(cfg.mixed_precision, setup.device_type) != "float32":
            raise UserError(
                "hybrid trains in float32 (--mixed-precision off): tf_keras's LayoutMap cannot lay out the "
                "AutoCastVariables mixed precision creates; "
                "use bf16/fp16 with single, mirrored or multiworker"
            )
        self.dims = dims
        if self.clients > 1:
            self.mesh = _distributed_mesh(dims, setup)
        else:
            self.mesh = dtensor.create_mesh(
                dims, devices=list(setup.devices[:needed]), device_type=setup.device_type
            )
        self.data_axis = data_axis
        rank = len(spec.input_shape) + 1
        self.frames_layout = dtensor.Layout.batch_sharded(self.mesh, data_axis, rank=rank)
        self.labels_layout = dtensor.Layout.batch_sharded(self.mesh, data_axis, rank=1)
        # 1-D layout: gather the batch-sharded features before the sharded FC head.
        self.feature_layout = dtensor.Layout.replicated(self.mesh, rank=2) if cfg.fc_layout == "1d" else None
        self._grad_fn: Any = None
        self._apply_fn: Any = None

    @property
    def is_chief(self) -> bool:
        return dtensor.client_id() == 0

    @property
    def worker_index(self) -> int:
        return dtensor.client_id()

    @property
    def shares_checkpoints(self) -> bool:
        # Each client writes the shards on its devices under the same prefix; client 0 merges
        # them. Clients on several hosts therefore need the workdir on a shared file system.
        return True

    def mesh_description(self) -> dict[str, int]:
        return {"clients": self.clients, **dict(self.dims)} if self.clients > 1 else dict(self.dims)

    @property
    def replicas(self) -> int:
        return self.dims[0][1]

    def build(self, initial_weights: list[np.ndarray], learning_rate: Any) -> None:
        with make_layout_map(self.mesh, self.cfg).scope():
            self.model = build_teacher(self.spec, self.cfg, feature_layout=self.feature_layout)
        for variable, value in zip(self.model.weights, initial_weights, strict=True):
            variable.assign(to_mesh(value, variable.layout))
        self.optimizer = make_optimizer(self.cfg, learning_rate, mesh=self.mesh)
        self.optimizer.build(self.model.trainable_variables)
        model, optimizer, cfg = self.model, self.optimizer, self.cfg

        @tf.function(autograph=False)  # no tensor-dependent Python control flow; skips AST conversion
        def grad_fn(frames: Any, labels: Any, best_frame: Any) -> Any:
            with tf.GradientTape() as tape:
                out = model(frames, training=True)
                loss = teacher_loss(labels, best_frame, out, cfg)
            return loss, tape.gradient(loss, model.trainable_variables)

        @tf.function(autograph=False)  # no tensor-dependent Python control flow; skips AST conversion
        def apply_fn(grads: Any) -> None:
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        self._grad_fn, self._apply_fn = grad_fn, apply_fn

    def batches(self, make: BatchesFn) -> Iterator[Any]:
        return iter(make(self.cfg.global_batch_size, 1, 0))

    def step(self, batch: Any) -> float:
        frames = to_mesh(batch[layout.FRAMES], self.frames_layout)
        labels = to_mesh(batch[layout.LABEL], self.labels_layout)
        best_frame = to_mesh(batch[layout.BEST_FRAME], self.labels_layout)
        loss, grads = self._grad_fn(frames, labels, best_frame)
        self._apply_fn(list(grads))
        return float(unsharded_value(loss))

    def completed_steps(self) -> int:
        return int(unsharded_value(self.optimizer.iterations))

    def plain_weights(self) -> list[np.ndarray]:
        return [unsharded_value(v) for v in self.model.weights]

    def variable_layouts(self) -> list[dict[str, Any]]:
        """As the base class says; with several clients, only the shards held by this client."""
        rows = []
        for v in self.model.weights:
            spec = v.layout.sharding_specs
            shards = dtensor.unpack(v.read_value())
            rows.append(
                {
                    "name": v.name,
                    "shape": v.shape.as_list(),
                    "layout": [UNSHARDED if s == dtensor.UNSHARDED else s for s in spec],
                    "shards": [{"device": c.device, "shape": c.shape.as_list()} for c in shards],
                }
            )
        return rows

    def finish(self) -> None:
        """With several clients: wait for all of them (one all-gather) before this process exits.

        The coordination service lives in client 0; if it exited while another client still
        wrote its report, that client would lose its heartbeats mid-way.
        """
        if self.clients > 1:
            axis = self.dims[0][0]  # spans the clients
            unsharded_value(to_mesh(np.zeros(self.dims[0][1], np.float32), dtensor.Layout([axis], self.mesh)))


def _distributed_mesh(dims: list[tuple[str, int]], setup: DeviceSetup) -> Any:
    """This client's part of a mesh spanning every DTensor client in ``DTENSOR_JOBS``.

    ``initialize_accelerator_system`` reads the ``DTENSOR_*`` environment, starts this
    client's gRPC server and the coordination service and enables cross-client collectives;
    it must run before the TensorFlow runtime starts. Devices are numbered client by client,
    so the first mesh axis (``batch``, or ``devices`` in 1d) spans the clients and, in the 2d
    layout, the ``model`` axis stays within a client.
    """
    try:
        dtensor.initialize_accelerator_system(setup.device_type)
    except ValueError as e:  # the runtime already started in this process, or a bad DTENSOR_* value
        raise UserError(f"multi-client DTensor: {e}") from None
    return dtensor.create_distributed_mesh(dims, device_type=setup.device_type)

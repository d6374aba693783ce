"""The Pretrainer's training loop: NT-Xent on every event outside the eval split, one strategy.

- ``single``: one device, one ``tf.function`` step.
- ``hybrid``: the teacher's DTensor mesh (``teacher.mesh``, ``teacher.fc_layout``): the
  backbone data parallel (weights replicated, views sharded over the batch axis), the picked
  embeddings all-gathered and the projection head model parallel (``proj_*`` kernels sharded
  over the model axis), as in the teacher's 1-D layout. NT-Xent needs every view's negatives,
  so the loss is computed on the gathered projections.

Events read: the train and unlabelled splits, labels ignored. The eval split is held out on
purpose: the teacher's eval accuracy (and every gate on it) would otherwise be scored on
images the backbone was fitted to.

Like the teacher loop it must run in a process whose TensorFlow runtime has not started (or
already has the logical devices): ``trainer.parallel.devices.configure`` comes first.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from contract import files, layout
from contract.config import Config, check_pretrain, mesh_dims, pretrain_strategy
from contract.errors import UserError
from contract.layout import EventSpec
from trainer.parallel import devices

CURVE = "pretrain_curve.png"
WARMUP_FRACTION = 0.1


def total_steps(cfg: Config, events: int) -> int:
    p = cfg.pretrain
    if p.steps > 0:
        return p.steps
    return max(p.min_steps, math.ceil(p.epochs * events / p.batch))


@dataclass
class _Data:
    """The events pre-training reads (train + unlabelled, labels ignored) and how it batches them."""

    spec: EventSpec
    record_files: list[str]
    events: dict[str, int]  # per split
    epoch_size: int
    per_camera: Counter  # events per camera (camera negatives only)
    groups: Any  # cameras with a batch group of their own


def train(
    cfg: Config, examples_dir: str, workdir: str, *, export_dir: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Pre-train the backbone on ``examples_dir``; writes the backbone to ``export_dir`` and
    ``workdir/pretrain_report.json`` (loss curve, time, events used) and its plot."""
    check_pretrain(cfg)
    strategy = pretrain_strategy(cfg)
    spec, by_split = _inputs(examples_dir)
    setup = devices.configure(cfg.teacher.logical_devices if strategy == "hybrid" else 1)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    data = _read_data(cfg, spec, by_split)
    steps = total_steps(cfg, data.epoch_size)
    initial, runner = _build(cfg, spec, setup, strategy, steps)
    losses, step_times, wall = _loop(cfg, data, runner, steps, f"pretrain {strategy}", progress)
    from trainer.pretrain.model import build_pretext, save_backbone

    trained = build_pretext(spec, cfg.teacher, cfg.pretrain)
    trained.set_weights(runner.plain_weights())
    report = _report(
        cfg, data, strategy, runner, setup, steps, losses, step_times, wall, initial, trained, examples_dir
    )
    if export_dir:
        report["backbone"] = save_backbone(
            trained, export_dir, spec, cfg.teacher, {"steps": steps, "final_loss": report["final_loss"]}
        )
    from trainer.pretrain.plots import plot_pretrain_curve

    report["plots"] = {"pretrain_curve": plot_pretrain_curve(report, os.path.join(workdir, CURVE))}
    tmp = os.path.join(workdir, files.PRETRAIN_REPORT + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, os.path.join(workdir, files.PRETRAIN_REPORT))
    return report


def _inputs(examples_dir: str) -> tuple[EventSpec, dict[str, list[str]]]:
    if not os.path.isfile(os.path.join(examples_dir, layout.SPEC_FILE)):
        raise UserError(
            f"{examples_dir} has no {layout.SPEC_FILE}: point --data at an ingested Examples artifact"
        )
    spec = EventSpec.load(examples_dir)
    by_split = {s: layout.split_files(examples_dir, s) for s in (layout.TRAIN, layout.UNLABELLED_SPLIT)}
    if not any(by_split.values()):
        raise UserError(f"no train or unlabelled examples under {examples_dir} to pre-train on")
    return spec, by_split


def _read_data(cfg: Config, spec: EventSpec, by_split: dict[str, list[str]]) -> _Data:
    from trainer.pretrain.views import camera_groups, events_per_camera  # imports TensorFlow: after configure

    p = cfg.pretrain
    cameras = {s: events_per_camera(fs) for s, fs in by_split.items()}  # one read: counts and cameras
    events = {s: sum(c.values()) for s, c in cameras.items()}
    epoch_size = sum(events.values())
    if epoch_size < p.batch:
        raise UserError(f"pretrain.batch {p.batch} is larger than the {epoch_size} events to pre-train on")
    per_camera = sum(cameras.values(), Counter()) if p.negatives == "camera" else Counter()
    record_files = [f for split in by_split.values() for f in split]
    return _Data(spec, record_files, events, epoch_size, per_camera, camera_groups(per_camera, p.batch))


def _build(cfg: Config, spec: EventSpec, setup: Any, strategy: str, steps: int) -> tuple[Any, Any]:
    """(the initial pretext model, the runner holding its weights and the schedule)."""
    import tf_keras as keras  # after devices.configure, like the teacher loop

    from trainer.pretrain.model import build_pretext

    p = cfg.pretrain
    keras.backend.experimental.enable_tf_random_generator()
    keras.utils.set_random_seed(p.seed)
    initial = build_pretext(spec, cfg.teacher, p)
    runner = _HybridRunner(cfg, spec, setup) if strategy == "hybrid" else _SingleRunner(cfg, spec)
    warmup = max(1, int(WARMUP_FRACTION * steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        p.learning_rate * 0.1,
        max(1, steps - warmup),
        alpha=0.05,
        warmup_target=p.learning_rate,
        warmup_steps=warmup,
    )
    runner.build(initial.get_weights(), schedule)
    return initial, runner


def _loop(
    cfg: Config, data: _Data, runner: Any, steps: int, desc: str, progress: bool
) -> tuple[list[float], list[float], float]:
    """(losses, step times, wall seconds) of ``steps`` NT-Xent steps."""
    from trainer.pretrain.views import PICK_A, PICK_B, VIEW_A, VIEW_B, contrastive_batches

    p = cfg.pretrain
    batches = iter(contrastive_batches(data.record_files, data.spec, batch_size=p.batch, seed=p.seed,
                                       epoch_size=data.epoch_size, augmentations=list(p.augmentations),
                                       temporal=p.pairs == "temporal", groups=data.groups))  # fmt: skip
    losses: list[float] = []
    step_times: list[float] = []
    began = time.time()
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step")
    for step in range(steps):
        batch = next(batches)
        t0 = time.perf_counter()
        loss = runner.step(batch[VIEW_A], batch[PICK_A], batch[VIEW_B], batch[PICK_B])
        step_times.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise UserError(f"pretext loss became {loss} at step {step + 1}; lower pretrain.learning_rate")
        losses.append(loss)
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.4f}")
    bar.close()
    return losses, step_times, time.time() - began


def _report(
    cfg: Config, data: _Data, strategy: str, runner: Any, setup: Any, steps: int, losses: list[float],
    step_times: list[float], wall: float, initial: Any, trained: Any, examples_dir: str,
) -> dict[str, Any]:  # fmt: skip
    """pretrain_report.json: the loss curve against chance, how far the backbone moved, timing."""
    from trainer.models.teacher import backbone_layers

    p = cfg.pretrain
    before = [w for layer in backbone_layers(initial) for w in layer.get_weights()]
    after = [w for layer in backbone_layers(trained) for w in layer.get_weights()]
    delta = math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before, strict=True)))
    norm = math.sqrt(sum(float(np.sum(b**2)) for b in before))
    window = max(1, min(10, steps // 5))
    per_camera, groups = data.per_camera, data.groups
    median_step = statistics.median(step_times[1:] or step_times)
    return {
        "strategy": strategy,
        "mesh": runner.mesh_description(),
        "device_type": setup.device_type,
        "steps": steps,
        "batch": p.batch,
        "epochs": steps * p.batch / data.epoch_size,
        "temperature": p.temperature,
        "augmentations": list(p.augmentations),
        "pairs": p.pairs,
        "negatives": p.negatives,
        # camera negatives: cameras with a group of their own, and the events of those batched together
        "cameras": {"cameras": len(per_camera), "own_group": len(groups),
                    "mixed_events": sum(n for c, n in per_camera.items() if c not in groups)}
                   if per_camera else None,
        "projection_units": list(p.projection_units),
        "learning_rate": p.learning_rate,
        "events": {**data.events, "total": data.epoch_size, "eval_held_out": True},
        "losses": losses,
        "initial_loss": float(np.mean(losses[:window])),
        "final_loss": float(np.mean(losses[-window:])),
        # NT-Xent of random embeddings is about log(2B - 1): the chance level the loss starts near.
        "chance_loss": math.log(2 * p.batch - 1),
        # ||trained - initial|| / ||initial|| over every backbone weight: 0 would mean nothing learned.
        "backbone_relative_change": delta / norm if norm else None,
        "timing": {
            "wall_seconds": wall,
            "first_step_seconds": step_times[0],
            "median_step_seconds": median_step,
            "events_per_second": p.batch / median_step,
        },
        "data": {"examples_dir": os.path.abspath(examples_dir), "spec": data.spec.to_dict()},
        "parameters": {
            "backbone": int(sum(int(np.prod(w.shape)) for layer in backbone_layers(trained)
                                for w in layer.weights)),
            "projection_head": int(sum(int(np.prod(w.shape)) for w in trained.weights
                                       if w.name.startswith("proj"))),
        },
    }  # fmt: skip


class _SingleRunner:
    """One device; the whole step in one ``tf.function``."""

    def __init__(self, cfg: Config, spec: EventSpec) -> None:
        self.cfg, self.spec = cfg, spec

    def mesh_description(self) -> dict[str, int]:
        return {"replicas": 1}

    def build(self, weights: list[np.ndarray], schedule: Any) -> None:
        import tensorflow as tf
        import tf_keras as keras

        from trainer.pretrain.model import build_pretext, pretext_loss

        self.model = model = build_pretext(self.spec, self.cfg.teacher, self.cfg.pretrain)
        model.set_weights(weights)
        optimizer = keras.optimizers.Adam(schedule)
        loss_of = pretext_loss(model, self.cfg.pretrain.temperature)

        @tf.function(autograph=False)
        def step(*views: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_of(*views)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        self._step = step

    def step(self, view_a: Any, pick_a: Any, view_b: Any, pick_b: Any) -> float:
        return float(self._step(view_a, pick_a, view_b, pick_b))

    def plain_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()


class _HybridRunner:
    """The teacher's DTensor mesh: backbone data parallel, projection head model parallel."""

    def __init__(self, cfg: Config, spec: EventSpec, setup: Any) -> None:
        from tensorflow.experimental import dtensor

        self.cfg, self.spec = cfg, spec
        self.dims = mesh_dims(cfg.teacher)
        needed = int(np.prod([size for _, size in self.dims]))
        if needed > setup.count:
            raise UserError(f"teacher.mesh {cfg.teacher.mesh} needs {needed} devices "
                            f"but {setup.count} are configured; "
                            f"set teacher.logical_devices={needed}")  # fmt: skip
        # The batch and projection sizes fit the axes: check_pretrain said so before anything ran.
        self.data_axis, self.model_axis = self.dims[0][0], self.dims[-1][0]
        self.mesh = dtensor.create_mesh(
            self.dims, devices=list(setup.devices[:needed]), device_type=setup.device_type
        )
        rank = len(spec.input_shape) + 1
        self.frames_layout = dtensor.Layout.batch_sharded(self.mesh, self.data_axis, rank=rank)
        self.pick_layout = dtensor.Layout.batch_sharded(self.mesh, self.data_axis, rank=2)

    def mesh_description(self) -> dict[str, int]:
        return dict(self.dims)

    def build(self, weights: list[np.ndarray], schedule: Any) -> None:
        import tensorflow as tf
        import tf_keras as keras
        from tensorflow.experimental import dtensor

        from trainer.parallel.hybrid import to_mesh
        from trainer.pretrain.model import PROJ_OUT, PROJ_PREFIX, build_pretext, pretext_loss

        mesh, model_axis = self.mesh, self.model_axis
        layout_map = keras.dtensor.experimental.LayoutMap(mesh=mesh)
        layout_map[rf"{PROJ_PREFIX}\d+\..*kernel"] = dtensor.Layout([dtensor.UNSHARDED, model_axis], mesh)
        layout_map[rf"{PROJ_PREFIX}\d+\..*bias"] = dtensor.Layout([model_axis], mesh)
        layout_map[rf"{PROJ_OUT}\..*kernel"] = dtensor.Layout([model_axis, dtensor.UNSHARDED], mesh)
        gathered = dtensor.Layout.replicated(mesh, rank=2)
        with layout_map.scope():
            self.model = model = build_pretext(
                self.spec, self.cfg.teacher, self.cfg.pretrain, feature_layout=gathered
            )
        for variable, value in zip(model.weights, weights, strict=True):
            variable.assign(to_mesh(value, variable.layout))
        self.optimizer = optimizer = keras.optimizers.Adam(schedule, mesh=mesh)
        optimizer.build(model.trainable_variables)
        loss_of = pretext_loss(model, self.cfg.pretrain.temperature)

        # Two functions, as in the teacher's hybrid runner: gradients, then their application.
        @tf.function(autograph=False)
        def grad_fn(*views: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_of(*views)
            return loss, tape.gradient(loss, model.trainable_variables)

        @tf.function(autograph=False)
        def apply_fn(grads: Any) -> None:
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        self._grad_fn, self._apply_fn, self._to_mesh = grad_fn, apply_fn, to_mesh

    def step(self, view_a: Any, pick_a: Any, view_b: Any, pick_b: Any) -> float:
        from trainer.parallel.hybrid import unsharded_value

        placed = (
            self._to_mesh(view_a, self.frames_layout), self._to_mesh(pick_a, self.pick_layout),
            self._to_mesh(view_b, self.frames_layout), self._to_mesh(pick_b, self.pick_layout),
        )  # fmt: skip
        loss, grads = self._grad_fn(*placed)
        self._apply_fn(list(grads))
        return float(unsharded_value(loss))

    def plain_weights(self) -> list[np.ndarray]:
        from trainer.parallel.hybrid import unsharded_value

        return [unsharded_value(v) for v in self.model.weights]

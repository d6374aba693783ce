"""The teacher's training loop, shared by every strategy.

Training length follows the data: at most ``epochs`` over the train split (at least
``min_steps``), stopped early once ``patience`` eval-loss checks in a row, made in the second
half of the learning-rate decay, found no new best, unless ``steps`` fixes it. Large
mini-batches follow Goyal et al. (2017): the learning rate scales linearly with the global
batch (``base_learning_rate * global_batch_size / reference_batch_size``) and is reached by a
gradual linear warm-up from the reference rate over ``warmup_steps``, held until
``decay_start`` of the steps, then a cosine decay takes it to ``final_lr_fraction`` of the peak.
The eval loss is checked once per epoch (``eval_every``) and the weights with the lowest one
are what gets exported and reported (the run keeps them in ``best_weights.npz``).

A run in workdir ``W`` checkpoints every ``checkpoint_every`` steps (model, optimizer slots
and step; the data position is a function of the step, see ``trainer.data``); a
killed run started again with the same ``W`` restores the last checkpoint and continues
with the next step on the next batch. At the end it scores the eval split, optionally
exports the SavedModel, and writes ``W/train_report.json``, TensorBoard scalars
(``W/tensorboard``) and a training-curve plot.

Must run in a process whose TensorFlow runtime is not initialised yet (or already has
the requested logical devices): ``trainer.parallel.devices.configure`` is called first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
import weakref
from typing import Any

import numpy as np
from tqdm import tqdm

from contract import files, layout
from contract.config import STRATEGIES, TeacherConfig
from contract.errors import UserError
from contract.layout import EventSpec
from trainer import data as train_data
from trainer.parallel import devices
from trainer.teacher.length import hold_until, patience_exhausted

STATE = "train_state.json"
CURVE = "training_curve.png"
# Fields a resumed run must share with the run that wrote the checkpoint.
BEST_WEIGHTS = "best_weights.npz"
RESUME_KEYS = (
    "strategy",
    "fc_layout",
    "mesh",
    "global_batch_size",
    "seed",
    "conv_filters",
    "attention_heads",
    "fc_units",
    "mixed_precision",
    "augment",
    "warmup_steps",
    "decay_start",
    "final_lr_fraction",
    "base_learning_rate",
    "reference_batch_size",
    "blocks_per_stage",
    "width_multiplier",
    "stem_stride",
    "weight_decay",
    "label_smoothing",
    "frame_loss_weight",
    "norm",
    "norm_groups",
    "pool",
)  # fmt: skip  (the length may change: a resumed run can be extended)


def scaled_learning_rate(cfg: TeacherConfig) -> float:
    """Linear scaling rule: the reference rate times global / reference batch size."""
    return cfg.base_learning_rate * cfg.global_batch_size / cfg.reference_batch_size


def total_steps(cfg: TeacherConfig, train_events: int) -> int:
    """``cfg.steps`` if set, else ``epochs`` over ``train_events`` but at least ``min_steps``."""
    if cfg.steps > 0:
        return cfg.steps
    return max(cfg.min_steps, math.ceil(cfg.epochs * train_events / cfg.global_batch_size))


def steps_per_epoch(cfg: TeacherConfig, train_events: int) -> int:
    return max(1, math.ceil(train_events / cfg.global_batch_size))


def make_schedule(cfg: TeacherConfig, steps: int) -> Any:
    """Gradual warm-up from the reference rate to the scaled rate, held, then a cosine decay.

    The peak is held until ``decay_start`` of the steps: the teacher learns slowly at first
    (about 100 steps near chance on the demo data) and a decay from the first step starves it.
    """
    import tensorflow as tf
    import tf_keras as keras

    class WarmupHoldCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, start: float, peak: float, warmup_steps: int, total: int, decay_start: float,
                     final_fraction: float) -> None:  # fmt: skip
            self.start, self.peak, self.warmup_steps = start, peak, warmup_steps
            self.total, self.decay_start, self.final_fraction = total, decay_start, final_fraction

        def __call__(self, step: Any) -> Any:
            step = tf.cast(step, tf.float32)
            warmup = float(max(self.warmup_steps, 0))
            if warmup > 0 and self.peak > self.start:
                rising = self.start + (self.peak - self.start) * tf.minimum(step / warmup, 1.0)
            else:
                rising = tf.constant(self.peak, tf.float32)
            decay_from = hold_until(self.warmup_steps, self.decay_start, self.total)
            decay_steps = max(1.0, float(self.total) - decay_from)
            progress = tf.clip_by_value((step - decay_from) / decay_steps, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            decayed = self.peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
            return tf.where(step < warmup, rising, decayed)

        def get_config(self) -> dict[str, Any]:
            return {"start": self.start, "peak": self.peak, "warmup_steps": self.warmup_steps,
                    "total": self.total, "decay_start": self.decay_start,
                    "final_fraction": self.final_fraction}  # fmt: skip

    return WarmupHoldCosine(
        cfg.base_learning_rate, scaled_learning_rate(cfg), cfg.warmup_steps, steps, cfg.decay_start,
        cfg.final_lr_fraction,
    )  # fmt: skip


_EVAL_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate(model: Any, files: list[str], spec: EventSpec, *, batch_size: int, max_batches: int = 0) -> dict:
    """Accuracy and mean loss of a plain model on labelled events of ``files``."""
    import tensorflow as tf

    predict = _EVAL_FUNCTIONS.get(model)
    if predict is None:  # traced once per model, not once per eval check or batch size
        # An unknown batch size: a graph specialised to a last batch of one event crashes
        # TensorFlow's oneDNN graph rewrite on some CPUs when events have one frame
        # (docs/benchmarks.md, "A crash on single-frame sets").
        predict = tf.function(
            lambda frames: model(frames, training=False)["logits"],
            autograph=False,
            input_signature=[tf.TensorSpec([None, *spec.input_shape], tf.float32)],
        )
        _EVAL_FUNCTIONS[model] = predict
    correct = total = 0
    loss_sum = 0.0
    for batch in train_data.eval_batches(files, spec, batch_size=batch_size, max_batches=max_batches):
        labels = batch[layout.LABEL].numpy()
        logits = predict(batch[layout.FRAMES]).numpy().astype(np.float64)
        keep = labels >= 0
        labels, logits = labels[keep], logits[keep]
        if not len(labels):
            continue
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss_sum += float(-log_probs[np.arange(len(labels)), labels].sum())
        correct += int((logits.argmax(axis=1) == labels).sum())
        total += len(labels)
    if not total:
        raise UserError("the eval split has no labelled events to score the teacher on")
    return {"accuracy": correct / total, "loss": loss_sum / total, "events": total}


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# What a checkpoint written before a resume key existed was trained with.
LEGACY_RESUME_FIELDS = {"norm": "group", "norm_groups": 8, "pool": "auto"}


def _resume_fields(cfg: TeacherConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in RESUME_KEYS}


def _changed_fields(saved: dict[str, Any], cfg: TeacherConfig) -> list[str]:
    """The resume keys whose saved value differs from ``cfg``'s (legacy defaults for absent ones)."""
    return sorted(k for k in RESUME_KEYS if saved.get(k, LEGACY_RESUME_FIELDS.get(k)) != getattr(cfg, k))


@dataclasses.dataclass
class _Run:
    """What one training run is: its data, devices, runner, directories and length."""

    cfg: TeacherConfig
    spec: EventSpec
    setup: Any  # devices.DeviceSetup
    runner: Any  # HybridRunner | DistributeRunner
    workdir: str
    own_dir: str  # the chief's workdir, or this worker's directory under it
    examples_dir: str
    train_files: list[str]
    eval_files: list[str]
    epoch_size: int
    steps: int
    eval_every: int
    schedule: Any
    params: dict[str, Any]
    memory: dict[str, Any]
    pretrained_layers: list[str]


@dataclasses.dataclass
class _Progress:
    """What the loop accumulates; a resumed run starts from the checkpoint's state."""

    start: int = 0
    resumed_from: int | None = None
    losses: list[float] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"step", "loss", "accuracy"}
    stopped_early: int | None = None  # the step at which patience ran out
    step_times: list[float] = dataclasses.field(default_factory=list)
    step_cpu: list[float] = dataclasses.field(
        default_factory=list
    )  # process CPU s (all threads): robust when shared
    input_waits: list[float] = dataclasses.field(default_factory=list)  # > 0: the step waited for input
    checkpoint_seconds: list[float] = dataclasses.field(default_factory=list)
    eval_seconds: float = 0.0
    wall: float = 0.0

    def best_eval(self) -> dict[str, Any] | None:
        return min(self.evals, key=lambda e: (e["loss"], e["step"])) if self.evals else None


def train(
    cfg: TeacherConfig,
    examples_dir: str,
    workdir: str,
    *,
    export_dir: str | None = None,
    progress: bool = True,
    init_backbone: str | None = None,
) -> dict[str, Any]:
    """Train the teacher on an Examples artifact; returns (and writes) the train report.

    ``init_backbone``: a pre-trained backbone (``trainer.pretrain``, a directory with
    ``backbone.npz``) the conv layers start from instead of their random initialisation; a
    resumed run takes its weights from the checkpoint as always.
    """
    spec, train_files, eval_files = _check_inputs(cfg, examples_dir)
    setup = devices.configure(cfg.logical_devices)
    run = _prepare(
        cfg, spec, setup, os.path.abspath(workdir), examples_dir, train_files, eval_files, init_backbone
    )
    checkpoints = _Checkpoints(run)
    state = checkpoints.restore()
    batches = run.runner.batches(lambda size, shards, index: _batches(run, state.start, size, shards, index))
    evaluator = _BestWeights(run)
    _loop(run, state, batches, evaluator, checkpoints, progress)
    scores = evaluator.restore_best(state)
    if export_dir and run.runner.is_chief:
        from trainer.models.export import export_saved_model

        export_saved_model(evaluator.plain, spec, export_dir)
    report = _report(run, state, scores, export_dir, init_backbone)
    from trainer.teacher.plots import plot_training_curve

    report["plots"] = {"training_curve": plot_training_curve(report, os.path.join(run.own_dir, CURVE))}
    _write_json(os.path.join(run.own_dir, files.TRAIN_REPORT), report)
    run.runner.finish()
    return report


def _check_inputs(cfg: TeacherConfig, examples_dir: str) -> tuple[EventSpec, list[str], list[str]]:
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    if cfg.steps < 0 or cfg.global_batch_size < 1 or cfg.reference_batch_size < 1:
        raise UserError(
            "teacher steps must be >= 0 (0: from epochs), global_batch_size and reference_batch_size >= 1"
        )
    if cfg.clients < 1:
        raise UserError(f"teacher.clients must be >= 1, got {cfg.clients}")
    if cfg.steps == 0 and (cfg.epochs <= 0 or cfg.min_steps < 1):
        raise UserError("teacher.epochs must be > 0 and teacher.min_steps >= 1 (or set teacher.steps)")
    if not os.path.isfile(os.path.join(examples_dir, layout.SPEC_FILE)):
        raise UserError(
            f"{examples_dir} has no {layout.SPEC_FILE}: point --data at an ingested Examples artifact"
        )
    spec = EventSpec.load(examples_dir)
    train_files = layout.split_files(examples_dir, layout.TRAIN, required=True)
    eval_files = layout.split_files(examples_dir, layout.EVAL, required=True)
    return spec, train_files, eval_files


def _prepare(
    cfg: TeacherConfig, spec: EventSpec, setup: Any, workdir: str, examples_dir: str,
    train_files: list[str], eval_files: list[str], init_backbone: str | None,
) -> _Run:  # fmt: skip
    """The runner (strategy or DTensor mesh) with the initial weights, and the run's length."""
    # Imported after devices.configure: no module that might touch the runtime may load before
    # the logical devices exist, since the runtime refuses changes once it has started.
    import tf_keras as keras

    from trainer.models.teacher import build_teacher, parameter_counts
    from trainer.parallel.hybrid import HybridRunner
    from trainer.parallel.strategies import DistributeRunner
    from trainer.teacher.memory import check_fits

    # Created before any TF op: MultiWorkerMirroredStrategy needs that.
    if cfg.strategy == "hybrid":
        runner = HybridRunner(cfg, spec, setup)  # DTensor mesh
    else:
        runner = DistributeRunner(cfg, spec, setup, cfg.strategy)  # a tf.distribute strategy
    own_dir = (
        workdir if runner.is_chief else os.path.join(workdir, "workers", f"worker-{runner.worker_index}")
    )
    os.makedirs(own_dir, exist_ok=True)
    epoch_size = train_data.count_records(train_files, os.path.join(own_dir, "train_records.json"))
    steps = total_steps(cfg, epoch_size)
    eval_every = cfg.eval_every if cfg.eval_every > 0 else steps_per_epoch(cfg, epoch_size)

    keras.backend.experimental.enable_tf_random_generator()
    keras.utils.set_random_seed(cfg.seed)
    initial = build_teacher(spec, cfg)
    pretrained_layers: list[str] = []
    if init_backbone:
        from trainer.pretrain.model import load_backbone

        pretrained_layers = load_backbone(initial, init_backbone, cfg)
    params = parameter_counts(initial)
    memory = check_fits(initial, spec, cfg, weight_copies=setup.count if cfg.strategy != "single" else 1)
    schedule = make_schedule(cfg, steps)
    runner.build(initial.get_weights(), schedule)
    return _Run(cfg, spec, setup, runner, workdir, own_dir, examples_dir, train_files, eval_files, epoch_size,
                steps, eval_every, schedule, params, memory, pretrained_layers)  # fmt: skip


def _batches(run: _Run, start: int, batch_size: int, num_shards: int, shard_index: int) -> Any:
    """The train stream from step ``start`` on: the data position is a function of the step."""
    cfg = run.cfg
    return train_data.train_batches(
        run.train_files, run.spec, batch_size=batch_size, seed=cfg.seed, epoch_size=run.epoch_size,
        start_record=start * cfg.global_batch_size, num_shards=num_shards, shard_index=shard_index,
        augment=cfg.augment,
    )  # fmt: skip


class _Checkpoints:
    """The run's checkpoints and the state beside them (losses, evals, the resume key)."""

    def __init__(self, run: _Run) -> None:
        import tensorflow as tf

        self.run = run
        self.checkpoint = run.runner.checkpoint()
        shared = run.workdir if run.runner.shares_checkpoints else run.own_dir
        self.directory = os.path.join(shared, "checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=3)

    def restore(self) -> _Progress:
        """The latest checkpoint's weights and state; a fresh ``_Progress`` when there is none."""
        import tensorflow as tf

        run, cfg = self.run, self.run.cfg
        latest = tf.train.latest_checkpoint(os.path.join(run.workdir, "checkpoints"))
        state = _Progress()
        if latest:
            state_path = os.path.join(run.workdir, STATE)
            saved = _read_json(state_path) if os.path.exists(state_path) else {}
            changed = _changed_fields(saved["config"], cfg) if saved.get("config") else []
            if changed:
                raise UserError(
                    f"{run.workdir} holds a checkpoint of a run with different {', '.join(changed)}; "
                    "use a fresh --workdir or the same settings"
                )
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            state.resumed_from = run.runner.completed_steps()
            state.losses = list(saved.get("losses", []))[: state.resumed_from]
            state.evals = [e for e in saved.get("evals", []) if e["step"] <= state.resumed_from]
        state.start = run.runner.completed_steps()
        return state

    def save(self, step: int, state: _Progress) -> None:
        began = time.perf_counter()
        run = self.run
        # State first: a kill between the two leaves extra losses that the resume trims.
        if run.runner.is_chief:
            _write_json(
                os.path.join(run.workdir, STATE),
                {
                    "step": step,
                    "losses": state.losses,
                    "evals": state.evals,
                    "config": _resume_fields(run.cfg),
                },
            )
        if run.runner.is_chief or not run.runner.shares_checkpoints:
            self.manager.save(checkpoint_number=step)
        else:
            # The same save (every client writes its shards; the chief merges them), but only the
            # chief records it: a record written here first could name a checkpoint not yet merged.
            self.checkpoint.save_counter.assign_add(1)
            self.checkpoint.write(os.path.join(self.directory, f"ckpt-{step}"))  # the manager's naming
        state.checkpoint_seconds.append(time.perf_counter() - began)


class _BestWeights:
    """Eval-loss checks on an unsharded twin of the model; the best weights kept on disk."""

    def __init__(self, run: _Run) -> None:
        import tensorflow as tf

        from trainer.models.teacher import build_teacher

        self.run = run
        self.writer = tf.summary.create_file_writer(os.path.join(run.own_dir, "tensorboard"))
        self.plain = build_teacher(run.spec, run.cfg)
        self.path = os.path.join(run.own_dir, BEST_WEIGHTS)

    def check(self, step: int, state: _Progress) -> None:
        import tensorflow as tf

        run = self.run
        self.plain.set_weights(run.runner.plain_weights())
        scores = evaluate(self.plain, run.eval_files, run.spec, batch_size=run.cfg.global_batch_size,
                          max_batches=run.cfg.eval_batches)  # fmt: skip
        state.evals.append({"step": step, "loss": scores["loss"], "accuracy": scores["accuracy"]})
        with self.writer.as_default():
            tf.summary.scalar("eval_loss", scores["loss"], step=step)
            tf.summary.scalar("eval_accuracy", scores["accuracy"], step=step)
        if state.best_eval()["step"] == step:
            tmp = f"{self.path}.tmp.npz"
            np.savez(tmp, *self.plain.get_weights())
            os.replace(tmp, self.path)

    def restore_best(self, state: _Progress) -> dict[str, Any]:
        """Load the best weights into the twin and score them (what is exported and reported)."""
        run = self.run
        if state.best_eval() is None:  # resumed after the last step: nothing was trained in this process
            self.check(run.steps, state)
        with np.load(self.path) as stored:
            self.plain.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
        scores = evaluate(self.plain, run.eval_files, run.spec, batch_size=run.cfg.global_batch_size,
                          max_batches=run.cfg.eval_batches)  # fmt: skip
        self.writer.flush()
        return scores


def _loop(
    run: _Run,
    state: _Progress,
    batches: Any,
    evaluator: _BestWeights,
    checkpoints: _Checkpoints,
    progress: bool,
) -> None:
    """Step until the planned length or until patience runs out, checkpointing on the way."""
    import tensorflow as tf

    cfg, runner, steps = run.cfg, run.runner, run.steps
    if patience_exhausted(cfg, state.evals, state.start, steps):  # a resumed run that had already stopped
        state.stopped_early = state.start
    began = time.time()
    bar = tqdm(
        total=steps, initial=state.start, desc=f"teacher {cfg.strategy}", disable=not progress, unit="step"
    )
    for step in range(state.start, steps if state.stopped_early is None else state.start):
        waited = time.perf_counter()
        batch = next(batches)
        state.input_waits.append(time.perf_counter() - waited)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = runner.step(batch)
        state.step_times.append(time.perf_counter() - t0)
        state.step_cpu.append(time.process_time() - c0)
        if not np.isfinite(loss):
            raise UserError(
                f"teacher loss became {loss} at step {step + 1}; lower teacher.base_learning_rate"
            )
        state.losses.append(loss)
        with evaluator.writer.as_default():
            tf.summary.scalar("loss", loss, step=step + 1)
            tf.summary.scalar("learning_rate", float(run.schedule(step)), step=step + 1)
        bar.update(1)
        done = step + 1
        if done % run.eval_every == 0 or done == steps:
            t_eval = time.perf_counter()
            evaluator.check(done, state)
            state.eval_seconds += time.perf_counter() - t_eval
        best = state.best_eval()
        bar.set_postfix_str(
            f"loss {loss:.4f}"
            + (f", eval loss {state.evals[-1]['loss']:.3f} (best @{best['step']})" if best else "")
        )
        stop = patience_exhausted(cfg, state.evals, done, steps)
        if done % max(1, cfg.checkpoint_every) == 0 or done == steps or stop:
            checkpoints.save(done, state)
        if stop:
            state.stopped_early = done
            break
    bar.close()
    state.wall = time.time() - began


def _report(
    run: _Run, state: _Progress, scores: dict[str, Any], export_dir: str | None, init_backbone: str | None
) -> dict[str, Any]:
    """train_report.json: the run's layout, length, schedule, losses, evals and timing."""
    cfg, runner, steps, setup = run.cfg, run.runner, run.steps, run.setup
    step_times, input_waits = state.step_times, state.input_waits
    steady = slice(3, None) if len(step_times) > 5 else slice(None)
    step_seconds = statistics.median(step_times[steady]) if step_times else None
    cpu_seconds = statistics.median(state.step_cpu[steady]) if state.step_cpu else None
    trained = state.stopped_early or steps
    return {
        "strategy": cfg.strategy,
        "fc_layout": cfg.fc_layout if cfg.strategy == "hybrid" else None,
        "mesh": runner.mesh_description(),
        "device_type": setup.device_type,
        "devices": list(setup.devices),
        "worker_index": runner.worker_index,
        "is_chief": runner.is_chief,
        "steps": steps,  # planned (the schedule's length)
        "steps_trained": trained,
        "stopped_early": state.stopped_early is not None,
        "patience": cfg.patience,
        "steps_per_epoch": steps_per_epoch(cfg, run.epoch_size),
        "epochs": trained * cfg.global_batch_size / run.epoch_size,
        "start_step": state.start,
        "resumed_from_step": state.resumed_from,
        "global_batch_size": cfg.global_batch_size,
        "learning_rate": {
            "base": cfg.base_learning_rate,
            "reference_batch_size": cfg.reference_batch_size,
            "scaled": scaled_learning_rate(cfg),
            "warmup_steps": cfg.warmup_steps,
            "schedule": "linear warm-up, hold, cosine decay",
            "decay_start": cfg.decay_start,
            "final_fraction": cfg.final_lr_fraction,
        },
        "augment": cfg.augment,
        "mixed_precision": cfg.mixed_precision,
        "seed": cfg.seed,
        "losses": state.losses,
        "learning_rates": [float(v) for v in run.schedule(np.arange(steps)).numpy()],
        "eval": scores,  # of the exported (best) weights
        "final_eval_accuracy": scores["accuracy"],
        "best": state.best_eval(),
        "eval_history": state.evals,
        "memory_estimate": run.memory,
        "parameters": run.params,
        "timing": {
            "wall_seconds": state.wall,
            "steps_timed": len(step_times),
            "first_step_seconds": step_times[0] if step_times else None,  # includes tracing/compiling
            "median_step_seconds": step_seconds,
            "median_step_cpu_seconds": cpu_seconds,
            "examples_per_second": (cfg.global_batch_size / step_seconds) if step_seconds else None,
            "median_input_wait_seconds": statistics.median(input_waits[steady]) if input_waits else None,
            # Share of the steady loop spent waiting for input: ~0 when compute-bound.
            "input_wait_fraction": _wait_fraction(input_waits[steady], step_times[steady]),
            "checkpoints": len(state.checkpoint_seconds),
            "checkpoint_seconds": sum(state.checkpoint_seconds),
            "eval_seconds": state.eval_seconds,
        },
        "data": {
            "examples_dir": os.path.abspath(run.examples_dir),
            "train_events": run.epoch_size,
            "spec": run.spec.to_dict(),
        },  # fmt: skip
        "variables": runner.variable_layouts(),
        "export_dir": os.path.abspath(export_dir) if export_dir and runner.is_chief else None,
        "pretrained_backbone": (
            {"path": os.path.abspath(init_backbone), "layers": run.pretrained_layers}
            if init_backbone
            else None
        ),
        "config": _config_dict(cfg),
    }


def _wait_fraction(waits: list[float], steps: list[float]) -> float | None:
    total = sum(waits) + sum(steps)
    return sum(waits) / total if total > 0 else None


def _config_dict(cfg: TeacherConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)

"""The teacher's training loop, shared by every strategy.

Training length follows the data: at most ``epochs`` over the train split (at least
``min_steps``), stopped early once ``patience`` eval-loss checks in a row found no new best,
unless ``steps`` fixes it. Large mini-batches follow Goyal et al. (2017): the learning rate
scales linearly with the global batch (``base_learning_rate * global_batch_size /
reference_batch_size``) and is reached by a gradual linear warm-up from the reference rate
over ``warmup_steps``, held until ``decay_start`` of the steps, then a cosine decay takes it to
``final_lr_fraction`` of the peak.
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

STATE = "train_state.json"
CURVE = "training_curve.png"
# Fields a resumed run must share with the run that wrote the checkpoint.
BEST_WEIGHTS = "best_weights.npz"
RESUME_KEYS = (
    "strategy", "fc_layout", "mesh", "global_batch_size", "seed", "conv_filters",
    "attention_heads", "fc_units", "mixed_precision", "augment", "warmup_steps", "decay_start", "final_lr_fraction",
    "base_learning_rate", "reference_batch_size", "blocks_per_stage", "width_multiplier", "stem_stride",
    "weight_decay", "label_smoothing", "frame_loss_weight",
)  # fmt: skip  (the length may change: a resumed run can be extended)


def scaled_learning_rate(cfg: TeacherConfig) -> float:
    """Linear scaling rule: the reference rate times global / reference batch size."""
    return cfg.base_learning_rate * cfg.global_batch_size / cfg.reference_batch_size


def total_steps(cfg: TeacherConfig, train_events: int) -> int:
    """``cfg.steps`` if set, else ``epochs`` over ``train_events`` but at least ``min_steps``."""
    if cfg.steps > 0:
        return cfg.steps
    return max(cfg.min_steps, math.ceil(cfg.epochs * train_events / cfg.global_batch_size))


def patience_exhausted(cfg: TeacherConfig, evals: list[dict[str, Any]], step: int) -> bool:
    """True once ``patience`` eval checks in a row found no new lowest eval loss (past ``min_steps``).

    A run of fixed length (``steps``) or with ``patience`` 0 never stops early.
    """
    if cfg.steps > 0 or cfg.patience <= 0 or step < cfg.min_steps or not evals:
        return False
    best = min(range(len(evals)), key=lambda i: (evals[i]["loss"], evals[i]["step"]))
    return len(evals) - 1 - best >= cfg.patience


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
            hold_until = max(warmup, self.decay_start * float(self.total))
            decay_steps = max(1.0, float(self.total) - hold_until)
            progress = tf.clip_by_value((step - hold_until) / decay_steps, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            decayed = self.peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
            return tf.where(step < warmup, rising, decayed)

        def get_config(self) -> dict[str, Any]:
            return {"start": self.start, "peak": self.peak, "warmup_steps": self.warmup_steps, "total": self.total,
                    "decay_start": self.decay_start, "final_fraction": self.final_fraction}  # fmt: skip

    return WarmupHoldCosine(
        cfg.base_learning_rate, scaled_learning_rate(cfg), cfg.warmup_steps, steps, cfg.decay_start,
        cfg.final_lr_fraction,
    )  # fmt: skip


_EVAL_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate(model: Any, files: list[str], spec: EventSpec, *, batch_size: int, max_batches: int = 0) -> dict:
    """Accuracy and mean loss of a plain model on labelled events of ``files``."""
    import tensorflow as tf

    predict = _EVAL_FUNCTIONS.get(model)
    if predict is None:  # traced once per model, not once per eval check
        predict = tf.function(lambda frames: model(frames, training=False)["logits"], autograph=False)
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


def _resume_fields(cfg: TeacherConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in RESUME_KEYS}


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

    if cfg.strategy not in STRATEGIES:
        raise UserError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    if cfg.steps < 0 or cfg.global_batch_size < 1 or cfg.reference_batch_size < 1:
        raise UserError("teacher steps must be >= 0 (0: from epochs), global_batch_size and reference_batch_size >= 1")
    if cfg.clients < 1:
        raise UserError(f"teacher.clients must be >= 1, got {cfg.clients}")
    if cfg.steps == 0 and (cfg.epochs <= 0 or cfg.min_steps < 1):
        raise UserError("teacher.epochs must be > 0 and teacher.min_steps >= 1 (or set teacher.steps)")
    if not os.path.isfile(os.path.join(examples_dir, layout.SPEC_FILE)):
        raise UserError(f"{examples_dir} has no {layout.SPEC_FILE}: point --data at an ingested Examples artifact")
    spec = EventSpec.load(examples_dir)
    train_files = layout.split_files(examples_dir, layout.TRAIN, required=True)
    eval_files = layout.split_files(examples_dir, layout.EVAL, required=True)

    setup = devices.configure(cfg.logical_devices)
    # Kept after devices.configure (ordering, not import cost: TensorFlow is already loaded): no
    # module that might touch the runtime is imported before the logical devices exist, since the
    # runtime refuses changes once it has started.
    import tensorflow as tf
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
    workdir = os.path.abspath(workdir)
    own_dir = workdir if runner.is_chief else os.path.join(workdir, "workers", f"worker-{runner.worker_index}")
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
    del initial

    # -- resume -------------------------------------------------------------------------
    checkpoint = runner.checkpoint()
    checkpoint_dir = os.path.join(workdir if runner.shares_checkpoints else own_dir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    losses: list[float] = []
    evals: list[dict[str, Any]] = []  # {"step", "loss", "accuracy"} at every eval point
    resumed_from = None
    if latest:
        state_path = os.path.join(workdir, STATE)
        state = _read_json(state_path) if os.path.exists(state_path) else {}
        if state.get("config") and state["config"] != _resume_fields(cfg):
            changed = sorted(k for k in RESUME_KEYS if state["config"].get(k) != getattr(cfg, k))
            raise UserError(
                f"{workdir} holds a checkpoint of a run with different {', '.join(changed)}; "
                "use a fresh --workdir or the same settings"
            )
        checkpoint.restore(latest).assert_existing_objects_matched()
        resumed_from = runner.completed_steps()
        losses = list(state.get("losses", []))[:resumed_from]
        evals = [e for e in state.get("evals", []) if e["step"] <= resumed_from]
    start = runner.completed_steps()

    # -- data ---------------------------------------------------------------------------
    def make_batches(batch_size: int, num_shards: int, shard_index: int) -> Any:
        return train_data.train_batches(
            train_files, spec, batch_size=batch_size, seed=cfg.seed, epoch_size=epoch_size,
            start_record=start * cfg.global_batch_size, num_shards=num_shards, shard_index=shard_index,
            augment=cfg.augment,
        )  # fmt: skip

    batches = runner.batches(make_batches)
    writer = tf.summary.create_file_writer(os.path.join(own_dir, "tensorboard"))
    plain = build_teacher(spec, cfg)  # the unsharded twin the eval loss is computed on
    best_path = os.path.join(own_dir, BEST_WEIGHTS)

    def best_eval() -> dict[str, Any] | None:
        return min(evals, key=lambda e: (e["loss"], e["step"])) if evals else None

    def check_eval(step: int) -> None:
        plain.set_weights(runner.plain_weights())
        scores = evaluate(plain, eval_files, spec, batch_size=cfg.global_batch_size, max_batches=cfg.eval_batches)
        evals.append({"step": step, "loss": scores["loss"], "accuracy": scores["accuracy"]})
        with writer.as_default():
            tf.summary.scalar("eval_loss", scores["loss"], step=step)
            tf.summary.scalar("eval_accuracy", scores["accuracy"], step=step)
        if best_eval()["step"] == step:
            tmp = f"{best_path}.tmp.npz"
            np.savez(tmp, *plain.get_weights())
            os.replace(tmp, best_path)

    checkpoint_seconds: list[float] = []

    def save_checkpoint(step: int) -> None:
        began_saving = time.perf_counter()
        # State first: a kill between the two leaves extra losses that the resume trims.
        if runner.is_chief:
            _write_json(
                os.path.join(workdir, STATE),
                {"step": step, "losses": losses, "evals": evals, "config": _resume_fields(cfg)},
            )
        if runner.is_chief or not runner.shares_checkpoints:
            manager.save(checkpoint_number=step)
        else:
            # The same save (every client writes its shards; the chief merges them), but only the
            # chief records it: a record written here first could name a checkpoint not yet merged.
            checkpoint.save_counter.assign_add(1)
            checkpoint.write(os.path.join(checkpoint_dir, f"ckpt-{step}"))  # the manager's naming
        checkpoint_seconds.append(time.perf_counter() - began_saving)

    # -- loop ---------------------------------------------------------------------------
    stopped_early = None  # the step at which patience ran out
    if patience_exhausted(cfg, evals, start):  # a resumed run that had already stopped
        stopped_early = start
    step_times: list[float] = []
    step_cpu: list[float] = []  # process CPU seconds (all threads): robust on a shared machine
    input_waits: list[float] = []  # time the step waited for its batch: > 0 means input-bound
    eval_seconds = 0.0
    began = time.time()
    bar = tqdm(total=steps, initial=start, desc=f"teacher {cfg.strategy}", disable=not progress, unit="step")
    for step in range(start, steps if stopped_early is None else start):
        waited = time.perf_counter()
        batch = next(batches)
        input_waits.append(time.perf_counter() - waited)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = runner.step(batch)
        step_times.append(time.perf_counter() - t0)
        step_cpu.append(time.process_time() - c0)
        if not np.isfinite(loss):
            raise UserError(f"teacher loss became {loss} at step {step + 1}; lower teacher.base_learning_rate")
        losses.append(loss)
        with writer.as_default():
            tf.summary.scalar("loss", loss, step=step + 1)
            tf.summary.scalar("learning_rate", float(schedule(step)), step=step + 1)
        bar.update(1)
        done = step + 1
        if done % eval_every == 0 or done == steps:
            t_eval = time.perf_counter()
            check_eval(done)
            eval_seconds += time.perf_counter() - t_eval
        best = best_eval()
        bar.set_postfix_str(f"loss {loss:.4f}" + (f", eval loss {evals[-1]['loss']:.3f} (best @{best['step']})" if best else ""))
        stop = patience_exhausted(cfg, evals, done)
        if done % max(1, cfg.checkpoint_every) == 0 or done == steps or stop:
            save_checkpoint(done)
        if stop:
            stopped_early = done
            break
    bar.close()
    wall = time.time() - began

    # -- the best weights: evaluate, export, report --------------------------------------
    best = best_eval()
    if best is None:  # resumed after the last step: nothing was trained in this process
        check_eval(steps)
        best = best_eval()
    with np.load(best_path) as stored:
        plain.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
    scores = evaluate(plain, eval_files, spec, batch_size=cfg.global_batch_size, max_batches=cfg.eval_batches)
    writer.flush()
    if export_dir and runner.is_chief:
        from trainer.models.export import export_saved_model

        export_saved_model(plain, spec, export_dir)

    steady = slice(3, None) if len(step_times) > 5 else slice(None)
    step_seconds = statistics.median(step_times[steady]) if step_times else None
    cpu_seconds = statistics.median(step_cpu[steady]) if step_cpu else None
    report: dict[str, Any] = {
        "strategy": cfg.strategy,
        "fc_layout": cfg.fc_layout if cfg.strategy == "hybrid" else None,
        "mesh": runner.mesh_description(),
        "device_type": setup.device_type,
        "devices": list(setup.devices),
        "worker_index": runner.worker_index,
        "is_chief": runner.is_chief,
        "steps": steps,  # planned (the schedule's length)
        "steps_trained": stopped_early or steps,
        "stopped_early": stopped_early is not None,
        "patience": cfg.patience,
        "steps_per_epoch": steps_per_epoch(cfg, epoch_size),
        "epochs": (stopped_early or steps) * cfg.global_batch_size / epoch_size,
        "start_step": start,
        "resumed_from_step": resumed_from,
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
        "losses": losses,
        "learning_rates": [float(v) for v in schedule(np.arange(steps)).numpy()],
        "eval": scores,  # of the exported (best) weights
        "final_eval_accuracy": scores["accuracy"],
        "best": best,
        "eval_history": evals,
        "memory_estimate": memory,
        "parameters": params,
        "timing": {
            "wall_seconds": wall,
            "steps_timed": len(step_times),
            "first_step_seconds": step_times[0] if step_times else None,  # includes tracing/compiling
            "median_step_seconds": step_seconds,
            "median_step_cpu_seconds": cpu_seconds,
            "examples_per_second": (cfg.global_batch_size / step_seconds) if step_seconds else None,
            "median_input_wait_seconds": statistics.median(input_waits[steady]) if input_waits else None,
            # Share of the steady loop spent waiting for input: ~0 when compute-bound.
            "input_wait_fraction": _wait_fraction(input_waits[steady], step_times[steady]),
            "checkpoints": len(checkpoint_seconds),
            "checkpoint_seconds": sum(checkpoint_seconds),
            "eval_seconds": eval_seconds,
        },
        "data": {"examples_dir": os.path.abspath(examples_dir), "train_events": epoch_size, "spec": spec.to_dict()},
        "variables": runner.variable_layouts(),
        "export_dir": os.path.abspath(export_dir) if export_dir and runner.is_chief else None,
        "pretrained_backbone": (
            {"path": os.path.abspath(init_backbone), "layers": pretrained_layers} if init_backbone else None
        ),
        "config": _config_dict(cfg),
    }
    from trainer.teacher.plots import plot_training_curve

    report["plots"] = {"training_curve": plot_training_curve(report, os.path.join(own_dir, CURVE))}
    _write_json(os.path.join(own_dir, files.TRAIN_REPORT), report)
    runner.finish()
    return report


def _wait_fraction(waits: list[float], steps: list[float]) -> float | None:
    total = sum(waits) + sum(steps)
    return sum(waits) / total if total > 0 else None


def _config_dict(cfg: TeacherConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)

"""Distillation: examples + teacher SavedModel -> distilled, pruned, QAT student and a baseline.

Three phases on the distillation loss (labelled + unlabelled events in augmented views, the
teacher's soft labels computed once per view: ``trainer.distill.kd``), and one baseline:

1. dense distillation for ``student.epochs`` -> "student float";
2. pruning fine-tune for ``student.prune_epochs`` from the dense weights (TFMOT polynomial
   schedule to ``student.target_sparsity``), then ``strip_pruning`` -> "student pruned";
3. quantization-aware fine-tune for ``student.qat_epochs`` that keeps the pruning masks
   (``trainer.distill.qat``) -> "student qat": float32 with int8 rounding simulated, the production
   student that goes to serving and that the int8 TFLite (its compiled twin) must agree with;
4. baseline "student scratch": the same student trained on hard labels only (labelled events,
   no teacher), with the same optimizer steps and augmentation as phase 1, so the report shows
   what the teacher buys (``kd_gain``), not what the augmentation does.

What it writes is ``contract.files.DistillerOutput``. The pipeline's ``Distiller`` calls it from
``trainer.distill.entry.run_fn``; tests and benchmarks call ``run_distillation`` directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from contract import files, layout
from contract.config import StudentConfig
from contract.errors import UserError
from contract.layout import EventSpec
from trainer.distill import kd, prune, qat
from trainer.evaluate import keras_predictor, predict_split, saved_model_predictor
from trainer.models.export import export_saved_model, load_spec
from trainer.models.student import build_student

CALIBRATION_BATCHES = 16  # batches that seed the QAT activation ranges


def _check_teacher(teacher_dir: str, spec: EventSpec) -> None:
    try:
        teacher_spec = load_spec(teacher_dir)
    except FileNotFoundError:
        raise UserError(
            f"{teacher_dir} is not an eventpipe export (no assets.extra/event_spec.json)"
        ) from None
    if teacher_spec != spec:
        raise UserError(
            f"the teacher at {teacher_dir} was trained for {teacher_spec.to_dict()} but the examples are "
            f"{spec.to_dict()}; retrain the teacher on this data"
        )


@dataclass
class _Inputs:
    """What the phases read: the examples' spec, its files and the teacher's soft labels."""

    spec: EventSpec
    labelled: list[str]
    unlabelled: list[str]
    eval_files: list[str]
    soft: np.ndarray
    train: Any  # the distillation stream: labelled + unlabelled events with the teacher's logits
    steps: int  # optimizer steps per epoch, every phase


@dataclass
class _Students:
    """The variants as the phases make them; ``production`` is the one that serves."""

    dense: Any
    history: dict[str, Any]
    pruned: Any = None
    pruned_layers: list[str] = field(default_factory=list)
    plan: Any = None
    sparsity: dict[str, Any] | None = None
    quantized: Any = None
    qat_sparsity: dict[str, Any] | None = None
    scratch: Any = None

    @property
    def production(self) -> Any:
        return self.quantized if self.quantized is not None else self.pruned


def run_distillation(
    examples_uri: str,
    teacher_dir: str,
    output_dir: str,
    cfg: StudentConfig,
    *,
    train_files: list[str] | None = None,
    eval_files: list[str] | None = None,
    log_dir: str | None = None,
) -> dict[str, Any]:
    """Distil (and prune) a student from ``teacher_dir`` on ``examples_uri``; returns the report.

    ``log_dir``: TensorBoard scalars of every phase (dense, pruning, qat, scratch), one run each.
    """
    started = time.time()
    out = files.DistillerOutput(output_dir)
    logs = _log_dirs(log_dir)
    inputs = _read_inputs(examples_uri, teacher_dir, cfg, train_files, eval_files)
    students = _dense_phase(inputs, cfg, out, logs)
    _pruning_phase(students, inputs, cfg, out, logs)
    _qat_phase(students, inputs, cfg, out, logs)
    export_saved_model(students.production, inputs.spec, out.serving)
    counts = _scratch_baseline(students, inputs, cfg, out, logs)
    report = _report(students, inputs, cfg, teacher_dir, counts)
    report["seconds"] = round(time.time() - started, 1)
    with open(out.report, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=float)
    return report


def _log_dirs(log_dir: str | None) -> Any:
    return lambda phase: os.path.join(log_dir, phase) if log_dir else None


def _read_inputs(
    examples_uri: str,
    teacher_dir: str,
    cfg: StudentConfig,
    train_files: list[str] | None,
    eval_files: list[str] | None,
) -> _Inputs:
    spec = EventSpec.load(examples_uri)
    _check_teacher(teacher_dir, spec)
    labelled = train_files if train_files is not None else layout.split_files(examples_uri, layout.TRAIN)
    unlabelled = layout.split_files(examples_uri, layout.UNLABELLED_SPLIT) if cfg.use_unlabelled else []
    eval_files = eval_files if eval_files is not None else layout.split_files(examples_uri, layout.EVAL)
    if not labelled:
        raise UserError(f"no training examples under {examples_uri}; run ingest first")
    both = sorted(labelled + unlabelled)
    if cfg.augment_views < 0:
        raise UserError(f"student.augment_views must be >= 0 (0: no augmentation), got {cfg.augment_views}")
    soft, soft_frames = kd.teacher_soft_labels(
        teacher_dir, both, spec, cfg.teacher_batch_size, views=cfg.augment_views, seed=cfg.seed
    )
    train = kd.distillation_dataset(
        both,
        soft,
        spec,
        cfg.batch_size,
        seed=cfg.seed,
        cache_bytes=cfg.cache_mb * 2**20,
        teacher_frames=soft_frames,
        views=cfg.augment_views,
    )
    return _Inputs(spec, labelled, unlabelled, eval_files, soft, train, epoch_steps(len(soft), cfg))


def epoch_steps(events: int, cfg: StudentConfig) -> int:
    """Optimizer steps per epoch of every phase: one pass over ``events``, but at least
    ``min_steps / epochs``, so a small set's pruning and QAT phases also train long enough."""
    return max(kd.steps_per_epoch(events, cfg.batch_size), math.ceil(cfg.min_steps / max(1, cfg.epochs)))


def _dense_phase(inputs: _Inputs, cfg: StudentConfig, out: files.DistillerOutput, logs: Any) -> _Students:
    """Phase 1: the dense student on the distillation loss -> ``student_float``."""
    keras.utils.set_random_seed(cfg.seed)
    student = build_student(inputs.spec, cfg)
    history = {
        "dense": kd.distill(
            student, inputs.train, steps=inputs.steps, epochs=cfg.epochs, cfg=cfg,
            learning_rate=cfg.learning_rate, desc="distil (dense)", log_dir=logs("dense"),
        )
    }  # fmt: skip
    os.makedirs(out.keras_dir, exist_ok=True)
    student.save(out.keras(files.STUDENT_FLOAT))
    export_saved_model(student, inputs.spec, out.float_savedmodel)
    return _Students(dense=student, history=history, pruned=student)


def _pruning_phase(
    students: _Students, inputs: _Inputs, cfg: StudentConfig, out: files.DistillerOutput, logs: Any
) -> None:
    """Phase 2: distillation with magnitude pruning from the dense weights -> ``student_pruned``."""
    if cfg.prune_epochs <= 0:
        return
    steps = inputs.steps
    students.plan = prune.plan_schedule(
        steps * cfg.prune_epochs, cfg.target_sparsity, cfg.pruning_begin_fraction, cfg.pruning_end_fraction
    )
    pruning = prune.apply_pruning(students.dense, students.plan)
    students.history["pruning"] = kd.distill(
        pruning, inputs.train, steps=steps, epochs=cfg.prune_epochs, cfg=cfg,
        learning_rate=cfg.prune_learning_rate, callbacks=prune.pruning_callbacks(), desc="distil (pruning)",
        log_dir=logs("pruning"),
    )  # fmt: skip
    students.pruned_layers = prune.pruned_layer_names(pruning)
    students.pruned = prune.strip(pruning)
    students.sparsity = prune.sparsity_report(students.pruned, students.pruned_layers)
    students.pruned.save(out.keras(files.STUDENT_PRUNED))


def _qat_phase(
    students: _Students, inputs: _Inputs, cfg: StudentConfig, out: files.DistillerOutput, logs: Any
) -> None:
    """Phase 3: quantization-aware distillation that keeps the pruning masks -> ``student_qat``."""
    if cfg.qat_epochs <= 0:
        return
    pruned = students.pruned
    if cfg.prune_epochs <= 0:
        pruned.save(out.keras(files.STUDENT_PRUNED))
    quantized = qat.apply_qat(pruned, preserve_sparsity=bool(students.pruned_layers))
    qat.pin_input_range(quantized)
    qat.calibrate_ranges(quantized, pruned, (frames for frames, _ in inputs.train.take(CALIBRATION_BATCHES)))
    students.history["qat"] = kd.distill(
        quantized, inputs.train, steps=inputs.steps, epochs=cfg.qat_epochs, cfg=cfg,
        learning_rate=cfg.qat_learning_rate, desc="distil (QAT)", log_dir=logs("qat"),
    )  # fmt: skip
    qat.pin_input_range(quantized)
    qat.save(quantized, out.qat_h5)
    qat.float_twin(quantized, inputs.spec, cfg).save(out.keras(files.STUDENT_QAT))
    if students.pruned_layers:
        after = qat.sparsity_of(quantized, students.pruned_layers)
        students.qat_sparsity = {"before": students.sparsity["total"], "after": after}
    students.quantized = quantized


def _scratch_baseline(
    students: _Students, inputs: _Inputs, cfg: StudentConfig, out: files.DistillerOutput, logs: Any
) -> dict[str, int]:
    """The same student on hard labels only, with the dense phase's optimizer steps;
    returns the event counts."""
    inputs.train = None  # one decoded cache at a time: the distillation stream's goes before the baseline's
    unlabelled = _count(inputs.unlabelled)
    labelled = len(inputs.soft) - unlabelled  # soft labels: [labelled + unlabelled events, views, classes]
    spec = inputs.spec
    hard = kd.distillation_dataset(
        sorted(inputs.labelled), np.zeros([labelled, spec.num_classes], np.float32), spec, cfg.batch_size,
        seed=cfg.seed, cache_bytes=cfg.cache_mb * 2**20, views=cfg.augment_views,
    )  # fmt: skip
    keras.utils.set_random_seed(cfg.seed)
    students.scratch = build_student(spec, cfg)
    students.history["scratch"] = kd.distill(
        students.scratch, hard, steps=inputs.steps, epochs=cfg.epochs,
        cfg=dataclasses.replace(cfg, alpha=1.0), learning_rate=cfg.learning_rate,
        desc="student from scratch (hard labels)", log_dir=logs("scratch"),
    )  # fmt: skip
    students.scratch.save(out.keras(files.STUDENT_SCRATCH))
    return {"labelled": labelled, "unlabelled": unlabelled}


def _report(
    students: _Students, inputs: _Inputs, cfg: StudentConfig, teacher_dir: str, counts: dict[str, int]
) -> dict[str, Any]:
    """distill_report.json: what ran, and every variant's eval accuracy and agreement with the teacher."""
    steps = inputs.steps
    report: dict[str, Any] = {
        "event_spec": inputs.spec.to_dict(),
        "teacher": teacher_dir,
        "examples": counts,
        "params": int(students.dense.count_params()),
        "steps_per_epoch": steps,
        "pruning": {"plan": students.plan.to_dict() if students.plan else None,
                    "sparsity": students.sparsity},
        "qat": (
            {"epochs": cfg.qat_epochs, "preserve_sparsity": bool(students.pruned_layers),
             "sparsity": students.qat_sparsity}
            if students.quantized is not None else None
        ),
        "scratch": {"labelled_events": counts["labelled"], "steps": steps * cfg.epochs},
        "history": students.history,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }  # fmt: skip
    if inputs.eval_files:
        report["eval"] = _evaluate(students, inputs, teacher_dir)
    return report


def _evaluate(students: _Students, inputs: _Inputs, teacher_dir: str) -> dict[str, Any]:
    predictors = {
        "teacher": saved_model_predictor(teacher_dir),
        files.STUDENT_FLOAT: keras_predictor(students.dense),
        files.STUDENT_SCRATCH: keras_predictor(students.scratch),
    }
    if students.pruned is not students.dense:
        predictors[files.STUDENT_PRUNED] = keras_predictor(students.pruned)
    if students.quantized is not None:
        predictors[files.STUDENT_QAT] = keras_predictor(students.quantized)
    preds = predict_split(inputs.eval_files, inputs.spec, predictors, desc="eval")
    evaluation: dict[str, Any] = {
        name: {"accuracy": p.accuracy(), "teacher_agreement": p.agreement(preds["teacher"])}
        for name, p in preds.items()
    }
    evaluation["events"] = int(len(preds["teacher"].labels))
    return evaluation


def _count(files: list[str]) -> int:
    if not files:
        return 0
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(0, lambda n, _: n + 1))

"""The Distiller's entry point: examples + teacher SavedModel -> distilled, pruned, QAT student.

Three phases on the distillation loss (labelled + unlabelled events, teacher soft labels
computed once), and one baseline:

1. dense distillation for ``student.epochs`` -> "student float";
2. pruning fine-tune for ``student.prune_epochs`` from the dense weights (TFMOT polynomial
   schedule to ``student.target_sparsity``), then ``strip_pruning`` -> "student pruned";
3. quantization-aware fine-tune for ``student.qat_epochs`` that keeps the pruning masks
   (``trainer.productionize.qat``) -> "student qat": float32 with int8 rounding simulated, the production
   student that goes to serving and that the int8 TFLite (its compiled twin) must agree with;
4. baseline "student scratch": the same student trained on hard labels only (labelled events,
   no teacher), with the same optimizer steps as phase 1, so the report shows what
   distillation buys (``kd_gain``).

Output directory (a TFX Model artifact)::

    Format-Serving/            the production student (QAT, else pruned, else dense), contract signatures
    student_float/             the dense student, same signatures
    keras/student_float.keras  tf_keras files (the TFLite converter starts from these)
    keras/student_pruned.keras
    keras/student_qat.keras    the QAT weights in the plain architecture (no rounding: float16's source)
    keras/student_qat.h5       the QAT model itself: wrappers, weights, quantization ranges (``qat_model``)
    keras/student_scratch.keras
    distill_report.json        params, sparsity, histories, eval accuracy/teacher agreement

The pipeline's ``Distiller`` is a stock TFX Trainer that calls ``run_fn`` with the teacher as
``base_model``; ``run_distillation`` is the same work without TFX (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from contract import files, layout
from contract.config import StudentConfig
from contract.errors import UserError
from contract.layout import EventSpec
from trainer.models.export import export_saved_model, load_spec
from trainer.models.student import build_student
from trainer.productionize import distill, prune, qat
from trainer.productionize.evaluate import keras_predictor, predict_split, saved_model_predictor
from trainer.teacher.module import config_from_fn_args

SERVING_DIR = files.SERVING_MODEL_DIR
FLOAT_DIR = "student_float"
KERAS_DIR = "keras"
FLOAT_KERAS = "student_float.keras"
PRUNED_KERAS = "student_pruned.keras"
QAT_KERAS = "student_qat.keras"
QAT_MODEL = "student_qat.h5"  # H5: the .keras format cannot reload TFMOT's input quantizer
SCRATCH_KERAS = "student_scratch.keras"
CALIBRATION_BATCHES = 16  # batches that seed the QAT activation ranges
REPORT_FILE = files.DISTILL_REPORT


def keras_path(model_dir: str, name: str) -> str:
    return os.path.join(model_dir, KERAS_DIR, name)


def qat_model(model_dir: str) -> Any:
    """The quantization-aware student of a Distiller output (None if QAT did not run).

    Loaded whole from H5 (about 1 s); rebuilding it with ``quantize_apply`` takes ~15 s.
    """

    path = keras_path(model_dir, QAT_MODEL)
    if not os.path.exists(path):
        return None
    return qat.load(path)


def _check_teacher(teacher_dir: str, spec: EventSpec) -> None:
    try:
        teacher_spec = load_spec(teacher_dir)
    except FileNotFoundError:
        raise UserError(f"{teacher_dir} is not an eventpipe export (no assets.extra/event_spec.json)") from None
    if teacher_spec != spec:
        raise UserError(
            f"the teacher at {teacher_dir} was trained for {teacher_spec.to_dict()} but the examples are "
            f"{spec.to_dict()}; retrain the teacher on this data"
        )


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

    def logs(phase: str) -> str | None:
        return os.path.join(log_dir, phase) if log_dir else None

    started = time.time()
    spec = EventSpec.load(examples_uri)
    _check_teacher(teacher_dir, spec)
    labelled = train_files if train_files is not None else layout.split_files(examples_uri, layout.TRAIN)
    unlabelled = layout.split_files(examples_uri, layout.UNLABELLED_SPLIT) if cfg.use_unlabelled else []
    eval_files = eval_files if eval_files is not None else layout.split_files(examples_uri, layout.EVAL)
    if not labelled:
        raise UserError(f"no training examples under {examples_uri}; run ingest first")
    files = sorted(labelled + unlabelled)

    soft, soft_frames = distill.teacher_soft_labels(teacher_dir, files, spec, cfg.teacher_batch_size)
    cache = cfg.cache_mb * 2**20
    train = distill.distillation_dataset(
        files, soft, spec, cfg.batch_size, seed=cfg.seed, cache_bytes=cache, teacher_frames=soft_frames
    )
    steps = max(distill.steps_per_epoch(len(soft), cfg.batch_size), math.ceil(cfg.min_steps / max(1, cfg.epochs)))

    keras.utils.set_random_seed(cfg.seed)
    student = build_student(spec, cfg)
    history = {
        "dense": distill.distill(
            student, train, steps=steps, epochs=cfg.epochs, cfg=cfg,
            learning_rate=cfg.learning_rate, desc="distil (dense)", log_dir=logs("dense"),
        )
    }  # fmt: skip
    os.makedirs(os.path.join(output_dir, KERAS_DIR), exist_ok=True)
    student.save(keras_path(output_dir, FLOAT_KERAS))
    export_saved_model(student, spec, os.path.join(output_dir, FLOAT_DIR))

    production = student
    sparsity: dict[str, Any] | None = None
    plan = None
    pruned_layers: list[str] = []
    if cfg.prune_epochs > 0:
        plan = prune.plan_schedule(
            steps * cfg.prune_epochs, cfg.target_sparsity, cfg.pruning_begin_fraction, cfg.pruning_end_fraction
        )
        pruning = prune.apply_pruning(student, plan)
        history["pruning"] = distill.distill(
            pruning, train, steps=steps, epochs=cfg.prune_epochs, cfg=cfg,
            learning_rate=cfg.prune_learning_rate, callbacks=prune.pruning_callbacks(), desc="distil (pruning)",
            log_dir=logs("pruning"),
        )  # fmt: skip
        pruned_layers = prune.pruned_layer_names(pruning)
        production = prune.strip(pruning)
        sparsity = prune.sparsity_report(production, pruned_layers)
        production.save(keras_path(output_dir, PRUNED_KERAS))
    pruned = production

    quantized = None
    qat_sparsity = None
    if cfg.qat_epochs > 0:

        if cfg.prune_epochs <= 0:
            production.save(keras_path(output_dir, PRUNED_KERAS))
        quantized = qat.apply_qat(production, preserve_sparsity=bool(pruned_layers))
        qat.pin_input_range(quantized)
        qat.calibrate_ranges(quantized, production, (frames for frames, _ in train.take(CALIBRATION_BATCHES)))
        history["qat"] = distill.distill(
            quantized, train, steps=steps, epochs=cfg.qat_epochs, cfg=cfg,
            learning_rate=cfg.qat_learning_rate, desc="distil (QAT)", log_dir=logs("qat"),
        )  # fmt: skip
        qat.pin_input_range(quantized)
        qat.save(quantized, keras_path(output_dir, QAT_MODEL))
        twin = qat.float_twin(quantized, spec, cfg)
        twin.save(keras_path(output_dir, QAT_KERAS))
        if pruned_layers:
            qat_sparsity = {"before": sparsity["total"], "after": qat.sparsity_of(quantized, pruned_layers)}
        production = quantized
    export_saved_model(production, spec, os.path.join(output_dir, SERVING_DIR))

    # Baseline: the same student on hard labels only, same optimizer steps as the dense phase.
    del train  # one decoded cache at a time: the distillation stream's goes before the baseline's
    unlabelled_count = _count(unlabelled)
    labelled_count = len(soft) - unlabelled_count  # soft labels cover labelled + unlabelled, once each
    hard = distill.distillation_dataset(
        sorted(labelled), np.zeros([labelled_count, spec.num_classes], np.float32), spec, cfg.batch_size,
        seed=cfg.seed, cache_bytes=cache,
    )
    keras.utils.set_random_seed(cfg.seed)
    scratch = build_student(spec, cfg)
    history["scratch"] = distill.distill(
        scratch, hard, steps=steps, epochs=cfg.epochs, cfg=dataclasses.replace(cfg, alpha=1.0),
        learning_rate=cfg.learning_rate, desc="student from scratch (hard labels)", log_dir=logs("scratch"),
    )  # fmt: skip
    scratch.save(keras_path(output_dir, SCRATCH_KERAS))

    report: dict[str, Any] = {
        "event_spec": spec.to_dict(),
        "teacher": teacher_dir,
        "examples": {"labelled": labelled_count, "unlabelled": unlabelled_count},
        "params": int(student.count_params()),
        "steps_per_epoch": steps,
        "pruning": {"plan": plan.to_dict() if plan else None, "sparsity": sparsity},
        "qat": (
            {"epochs": cfg.qat_epochs, "preserve_sparsity": bool(pruned_layers), "sparsity": qat_sparsity}
            if quantized is not None else None
        ),
        "scratch": {"labelled_events": labelled_count, "steps": steps * cfg.epochs},
        "history": history,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
    if eval_files:

        predictors = {"teacher": saved_model_predictor(teacher_dir), "student_float": keras_predictor(student),
                      "student_scratch": keras_predictor(scratch)}  # fmt: skip
        if pruned is not student:
            predictors["student_pruned"] = keras_predictor(pruned)
        if quantized is not None:
            predictors["student_qat"] = keras_predictor(production)
        preds = predict_split(eval_files, spec, predictors, desc="eval")
        report["eval"] = {
            name: {"accuracy": p.accuracy(), "teacher_agreement": p.agreement(preds["teacher"])}
            for name, p in preds.items()
        }
        report["eval"]["events"] = int(len(preds["teacher"].labels))
    report["seconds"] = round(time.time() - started, 1)
    with open(os.path.join(output_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=float)
    return report


def _count(files: list[str]) -> int:
    if not files:
        return 0
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(0, lambda n, _: n + 1))


def run_fn(fn_args: Any) -> None:
    """TFX Trainer entry: ``base_model`` is the teacher; ``custom_config["config"]`` the pipeline config."""
    if not fn_args.base_model:
        raise UserError("the student Trainer needs the teacher model as base_model")

    cfg = config_from_fn_args(fn_args).student
    examples_uri = layout.examples_dir_of(fn_args.train_files[0])
    output_dir = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))

    train = sorted(f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern))
    evals = sorted(f for pattern in fn_args.eval_files for f in tf.io.gfile.glob(pattern))
    run_distillation(
        examples_uri, fn_args.base_model, output_dir, cfg,  # base_model: the teacher's serving dir
        train_files=train, eval_files=evals,
        log_dir=os.path.join(fn_args.model_run_dir, "tensorboard") if fn_args.model_run_dir else None,
    )  # fmt: skip

"""The LiteConverter's work: student -> int8/float16 TFLite, parity gate, measurements, report.

Inputs are the Distiller's output directory (``contract.files.DistillerOutput``), the Examples
artifact and, optionally, the teacher export (to put the teacher beside its students in the
report). Output directory (a TFX artifact)::

    model.tflite               full-integer int8, metadata embedded: the on-device release
    model_float16.tflite       float16 weights (GPU delegates)
    metadata.json              the int8 model's embedded metadata as ``read_metadata`` reads it back
    lite_report.json           teacher / student / tflite sections, comparison, parity; the TFLite
                               runtime (name, version) of the parity check and of each latency
    variants.png               accuracy vs size vs latency of every variant
    confusion_int8.png         the released model's confusion matrix on the eval split

The report also holds a few eval events as the production student and the int8 model saw them
(``best_frame_examples``: class, probability, the frame each names, the true best frame), so a
page can show single predictions next to the aggregate numbers.

The int8 model is blessed for release only if its top-1 agrees with the float student it was
converted from on >= ``lite.min_agreement`` of the eval events.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from contract import files, layout
from contract.config import LiteConfig
from contract.errors import UserError
from contract.layout import EventSpec
from ondevice.metadata import read_metadata
from ondevice.runtime import lite_runtime
from trainer.distill import qat
from trainer.evaluate import (
    confidence_pick,
    keras_predictor,
    predict_split,
    saved_model_predictor,
    softmax,
    solo_frame_predictors,
    tflite_predictor,
)
from trainer.lite import measure, plots, tflite
from trainer.models.export import load_spec
from trainer.models.student import load_keras

METADATA_FILE = "metadata.json"
TRADEOFF_PNG = "variants.png"
CONFUSION_PNG = "confusion_int8.png"
TFLITE_FILES = {"int8": files.TFLITE_INT8, "float16": files.TFLITE_FLOAT16}
SOURCES = {
    files.STUDENT_QAT: "quantization-aware trained (sparsity-preserving) student",
    files.STUDENT_PRUNED: "pruned student",
    files.STUDENT_FLOAT: "student",
}


def _variant_entry(kind: str, path: str, keras_path: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"format": kind, "path": path, "bytes": measure.path_bytes(path)}
    if keras_path:
        entry["keras_path"] = keras_path
        entry["keras_bytes"] = measure.path_bytes(keras_path)
    return entry


def _measure_latencies(variants: dict[str, dict[str, Any]], cfg: LiteConfig) -> None:
    """Every served variant's latency in its own format (SavedModel or TFLite), side by side."""

    jobs: dict[str, tuple[str, str]] = {}
    for name, entry in variants.items():
        # Each job is a process that loads TensorFlow; the scratch and pruned students have the
        # production student's architecture (same latency), and Keras files are not served.
        if entry["format"] != "keras":
            jobs[f"{name}/{entry['format']}"] = (entry["format"], entry["path"])
    results = measure.latencies(
        jobs, runs=cfg.latency_runs, warmup=cfg.latency_warmup, rounds=cfg.latency_rounds
    )
    for job, result in results.items():
        name, kind = job.split("/")
        variants[name].setdefault("latency", {})[kind] = result


@dataclass
class _Student:
    """A Distiller output as the LiteConverter reads it."""

    out: files.DistillerOutput
    distill_report: dict[str, Any]
    reference: str  # the production variant: what serves, and what the TFLite models must agree with
    model: Any  # its plain Keras model (the QAT weights without rounding, if QAT ran)
    quantized: Any  # the QAT model, or None
    has_pruned: bool
    has_scratch: bool  # the hard-label baseline was trained


def run_lite_conversion(
    student_dir: str,
    examples_uri: str,
    output_dir: str,
    cfg: LiteConfig,
    *,
    teacher_dir: str | None = None,
) -> dict[str, Any]:
    """Convert, verify and measure; write the artifacts above; return the report."""
    started = time.time()
    spec = EventSpec.load(examples_uri)
    student = _read_student(files.DistillerOutput(student_dir), spec, examples_uri)
    train_files, eval_files = _splits(examples_uri)
    os.makedirs(output_dir, exist_ok=True)
    converted = _convert(student, spec, train_files, output_dir, cfg)
    predictors, float16_source = _predictors(student, converted, teacher_dir, spec)
    preds = predict_split(eval_files, spec, predictors, desc="eval variants")
    parity = _parity_gates(preds, train_files, spec, predictors, student.reference, float16_source, cfg)
    variants = _variants(student, converted, spec, output_dir, teacher_dir)
    if cfg.measure_latency:
        _measure_latencies(variants, cfg)
    _score(variants, preds, student, spec, float16_source)
    variants["int8"]["input_type"] = cfg.input_type
    variants["int8"]["parity"] = parity[0].to_dict()
    variants["float16"]["parity"] = {**parity[1].to_dict(), "reference": float16_source}
    report = _report(variants, preds, parity, student, float16_source, spec, output_dir)
    report["seconds"] = round(time.time() - started, 1)
    with open(os.path.join(output_dir, files.LITE_REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=float)
    return report


def _read_student(out: files.DistillerOutput, spec: EventSpec, examples_uri: str) -> _Student:
    if load_spec(out.serving) != spec:
        raise UserError(f"the student at {out.root} was distilled for other data than {examples_uri}")
    with open(out.report, encoding="utf-8") as f:
        distill_report = json.load(f)
    has_pruned = bool((distill_report.get("pruning") or {}).get("plan"))
    quantized = qat.trained_student(out)
    reference = (
        files.STUDENT_QAT
        if quantized is not None
        else files.STUDENT_PRUNED
        if has_pruned
        else files.STUDENT_FLOAT
    )
    model = load_keras(out.keras(reference))
    has_scratch = os.path.exists(out.keras(files.STUDENT_SCRATCH))
    return _Student(out, distill_report, reference, model, quantized, has_pruned, has_scratch)


def _splits(examples_uri: str) -> tuple[list[str], list[str]]:
    """(train + unlabelled files: calibration and more parity events, eval files)."""
    train_files = layout.split_files(examples_uri, layout.TRAIN) + layout.split_files(
        examples_uri, layout.UNLABELLED_SPLIT
    )
    eval_files = layout.split_files(examples_uri, layout.EVAL)
    if not eval_files:
        raise UserError(f"no eval split under {examples_uri}: the parity gate needs eval events")
    return train_files, eval_files


def _convert(
    student: _Student, spec: EventSpec, train_files: list[str], output_dir: str, cfg: LiteConfig
) -> dict[str, tflite.LiteModel]:
    """int8 from the QAT model (its recorded ranges), float16 from the plain float weights; both written."""
    representative = tflite.representative_events(train_files, spec, cfg.representative_examples, cfg.seed)
    sources = {
        "int8": student.quantized if student.quantized is not None else student.model,
        "float16": student.model,
    }
    converted = {}
    for variant, filename in tqdm(list(TFLITE_FILES.items()), desc="TFLite", leave=False, disable=None):
        converted[variant] = tflite.convert_variant(
            sources[variant], spec, variant, representative=representative, input_type=cfg.input_type,
            try_sparse=tflite.has_sparsity(student.model),
            extra_metadata={"source": SOURCES[student.reference]},
        )  # fmt: skip
        with open(os.path.join(output_dir, filename), "wb") as f:
            f.write(converted[variant].content)
    with open(os.path.join(output_dir, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(read_metadata(converted["int8"].content), f, indent=2, sort_keys=True)
    return converted


def _predictors(
    student: _Student, converted: dict[str, tflite.LiteModel], teacher_dir: str | None, spec: EventSpec
) -> tuple[dict[str, Any], str]:
    """Every variant's predictor, and the float model float16 is compared with."""
    out, reference = student.out, student.reference
    predictors = {}
    if teacher_dir:
        predictors["teacher"] = saved_model_predictor(teacher_dir)
        if spec.frames > 1:  # the per-frame-confidence baseline for best-frame accuracy
            predictors.update(solo_frame_predictors("teacher", predictors["teacher"], spec.frames))
    predictors[files.STUDENT_FLOAT] = keras_predictor(load_keras(out.keras(files.STUDENT_FLOAT)))
    if student.has_scratch:
        predictors[files.STUDENT_SCRATCH] = keras_predictor(load_keras(out.keras(files.STUDENT_SCRATCH)))
    if student.has_pruned:
        pruned = (
            student.model
            if reference == files.STUDENT_PRUNED
            else load_keras(out.keras(files.STUDENT_PRUNED))
        )
        predictors[files.STUDENT_PRUNED] = keras_predictor(pruned)
    float16_source = reference
    if student.quantized is not None:
        predictors[files.STUDENT_QAT] = keras_predictor(student.quantized)
        predictors["student_qat_unrounded"] = keras_predictor(student.model)
        float16_source = "student_qat_unrounded"
    predictors["int8"] = tflite_predictor(converted["int8"].content)
    predictors["float16"] = tflite_predictor(converted["float16"].content)
    return predictors, float16_source


def _variants(
    student: _Student,
    converted: dict[str, tflite.LiteModel],
    spec: EventSpec,
    output_dir: str,
    teacher_dir: str | None,
) -> dict[str, dict[str, Any]]:
    """Each variant's format, path, bytes, parameters and FLOPs per event (every student has the same)."""
    out = student.out
    size = {"params": measure.count_params(student.model),
            "flops_per_event": measure.keras_flops_per_event(student.model, spec.input_shape)}  # fmt: skip
    sparsity = student.distill_report.get("pruning", {}).get("sparsity")
    variants: dict[str, dict[str, Any]] = {}
    if teacher_dir:
        variants["teacher"] = _variant_entry("savedmodel", teacher_dir)
        variants["teacher"].update(
            params=measure.saved_model_params(teacher_dir),
            flops_per_event=measure.saved_model_flops_per_event(teacher_dir),
        )
    if student.has_scratch:
        variants[files.STUDENT_SCRATCH] = {
            **_variant_entry("keras", out.keras(files.STUDENT_SCRATCH)),
            **size,
        }
    variants[files.STUDENT_FLOAT] = {
        **_variant_entry("savedmodel", out.float_savedmodel, out.keras(files.STUDENT_FLOAT)),
        **size,
    }
    if student.has_pruned:
        pruned_keras = out.keras(files.STUDENT_PRUNED)
        if student.reference == files.STUDENT_PRUNED:
            variants[files.STUDENT_PRUNED] = _variant_entry("savedmodel", out.serving, pruned_keras)
        else:
            variants[files.STUDENT_PRUNED] = _variant_entry("keras", pruned_keras)
        variants[files.STUDENT_PRUNED].update(**size, sparsity=sparsity)
    if student.quantized is not None:
        variants[files.STUDENT_QAT] = {
            **_variant_entry("savedmodel", out.serving), **size, "sparsity": sparsity,
            "qat_sparsity": (student.distill_report.get("qat") or {}).get("sparsity"),
        }  # fmt: skip
    for variant, filename in TFLITE_FILES.items():
        variants[variant] = {
            **_variant_entry("tflite", os.path.join(output_dir, filename)),
            **size,
            **converted[variant].info(),
        }
    return variants


def _score(
    variants: dict[str, dict[str, Any]],
    preds: dict[str, Any],
    student: _Student,
    spec: EventSpec,
    float16_source: str,
) -> None:
    """Accuracy, per-class accuracy, agreement with the production student and best frame, per variant."""
    reference = student.reference
    several = spec.frames > 1  # single-frame events leave no frame to choose: no best-frame figure
    for name, entry in variants.items():
        entry["accuracy"] = preds[name].accuracy()
        entry["class_accuracy"] = class_accuracy(preds[name].confusion(spec.num_classes), spec.classes)
        entry["agreement_with_" + reference] = preds[name].agreement(preds[reference])
        # The frame each model names vs the one that shows the object best (simulator ground truth).
        entry["best_frame_accuracy"] = preds[name].best_frame_accuracy() if several else float("nan")
        entry["best_frame_events"] = preds[name].best_frame_events() if several else 0
    if student.quantized is not None:
        variants["int8"]["agreement_with_student_pruned"] = (
            preds["int8"].agreement(preds[files.STUDENT_PRUNED]) if student.has_pruned else None
        )
        variants["float16"]["agreement_with_" + float16_source] = preds["float16"].agreement(
            preds[float16_source]
        )


def _plots(
    variants: dict[str, dict[str, Any]], matrix: Any, spec: EventSpec, output_dir: str
) -> dict[str, str]:
    rows = [
        {"name": name, "accuracy": entry["accuracy"], "bytes": entry["bytes"]["raw"],
         "latency_ms": _p50(entry), "format": entry.get("format")}
        for name, entry in variants.items()
    ]  # fmt: skip
    return {
        "tradeoff": plots.tradeoff_plot(rows, os.path.join(output_dir, TRADEOFF_PNG),
                                        "Teacher and student variants"),
        "confusion": plots.confusion_plot(matrix, list(spec.classes), os.path.join(output_dir, CONFUSION_PNG),
                                          "int8 TFLite on the eval split"),
    }  # fmt: skip


def _report(
    variants: dict[str, dict[str, Any]],
    preds: dict[str, Any],
    parity: tuple[tflite.ParityResult, tflite.ParityResult],
    student: _Student,
    float16_source: str,
    spec: EventSpec,
    output_dir: str,
) -> dict[str, Any]:
    reference, distilled = student.reference, student.distill_report
    int8, float16 = parity
    blessed = int8.blessed and float16.blessed
    matrix = preds["int8"].confusion(spec.num_classes)
    plot_files = _plots(variants, matrix, spec, output_dir)
    config = distilled.get("config", {})
    return {
        "teacher": variants.get("teacher"),
        "student": {
            "float": variants[files.STUDENT_FLOAT],
            "pruned": variants.get(files.STUDENT_PRUNED),
            "qat": variants.get(files.STUDENT_QAT),
            "scratch": variants.get(files.STUDENT_SCRATCH),
            "production": reference,
            "distillation": {
                "examples": distilled.get("examples"),
                **{key: config.get(key) for key in ("temperature", "alpha", "epochs", "prune_epochs")},
                "pruning_plan": distilled.get("pruning", {}).get("plan"),
                "history": distilled.get("history"),
            },
        },
        "tflite": {
            "int8": variants["int8"],
            "float16": variants["float16"],
            "blessed": blessed,
            "parity": int8.to_dict(),
            "parity_float16": {**float16.to_dict(), "reference": float16_source},
            "reference": reference,
            # Parity and accuracy ran here; each variant's latency names its own (on-device) runtime.
            "runtime": lite_runtime().describe(),
            "release": os.path.join(output_dir, files.TFLITE_INT8),
            "confusion_matrix": {"classes": list(spec.classes), "matrix": matrix.tolist()},
        },
        "comparison": {
            **comparison(variants),
            **best_frame_baselines(
                preds[reference], spec.frames, confidence_pick(preds, "teacher", spec.frames)
            ),
        },
        "plots": plot_files,
        # What ReleaseGate reads: the int8 verdict, with float16's folded in.
        "parity": {
            **int8.to_dict(),
            "blessed": blessed,
            "float16": {**float16.to_dict(), "reference": float16_source},
            "reference": reference,
        },
        "eval_events": int(len(preds[reference].labels)),
        "best_frame_examples": best_frame_examples(preds, reference, spec.classes),
    }


def _p50(entry: dict[str, Any]) -> float | None:
    latency = entry.get("latency") or {}
    primary = latency.get(entry["format"])
    return primary["p50_ms"] if primary else None


def best_frame_baselines(preds: Any, frames: int, confidence_frames: Any = None) -> dict[str, Any]:
    """What naming a frame with a simple rule scores: always the first frame, one at random, and
    (``confidence_frames``) the frame that alone gives the teacher's surest right answer.

    Objects are often fully visible in several frames (ties go to the earliest), so "always the
    first frame" is the baseline a model's best-frame accuracy must be read against.
    """
    if preds.best_frames is None:
        return {}
    known = preds.best_frames >= 0
    if not known.any():
        return {}
    out = {
        "best_frame_first_frame_baseline": float((preds.best_frames[known] == 0).mean()),
        "best_frame_random_baseline": 1.0 / frames,
    }
    if confidence_frames is not None:
        out["best_frame_confidence_baseline"] = float(
            (confidence_frames[known] == preds.best_frames[known]).mean()
        )
    return out


def best_frame_examples(
    preds: dict[str, Any], reference: str, classes: tuple[str, ...], count: int = 6
) -> dict[str, Any]:
    """The first ``count`` labelled eval events (those with a known best frame first), as the
    production student (``reference``) and the int8 release classify them and which frame each
    names: the per-event view behind ``best_frame_accuracy``."""
    ref = preds[reference]
    if ref.event_ids is None or not len(ref.labels):
        return {"model": reference, "events": []}
    labelled = [i for i in range(len(ref.labels)) if ref.labels[i] >= 0]
    known = [i for i in labelled if ref.best_frames is not None and ref.best_frames[i] >= 0]
    chosen = (known + [i for i in labelled if i not in set(known)])[:count]
    probabilities = softmax(ref.logits)
    events = []
    for i in chosen:
        entry: dict[str, Any] = {
            "event_id": ref.event_ids[i],
            "label": classes[int(ref.labels[i])],
            "predicted": classes[int(ref.predicted[i])],
            "probability": float(probabilities[i].max()),
            "best_frame": None if ref.named_frames is None else int(ref.named_frames[i]),
            "true_best_frame": None
            if ref.best_frames is None or ref.best_frames[i] < 0
            else int(ref.best_frames[i]),
        }
        if ref.frame_weights is not None:
            entry["frame_weights"] = [round(float(w), 4) for w in ref.frame_weights[i]]
        int8 = preds.get("int8")
        if int8 is not None:
            entry["int8_predicted"] = classes[int(int8.predicted[i])]
            entry["int8_best_frame"] = None if int8.named_frames is None else int(int8.named_frames[i])
        events.append(entry)
    return {"model": reference, "events": events}


def class_accuracy(matrix: Any, classes: tuple[str, ...]) -> dict[str, float | None]:
    """Per-class accuracy (recall) from a ``[true, predicted]`` confusion matrix."""
    out: dict[str, float | None] = {}
    for i, name in enumerate(classes):
        total = int(matrix[i].sum())
        out[name] = float(matrix[i, i]) / total if total else None
    return out


def comparison(variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Student vs teacher ratios (absent entries: what was not measured)."""
    out: dict[str, Any] = {}
    teacher = variants.get("teacher")
    float_student = variants[files.STUDENT_FLOAT]
    int8 = variants["int8"]
    scratch = variants.get(files.STUDENT_SCRATCH)
    if scratch and scratch.get("accuracy") is not None:
        # What distillation buys, in accuracy points: the dense distilled student vs the same
        # student trained on hard labels with the same optimizer steps.
        out["kd_gain"] = 100.0 * (float_student["accuracy"] - scratch["accuracy"])
        if teacher:
            out["teacher_over_scratch_points"] = 100.0 * (teacher["accuracy"] - scratch["accuracy"])
    out["int8_bytes_over_float_student_savedmodel"] = int8["bytes"]["raw"] / float_student["bytes"]["raw"]
    if "keras_bytes" in float_student:
        out["int8_bytes_over_float_student_keras"] = (
            int8["bytes"]["raw"] / float_student["keras_bytes"]["raw"]
        )
    out["int8_gzipped_over_float_student_keras_gzipped"] = (
        int8["bytes"]["gzipped"] / float_student["keras_bytes"]["gzipped"]
        if "keras_bytes" in float_student
        else None
    )
    if teacher:
        out["teacher_params_over_student"] = teacher["params"] / max(float_student["params"], 1)
        out["teacher_flops_over_student"] = teacher["flops_per_event"] / max(
            float_student["flops_per_event"], 1
        )
        out["teacher_bytes_over_int8"] = teacher["bytes"]["raw"] / int8["bytes"]["raw"]
        out["int8_accuracy_over_teacher"] = (
            int8["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else None
        )
        t_lat, s_lat = _p50(teacher), _p50(int8)
        if t_lat and s_lat:
            out["int8_speedup_over_teacher_savedmodel"] = t_lat / s_lat
    return out


def _parity_gates(
    preds: dict[str, Any],
    train_files: list[str],
    spec: EventSpec,
    predictors: dict[str, Any],
    reference: str,
    float16_source: str,
    cfg: Any,
) -> tuple[tflite.ParityResult, tflite.ParityResult]:
    """Each TFLite model against the float model it was converted from, on the eval split and
    then the train and unlabelled events (agreement needs no label)."""
    pairs = {"int8": reference, "float16": float16_source}
    names = sorted({*pairs, *pairs.values()})
    more = (
        predict_split(train_files, spec, {n: predictors[n] for n in names}, desc="parity")
        if train_files
        else {}
    )

    def gate(variant: str) -> tflite.ParityResult:
        source = pairs[variant]
        reference_predicted = np.concatenate(
            [preds[source].predicted] + ([more[source].predicted] if more else [])
        )
        lite_predicted = np.concatenate(
            [preds[variant].predicted] + ([more[variant].predicted] if more else [])
        )
        return tflite.parity(
            reference_predicted, lite_predicted, cfg.min_agreement, len(preds[variant].predicted)
        )

    return gate("int8"), gate("float16")

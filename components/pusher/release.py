"""What the EventPusher decides and does, free of TFX so it is easy to call and test.

``reasons_not_to_push`` is the gate (stock Pusher semantics: the ModelBlessing's and the
InfraBlessing's ``blessed`` custom property, plus: the blessing must be about this very
model). ``push_all`` checks every source first and only then pushes, so a missing file never
leaves half a release behind; each destination is itself atomic (``serving.push``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError
from serving.push import SAVED_MODEL_PB, SAVED_MODEL_PBTXT, push_saved_model, push_tflite

PUSH_FILE = "push.json"
TEACHER_SUFFIX = "-teacher"
# The LiteConverter's file names (trainer.productionize), then the names the design first used.
INT8_CANDIDATES = ("model.tflite", "model_int8.tflite")
FLOAT16_CANDIDATES = ("model_float16.tflite", "model_fp16.tflite")
FLOAT16_RELEASE_NAME = "model_float16.tflite"
LITE_REPORTS = ("lite_report.json", "productionize_report.json")
VERDICT_FILE = "verdict.json"  # ReleaseGate's verdict in the blessing's uri


def reasons_not_to_push(
    *,
    blessed: int | None,
    infra_blessed: int | None,
    blessing_model_id: int | None,
    blessing_model_uri: str | None,
    model_id: int | None,
    model_uri: str,
) -> list[str]:
    """Every reason the model must not be pushed ([] means push). ``None``: property absent/input not given."""
    reasons = []
    if blessed != 1:
        reasons.append("the model is not blessed (ModelBlessing blessed != 1)")
    if infra_blessed is not None and infra_blessed != 1:
        reasons.append("the model did not pass serving validation (InfraBlessing blessed != 1)")
    if blessing_model_id and model_id and blessing_model_id != model_id:
        reasons.append(f"the blessing is for model artifact {blessing_model_id}, not {model_id}")
    elif blessing_model_uri and os.path.normpath(blessing_model_uri) != os.path.normpath(model_uri):
        reasons.append(f"the blessing is for {blessing_model_uri}, not {model_uri}")
    return reasons


def find_file(directory: str, candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _size(entry: dict[str, Any]) -> Any:
    size = entry.get("bytes")
    return size.get("raw", size) if isinstance(size, dict) else size


def lite_metrics(lite_dir: str) -> dict[str, Any]:
    """Accuracy, agreement and size of each TFLite variant from the LiteConverter's report."""
    for name in LITE_REPORTS:
        report = _read_json(os.path.join(lite_dir, name))
        if report is None:
            continue
        tflite = report.get("tflite", report)
        out: dict[str, Any] = {"report": name}
        for variant in ("int8", "float16"):
            entry = tflite.get(variant)
            if isinstance(entry, dict):
                picked = {k: v for k, v in entry.items() if k == "accuracy" or k.startswith("agreement")}
                picked["bytes"] = _size(entry)
                out[variant] = picked
        parity = tflite.get("parity") or report.get("parity")
        if isinstance(parity, dict):
            out["parity"] = parity
        return out
    return {}


def gate_metrics(blessing_dir: str) -> dict[str, Any]:
    """Teacher/student accuracy from ReleaseGate's verdict, if it wrote one."""
    verdict = _read_json(os.path.join(blessing_dir, VERDICT_FILE)) or {}
    keys = ("teacher_accuracy", "student_accuracy", "student_vs_teacher")
    return {k: verdict[k] for k in keys if k in verdict}


@dataclass
class PushPlan:
    """Everything one release pushes; ``check`` refuses before anything is written."""

    model_name: str
    student_dir: str
    serving_base: str
    teacher_dir: str | None = None
    lite_dir: str | None = None
    mobile_base: str = ""
    release: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if not self.serving_base:
            raise UserError("EventPusher needs serving_base (run.serving_base)")
        for what, path in (("student", self.student_dir), ("teacher", self.teacher_dir)):
            if path is not None and not (
                os.path.isfile(os.path.join(path, SAVED_MODEL_PB)) or os.path.isfile(os.path.join(path, SAVED_MODEL_PBTXT))
            ):
                raise UserError(f"the {what} model {path!r} is not a SavedModel; nothing pushed")
        if self.lite_dir is not None:
            if not self.mobile_base:
                raise UserError("EventPusher got TFLite models but no mobile_base (run.mobile_base)")
            if find_file(self.lite_dir, INT8_CANDIDATES) is None:
                raise UserError(f"no int8 TFLite model ({' or '.join(INT8_CANDIDATES)}) in {self.lite_dir}; nothing pushed")


def push_all(plan: PushPlan) -> list[dict[str, Any]]:
    """Push student, teacher and TFLite release; one summary per destination, in push order."""
    plan.check()
    pushed = []
    student = push_saved_model(plan.student_dir, plan.serving_base, plan.model_name)
    pushed.append({"role": "student", **student})
    if plan.teacher_dir is not None:
        teacher = push_saved_model(plan.teacher_dir, plan.serving_base, plan.model_name + TEACHER_SUFFIX)
        pushed.append({"role": "teacher", **teacher})
    if plan.lite_dir is not None:
        int8 = find_file(plan.lite_dir, INT8_CANDIDATES)
        float16 = find_file(plan.lite_dir, FLOAT16_CANDIDATES)
        release = {
            **plan.release,
            "serving": {"model_name": plan.model_name, "version": student["version"], "path": student["path"]},
        }
        lite = push_tflite(
            int8, plan.mobile_base, plan.model_name, release,
            variants={FLOAT16_RELEASE_NAME: float16} if float16 else None,
        )  # fmt: skip
        pushed.append({"role": "mobile", **lite})
    return pushed

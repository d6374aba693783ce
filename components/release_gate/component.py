"""ReleaseGate component: every blessing in one place, so nothing unblessed is ever pushed.

The stock Evaluators check the floors (both models: overall accuracy, and every class's
accuracy) and the student's regression against the last blessed student (TFMA change
threshold); the gate reads their validation results and repeats each failure as TFMA recorded
it (model, metric, slice, value, threshold). What TFMA cannot compare (the student against a
*different* model, the teacher of this run) is checked here, together with the TFLite parity
verdict and the serving validation. The output is a standard ModelBlessing for the student, so
``LatestBlessedModelStrategy`` finds it as the next run's baseline.
"""

import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.artifacts import LiteModels
from components.release_gate.gates import (
    LAST_BLESSED,
    MISSING,
    overall_accuracy,
    student_vs_teacher,
    tfma_failures,
)
from contract import files
from contract.config import GateConfig, section_from_json

VERDICT_FILE = files.VERDICT
LITE_REPORT = files.LITE_REPORT


def decide(
    *,
    teacher_accuracy: float,
    student_accuracy: float,
    failures: list,
    lite: "dict | None",
    infra_blessed: "bool | None",
    max_student_drop: float,
    teacher_blessed: bool = True,
    student_blessed: bool = True,
) -> dict:
    """The release verdict: ``failures`` (TFMA's, as ``components.release_gate.gates.tfma_failures`` reads
    them) plus the student-vs-teacher check, and a problem line for each; then parity, serving.

    ``teacher_blessed`` / ``student_blessed`` are the Evaluators' blessings: a refusal that
    names no failure is still a refusal."""

    failures = list(failures)
    for model, blessed in (("teacher", teacher_blessed), ("student", student_blessed)):
        if not blessed and not any(f["model"] == model for f in failures):
            failures.append({"model": model, "metric": None, "slice": None, "kind": MISSING, "value": None,
                             "threshold": None, "message": f"{model}: TFMA did not bless it and named no failure"})  # fmt: skip
    relative = student_vs_teacher(teacher_accuracy, student_accuracy, max_student_drop)
    if relative is not None:
        failures.append(relative)
    problems = [f["message"] for f in failures]
    if lite is not None:
        # int8 at the top level; float16 (when converted) under "float16"; the reference is the
        # float student they were converted from.
        reference = lite.get("reference", "the float student")
        checks = [("int8", lite)] + ([("float16", lite["float16"])] if lite.get("float16") else [])
        for variant, check in checks:
            if not check.get("agreement", 0) >= check.get("min_agreement", 1):
                problems.append(
                    f"{variant} TFLite: top-1 agreement with {check.get('reference', reference)} is "
                    f"{check.get('agreement', 0):.1%} of "
                    f"{check.get('events', 0)} events (train, unlabelled and eval), "
                    f"below lite.min_agreement {check.get('min_agreement', 0):.1%}"
                )
        if not lite.get("blessed", False) and not any("TFLite" in p for p in problems):
            problems.append("the TFLite models were not blessed by the LiteConverter")
    if infra_blessed is False:
        problems.append("the student did not load or answer correctly in the server (ServingValidator)")
    return {
        "blessed": not problems,
        "problems": problems,
        "failures": failures,
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "student_vs_teacher": student_accuracy / teacher_accuracy if teacher_accuracy else None,
        "lite": lite,
        "infra_blessed": infra_blessed,
    }


def release_verdict(
    teacher_evaluation_uri: str,
    student_evaluation_uri: str,
    *,
    lite: "dict | None",
    infra_blessed: "bool | None",
    max_student_drop: float,
    teacher_blessed: bool = True,
    student_blessed: bool = True,
) -> dict:
    """``decide`` on two Evaluator outputs: their accuracies and validation failures."""

    return decide(
        teacher_accuracy=overall_accuracy(teacher_evaluation_uri),
        student_accuracy=overall_accuracy(student_evaluation_uri),
        failures=tfma_failures(teacher_evaluation_uri, "teacher")
        + tfma_failures(student_evaluation_uri, "student", baseline=LAST_BLESSED),
        lite=lite,
        infra_blessed=infra_blessed,
        max_student_drop=max_student_drop,
        teacher_blessed=teacher_blessed,
        student_blessed=student_blessed,
    )


@component
def ReleaseGate(
    teacher_evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    teacher_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    student_evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    student_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    student_model: InputArtifact[standard_artifacts.Model],
    lite: InputArtifact[LiteModels],
    infra_blessing: InputArtifact[standard_artifacts.InfraBlessing],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    gates_config: Parameter[str],
) -> None:
    """Blesses the student for release, or records every reason it is held back.

    ``gates_config``: the ``gates`` config section (``contract.config.section_json``)."""
    gates = section_from_json(GateConfig, gates_config)
    with open(os.path.join(lite.uri, LITE_REPORT), encoding="utf-8") as f:
        lite_report = json.load(f)
    result = release_verdict(
        teacher_evaluation.uri,
        student_evaluation.uri,
        lite=lite_report.get("parity", lite_report),
        infra_blessed=bool(infra_blessing.get_int_custom_property("blessed")),
        max_student_drop=gates.max_student_drop,
        teacher_blessed=bool(teacher_blessing.get_int_custom_property("blessed")),
        student_blessed=bool(student_blessing.get_int_custom_property("blessed")),
    )
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, VERDICT_FILE), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    # The properties LatestBlessedModelStrategy and the Pusher read.
    blessing.set_int_custom_property("blessed", int(result["blessed"]))
    blessing.set_string_custom_property("current_model", student_model.uri)
    blessing.set_int_custom_property("current_model_id", student_model.id)
    with open(os.path.join(blessing.uri, "BLESSED" if result["blessed"] else "NOT_BLESSED"), "w"):
        pass

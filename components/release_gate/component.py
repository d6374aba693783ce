"""ReleaseGate component: every blessing in one place, so nothing unblessed is ever pushed.

The stock Evaluators check the absolute floor (both models) and the regression against the
last blessed student (TFMA change threshold). What TFMA cannot compare — the student against
a *different* model, the teacher of this run — is checked here, together with the TFLite
parity verdict and the serving validation. The output is a standard ModelBlessing for the
student, so ``LatestBlessedModelStrategy`` finds it as the next run's baseline.
"""

import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.artifacts import LiteModels

VERDICT_FILE = "verdict.json"
LITE_REPORT = "lite_report.json"


def decide(
    *,
    teacher_accuracy: float,
    student_accuracy: float,
    teacher_blessed: bool,
    student_blessed: bool,
    lite: "dict | None",
    infra_blessed: "bool | None",
    max_student_drop: float,
    min_accuracy: float,
) -> dict:
    """The release verdict with a reason for each failed check."""
    problems = []
    if not teacher_blessed:
        problems.append(f"teacher accuracy {teacher_accuracy:.3f} is below the floor {min_accuracy:.3f} (TFMA)")
    if not student_blessed:
        problems.append(
            f"student accuracy {student_accuracy:.3f} failed TFMA: below the floor {min_accuracy:.3f} "
            "or regressed against the last blessed student"
        )
    needed = (1.0 - max_student_drop) * teacher_accuracy
    if student_accuracy < needed:
        problems.append(
            f"student accuracy {student_accuracy:.3f} < (1 - {max_student_drop}) x teacher {teacher_accuracy:.3f} = {needed:.3f}"
        )
    if lite is not None and not lite.get("blessed", False):
        problems.append(
            f"int8 TFLite agrees with the float student on {lite.get('agreement', 0):.1%} of eval events, "
            f"below {lite.get('min_agreement', 0):.1%}"
        )
    if infra_blessed is False:
        problems.append("the student did not load or answer correctly in the server (ServingValidator)")
    return {
        "blessed": not problems,
        "problems": problems,
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "student_vs_teacher": student_accuracy / teacher_accuracy if teacher_accuracy else None,
        "lite": lite,
        "infra_blessed": infra_blessed,
    }


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
    max_student_drop: Parameter[float] = 0.05,
    min_accuracy: Parameter[float] = 0.5,
) -> None:
    """Blesses the student for release, or records every reason it is held back."""
    from pipeline.evaluation import overall_accuracy

    with open(os.path.join(lite.uri, LITE_REPORT), encoding="utf-8") as f:
        lite_report = json.load(f)
    result = decide(
        teacher_accuracy=overall_accuracy(teacher_evaluation.uri),
        student_accuracy=overall_accuracy(student_evaluation.uri),
        teacher_blessed=bool(teacher_blessing.get_int_custom_property("blessed")),
        student_blessed=bool(student_blessing.get_int_custom_property("blessed")),
        lite=lite_report.get("parity", lite_report),
        infra_blessed=bool(infra_blessing.get_int_custom_property("blessed")),
        max_student_drop=max_student_drop,
        min_accuracy=min_accuracy,
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

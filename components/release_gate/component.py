"""ReleaseGate component: every blessing in one place, so nothing unblessed is ever pushed.

It applies ``components.gates.release.release_verdict`` to the two Evaluators' outputs, the
LiteConverter's parity verdict and the ServingValidator's blessing, and writes the verdict. The
output is a standard ModelBlessing for the student, so ``LatestBlessedModelStrategy`` finds it
as the next run's baseline.
"""

import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.artifacts import LiteModels
from components.gates.release import release_verdict
from contract import files
from contract.config import GateConfig, section_from_json


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
    with open(os.path.join(lite.uri, files.LITE_REPORT), encoding="utf-8") as f:
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
    with open(os.path.join(blessing.uri, files.VERDICT), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    # The properties LatestBlessedModelStrategy and the Pusher read.
    blessing.set_int_custom_property("blessed", int(result["blessed"]))
    blessing.set_string_custom_property("current_model", student_model.uri)
    blessing.set_int_custom_property("current_model_id", student_model.id)
    with open(os.path.join(blessing.uri, "BLESSED" if result["blessed"] else "NOT_BLESSED"), "w"):
        pass

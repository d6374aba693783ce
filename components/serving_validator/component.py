"""ServingValidator component: the stock InfraValidator needs Docker; this one runs OUR server.

It serves the candidate SavedModel in ``eventpipe serve`` (a subprocess on free loopback
ports), sends real REST and gRPC predict requests built from eval events and compares the
answers with the model run in-process (``validation.validate_in_server``). The output is a
standard InfraBlessing (custom property ``blessed`` 0/1, ``INFRA_BLESSED`` or
``INFRA_NOT_BLESSED`` marker file, as the stock InfraValidator writes) plus
``validation.json``: requests sent, mismatches, latency, and every reason for a refusal.
"""

import json
import logging
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components.serving_validator.validation import validate_in_server
from contract import files
from contract.config import ServingConfig, section_from_json

BLESSED_FILE = "INFRA_BLESSED"
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"


@component
def ServingValidator(
    model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[standard_artifacts.Examples],
    blessing: OutputArtifact[standard_artifacts.InfraBlessing],
    serving_config: Parameter[str],
) -> None:
    """Blesses ``model`` only if it loads in the server and answers exactly as in-process.

    ``serving_config``: the ``serving`` config section (``contract.config.section_json``)."""
    serving = section_from_json(ServingConfig, serving_config)
    model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
    report = validate_in_server(
        model_dir,
        examples.uri,
        model_name=serving.model_name,
        num_events=serving.validation_events,
        tolerance=serving.validation_tolerance,
        timeout_s=serving.validation_timeout_seconds,
    )
    report["model_artifact"] = {"uri": model.uri, "id": model.id}
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, files.VALIDATION), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    with open(os.path.join(blessing.uri, BLESSED_FILE if report["blessed"] else NOT_BLESSED_FILE), "w"):
        pass
    # The properties the stock Pusher and ReleaseGate read (InfraValidator's names).
    blessing.set_int_custom_property("blessed", int(report["blessed"]))
    blessing.set_int_custom_property("has_model", 0)
    if report["blessed"]:
        logging.info("ServingValidator: blessed after %d requests", report["requests"]["total"])
    else:
        logging.warning("ServingValidator: NOT blessed: %s", "; ".join(report["problems"]))

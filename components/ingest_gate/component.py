"""IngestGate component: ``components.gates.ingest``'s verdict -> a blessing artifact.

It never raises on a refusal: the blessing (``blessed`` 0 and every reason in ``files.VERDICT``)
is published, the pipeline's ``Cond`` skips everything after it, and the CLI reads the verdict
to stop the run with those reasons."""

import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.artifacts import IngestBlessing, Quarantine
from components.event_example_gen.beam_graph import SUMMARY_FILE
from components.gates.ingest import ingest_verdict, read_anomalies
from contract import files
from contract.config import DataConfig, section_from_json


@component
def IngestGate(
    quarantine: InputArtifact[Quarantine],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    blessing: OutputArtifact[IngestBlessing],
    data_config: Parameter[str],
) -> None:
    """Blesses the ingested data or refuses it, naming every reason and the quarantine path.

    ``data_config``: the ``data`` config section (``contract.config.section_json``)."""
    data = section_from_json(DataConfig, data_config)
    with open(os.path.join(quarantine.uri, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    result = ingest_verdict(summary, read_anomalies(anomalies.uri), data.max_reject_rate, quarantine.uri)
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, files.VERDICT), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    blessing.set_int_custom_property("blessed", int(result["blessed"]))


__all__ = ["IngestGate"]

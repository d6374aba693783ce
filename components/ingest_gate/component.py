"""IngestGate component: rejection rate + ExampleValidator anomalies -> blessing or a clear stop."""


import json
import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.artifacts import IngestBlessing, Quarantine
from components.event_example_gen.beam_graph import SUMMARY_FILE
from contract import files
from contract.config import DataConfig, section_from_json
from contract.errors import GateFailed

VERDICT_FILE = files.VERDICT


def read_anomalies(anomalies_uri: str) -> "list[dict]":
    """ExampleValidator's anomalies per split as plain dicts (split, feature, short and long text)."""

    found = []
    if not os.path.isdir(anomalies_uri):
        return found
    for entry in sorted(os.listdir(anomalies_uri)):
        path = os.path.join(anomalies_uri, entry, "SchemaDiff.pb")
        if not entry.startswith("Split-") or not os.path.exists(path):
            continue
        proto = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        for feature, info in sorted(proto.anomaly_info.items()):
            found.append(
                {
                    "split": entry[len("Split-") :],
                    "feature": feature,
                    "short": info.short_description,
                    "detail": info.description,
                }
            )
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            found.append({"split": entry[len("Split-") :], "feature": "<dataset>", "short": info.short_description, "detail": info.description})
    return found


def verdict(summary: dict, anomalies: list[dict], max_reject_rate: float, quarantine_dir: str) -> dict:
    """The gate decision and the reasons a user needs to fix, as a dict."""
    read = max(summary["read"], 1)
    rate = summary["rejected"] / read
    problems = []
    if summary["read"] == 0:
        problems.append("no events were read; check --data")
    if rate > max_reject_rate:
        reasons = ", ".join(f"{k}={v}" for k, v in summary["rejected_by_reason"].items())
        problems.append(
            f"{summary['rejected']} of {summary['read']} events rejected ({rate:.1%} > --max-reject-rate "
            f"{max_reject_rate:.1%}): {reasons}; see {quarantine_dir} for each event and its reason"
        )
    labelled = summary["splits"].get("train", 0) + summary["splits"].get("eval", 0)
    if summary["read"] and (not summary["splits"].get("train") or not summary["splits"].get("eval")):
        problems.append(
            f"need labelled events in both train and eval splits, got {summary['splits']} "
            f"({labelled} labelled); add labelled events or adjust data.eval_percent"
        )
    for a in anomalies:
        problems.append(f"TFDV anomaly in split {a['split']}, feature {a['feature']!r}: {a['detail'] or a['short']}")
    return {"blessed": not problems, "reject_rate": rate, "problems": problems, "anomalies": anomalies}


@component
def IngestGate(
    quarantine: InputArtifact[Quarantine],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    blessing: OutputArtifact[IngestBlessing],
    data_config: Parameter[str],
) -> None:
    """Blesses the ingested data or fails the run, naming every reason and the quarantine path.

    ``data_config``: the ``data`` config section (``contract.config.section_json``)."""
    data = section_from_json(DataConfig, data_config)
    with open(os.path.join(quarantine.uri, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    result = verdict(summary, read_anomalies(anomalies.uri), data.max_reject_rate, quarantine.uri)
    os.makedirs(blessing.uri, exist_ok=True)
    with open(os.path.join(blessing.uri, VERDICT_FILE), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    blessing.set_int_custom_property("blessed", int(result["blessed"]))
    if not result["blessed"]:
        raise GateFailed("ingest gate: " + "; ".join(result["problems"]))


__all__ = ["IngestGate", "read_anomalies", "verdict"]

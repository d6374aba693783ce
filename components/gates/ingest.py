"""The ingest decision: the rejection rate and ExampleValidator's anomalies -> blessed, or every
reason a user must fix (with the quarantine path that lists each rejected event)."""

from __future__ import annotations

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2


def read_anomalies(anomalies_uri: str) -> list[dict]:
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
            found.append(
                {
                    "split": entry[len("Split-") :],
                    "feature": "<dataset>",
                    "short": info.short_description,
                    "detail": info.description,
                }
            )
    return found


def ingest_verdict(summary: dict, anomalies: list[dict], max_reject_rate: float, quarantine_dir: str) -> dict:
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
        problems.append(
            f"TFDV anomaly in split {a['split']}, feature {a['feature']!r}: {a['detail'] or a['short']}"
        )
    return {"blessed": not problems, "reject_rate": rate, "problems": problems, "anomalies": anomalies}

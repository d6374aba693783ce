"""report.json: one machine-readable record of a run, grown section by section."""

from __future__ import annotations

import json
import os
from typing import Any


def update(path: str, sections: dict[str, Any]) -> dict[str, Any]:
    """Merge ``sections`` into the report at ``path`` (created if missing) and return it."""
    report: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    report.update(sections)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return report


def ingest_section(summary: dict[str, Any], quarantine_uri: str, examples_uri: str, anomalies: list) -> dict[str, Any]:
    keys = ("read", "accepted", "rejected", "unlabelled", "rejected_by_reason", "ignored_files", "ignored_by_reason",
            "ignored_examples")  # fmt: skip
    events = {k: summary[k] for k in keys if k in summary}
    events["splits"] = summary["splits"]
    events["labels"] = summary["labels"]
    return {
        "events": events,
        "quarantine": quarantine_uri,
        "examples": examples_uri,
        "anomalies": anomalies,
    }

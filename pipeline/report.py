"""report.json: one machine-readable record of a run, grown section by section."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from contract import layout


def provenance() -> dict[str, Any]:
    """When and from what code a run's report was written: UTC time, eventpipe's version, and the
    git commit of the checkout it ran from (with ``+dirty`` for uncommitted changes), if any."""
    from importlib import metadata

    from contract.source import REPO_ROOT

    try:
        version = metadata.version("eventpipe")
    except metadata.PackageNotFoundError:
        version = None
    commit = None
    if os.path.exists(os.path.join(REPO_ROOT, ".git")):  # a directory, or a file in a worktree
        git = ["git", "-C", REPO_ROOT]
        try:
            head = subprocess.run(
                [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
            )
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
            if head.returncode == 0:
                state = (
                    "+dirty" if dirty.stdout.strip() else "" if dirty.returncode == 0 else "+unknown-state"
                )
                commit = head.stdout.strip() + state
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "eventpipe_version": version,
        "commit": commit,
    }


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


def ingest_section(
    summary: dict[str, Any], quarantine_uri: str, examples_uri: str, anomalies: list
) -> dict[str, Any]:
    keys = ("read", "accepted", "rejected", "unlabelled", "rejected_by_reason", "ignored_files",
            "ignored_by_reason", "ignored_examples")  # fmt: skip
    events = {k: summary[k] for k in keys if k in summary}
    events["splits"] = summary["splits"]
    events["labels"] = summary["labels"]
    return {
        "events": events,
        "quarantine": quarantine_uri,
        "examples": examples_uri,
        "anomalies": anomalies,
    }


def statistics_glance(statistics_uri: str, top: int = 3) -> dict[str, Any]:
    """StatisticsGen's TFDV statistics, per split and feature, small enough to read at a glance:
    examples, missing values, numeric min/mean/max, and for strings the unique count and the most
    frequent values (encoded frames are bytes: their count only)."""
    import glob

    import tensorflow_data_validation as tfdv  # deferred: heavy, and only runs that ingested need it

    glance: dict[str, Any] = {}
    for path in sorted(glob.glob(os.path.join(statistics_uri, "Split-*", "FeatureStats.pb"))):
        split = os.path.basename(os.path.dirname(path)).removeprefix("Split-")
        datasets = tfdv.load_stats_binary(path).datasets
        if not datasets:
            continue
        dataset, features = datasets[0], []
        for feature in dataset.features:
            kind = feature.WhichOneof("stats")
            if kind not in ("num_stats", "string_stats", "bytes_stats"):
                continue
            stats = getattr(feature, kind)
            name = ".".join(feature.path.step)
            row: dict[str, Any] = {"feature": name, "missing": int(stats.common_stats.num_missing)}
            if kind == "num_stats":
                row.update(min=stats.min, mean=stats.mean, max=stats.max)
            else:
                row["unique"] = int(stats.unique)
                if name != layout.FRAMES and kind == "string_stats":  # encoded frames: their count only
                    row["top"] = [(v.value, int(v.frequency)) for v in stats.top_values[:top]]
            features.append(row)
        glance[split] = {"examples": int(dataset.num_examples), "features": features}
    return glance

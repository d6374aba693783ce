"""The ingest Beam graph of EventExampleGen (no TFX import: Beam workers load only this).

Two passes keep memory flat at any scale (the DirectRunner materialises whatever crosses
a stage boundary, so frame bytes must not): pass 1 reads and checks every event, streams
rejections to the quarantine and check-passed events to staging TFRecords, and emits a
small metadata record per event. Duplicate ids, the vocabulary and the summary are
computed from the metadata alone. Pass 2 streams the staging records back, drops all but
the first occurrence of a duplicated id, assigns label ids and writes the splits.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import apache_beam as beam
from tensorflow.core.example import example_pb2
from tqdm import tqdm

from components.event_example_gen import checks, sources
from contract import layout
from contract.config import DataConfig

SUMMARY_FILE = "summary.json"
IGNORED_FILE = "ignored_inputs.jsonl"  # one {"path", "reason"} per file under the data root not read
QUARANTINE_PREFIX = "quarantine"
_SOURCE = "_eventpipe_source"  # staging-only features, stripped before the final write
_RAW = "_eventpipe_raw"


class Meta(NamedTuple):
    """What pass 1 keeps per event for the cross-event decisions: small, frame-free."""

    reason: str | None  # None: passed the checks
    event_id: str = ""
    source: str = ""
    order: tuple[str, int] = ("", 0)
    label: str | None = None
    frames: int = 0
    height: int = 0
    width: int = 0
    channels: int = 0


def split_of(event_id: str, labelled: bool, eval_percent: int) -> str:
    """Deterministic split: unlabelled apart; labelled by a hash of the event id."""
    if not labelled:
        return layout.UNLABELLED_SPLIT
    bucket = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big") % 100
    return layout.EVAL if bucket < eval_percent else layout.TRAIN


def _quarantine_line(event: sources.RawEvent, rejected: checks.Rejected) -> str:
    entry: dict[str, Any] = {
        "reason": rejected.reason,
        "detail": rejected.detail,
        "source": event.source,
        "event_id": rejected.event_id,
    }
    if event.record is not None and not event.inline_frames:
        entry["record"] = event.record
    else:
        entry["raw"] = event.raw  # the line as read, or the serialized tf.Example in base64
    return json.dumps(entry, sort_keys=True)


# Progress bars of ingests running in this process, by token. A DoFn finds its bar only when it
# runs in the process that started the ingest (Beam's in-process DirectRunner, the default); on
# worker processes or remote runners there is no terminal to draw on, and no bar.
_BARS: dict[str, tqdm] = {}
_BARS_LOCK = threading.Lock()


@contextmanager
def ingest_progress() -> Iterator[str]:
    """A bar of events read and checked (on a terminal only); yields the token DoFns report to."""
    token = uuid.uuid4().hex
    bar = tqdm(
        desc="ingest: events read", unit="ev", leave=False, disable=not sys.stderr.isatty(), mininterval=0.5
    )
    with _BARS_LOCK:
        _BARS[token] = bar
    try:
        yield token
    finally:
        with _BARS_LOCK:
            _BARS.pop(token, None)
        bar.close()


def _tick(token: str) -> None:
    with _BARS_LOCK:
        bar = _BARS.get(token)
        if bar is not None:
            bar.update(1)


class _ReadAndCheck(beam.DoFn):
    """Pass 1 for one input unit: outputs 'meta' (small dicts), 'rejected', main = staging examples."""

    def __init__(self, root: str, rules: checks.Rules, progress_token: str = "") -> None:
        self._root, self._rules, self._token = root, rules, progress_token

    def process(self, unit: sources.Unit):
        limit = sources.max_record_bytes(self._rules.max_frame_bytes, self._rules.max_frames)
        for event in sources.read_unit(unit, self._root, limit):
            if self._token:
                _tick(self._token)
            result = checks.check(event, self._rules)
            if isinstance(result, checks.Rejected):
                yield beam.pvalue.TaggedOutput("meta", Meta(result.reason))
                yield beam.pvalue.TaggedOutput("rejected", _quarantine_line(event, result))
                continue
            yield beam.pvalue.TaggedOutput(
                "meta",
                Meta(None, result.event_id, event.source, event.order, result.label,
                     len(result.frames), result.height, result.width, result.channels),
            )  # fmt: skip
            example = layout.make_example(
                frames=result.frames,
                height=result.height,
                width=result.width,
                channels=result.channels,
                label=layout.UNLABELLED,
                label_name=result.label or "",
                event_id=result.event_id,
                device_id=result.device_id,
                timestamp=result.timestamp,
                best_frame=layout.UNKNOWN_FRAME if result.best_frame is None else result.best_frame,
            )
            feats = example.features.feature
            feats[_SOURCE].bytes_list.value.append(event.source.encode())
            feats[_RAW].bytes_list.value.append(_staged_raw(event).encode())
            yield example.SerializeToString()


def _staged_raw(event: sources.RawEvent) -> str:
    """The original record for a possible duplicate_id quarantine entry, without doubling frames.

    Inline ``{"b64"}`` frames are already in the staged example; such a line is re-read from its
    manifest in the rare case it turns out to be a duplicate ("" here).
    """
    if event.inline_frames:  # TFRecord input: the record names its frames, the bytes are staged
        return json.dumps(event.record)
    if any(isinstance(f, dict) for f in event.record.get("frames", [])):
        return ""
    return event.raw


class _Finalize(beam.DoFn):
    """Pass 2: keep the first occurrence of each id, set the label id, route to a split."""

    def __init__(self, eval_percent: int, root: str) -> None:
        self._eval_percent, self._root = eval_percent, root

    def process(self, serialized: bytes, kept_source: dict[str, str], classes: list[str]):
        example = example_pb2.Example.FromString(serialized)
        feats = example.features.feature
        event_id = feats[layout.EVENT_ID].bytes_list.value[0].decode()
        source = feats.pop(_SOURCE).bytes_list.value[0].decode()
        raw = feats.pop(_RAW).bytes_list.value[0].decode()
        if event_id in kept_source and kept_source[event_id] != source:
            raw = raw or sources.reread_line(self._root, source) or "null"
            yield beam.pvalue.TaggedOutput(
                "rejected",
                json.dumps(
                    {
                        "reason": checks.DUPLICATE_ID,
                        "detail": f"{source}: event_id {event_id!r} was already accepted from "
                        f"{kept_source[event_id]}; event ids must be unique",
                        "source": source,
                        "event_id": event_id,
                        "record": json.loads(raw),
                    },
                    sort_keys=True,
                ),
            )
            return
        label = feats[layout.LABEL_NAME].bytes_list.value[0].decode()
        if label:
            feats[layout.LABEL].int64_list.value[0] = classes.index(label)
        yield beam.pvalue.TaggedOutput(split_of(event_id, bool(label), self._eval_percent), example)


class _KeepFirst(beam.CombineFn):
    """Per event id: how many check-passed events carry it, and the first one's metadata."""

    def create_accumulator(self):
        return (0, None)

    def add_input(self, acc, meta):
        count, first = acc
        return count + 1, meta if first is None or meta.order < first.order else first

    def merge_accumulators(self, accs):
        count, first = 0, None
        for c, m in accs:
            count += c
            if m is not None and (first is None or m.order < first.order):
                first = m
        return count, first

    def extract_output(self, acc):
        return acc


class _Summarize(beam.CombineFn):
    """Counts by reason/split/label and the geometry histogram, from metadata only."""

    def __init__(self, eval_percent: int) -> None:
        self._eval_percent = eval_percent

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, acc, item):
        kind, value = item
        if kind == "rejected":
            acc[("rejected", value)] += 1
        else:  # ("kept", (count, meta)) — one per distinct check-passed id
            count, meta = value
            acc["read_ok"] += count
            if count > 1:
                acc[("rejected", checks.DUPLICATE_ID)] += count - 1
            split = split_of(meta.event_id, meta.label is not None, self._eval_percent)
            acc[("split", split)] += 1
            if meta.label is not None:
                acc[("label", meta.label)] += 1
            acc[("frames", meta.frames)] += 1
            acc[("size", (meta.height, meta.width))] += 1
            acc[("channels", meta.channels)] += 1
        return acc

    def merge_accumulators(self, accs):
        total = collections.Counter()
        for a in accs:
            total.update(a)
        return total

    def extract_output(self, acc):
        def group(name):
            return {k[1]: v for k, v in acc.items() if isinstance(k, tuple) and k[0] == name}

        rejected = group("rejected")
        splits = group("split")
        return {
            "read": acc["read_ok"] + sum(v for r, v in rejected.items() if r != checks.DUPLICATE_ID),
            "accepted": sum(splits.values()),
            "rejected": sum(rejected.values()),
            "unlabelled": splits.get(layout.UNLABELLED_SPLIT, 0),
            "rejected_by_reason": dict(sorted(rejected.items())),
            "splits": dict(sorted(splits.items())),
            "labels": dict(sorted(group("label").items())),
            "frames_histogram": {str(k): v for k, v in sorted(group("frames").items())},
            "size_histogram": {f"{h}x{w}": v for (h, w), v in sorted(group("size").items())},
            "channels_histogram": {str(k): v for k, v in sorted(group("channels").items())},
        }


def build_ingest(
    p: beam.Pipeline,
    root: str,
    data: DataConfig,
    examples_uri: str,
    quarantine_uri: str,
    progress_token: str = "",
) -> None:
    """Add the whole ingest graph to ``p``; outputs land under the two artifact URIs.

    ``progress_token``: from ``ingest_progress``, for the bar of events read."""
    rules = _rules(root, data)
    units = _survey(root, quarantine_uri)
    staging = os.path.join(examples_uri, "_staging")
    checked, staged = _check_and_stage(p, units, root, rules, progress_token, quarantine_uri, staging)
    per_id = _first_per_id(checked.meta)
    kept_source = _kept_sources(per_id)
    classes = _vocabulary(p, per_id, data)
    _write_summary(checked.meta, per_id, classes, data, quarantine_uri)
    _finalize_splits(staged, kept_source, classes, data, rules, examples_uri, quarantine_uri)


def _rules(root: str, data: DataConfig) -> checks.Rules:
    return checks.Rules(
        data_root=os.path.realpath(root if os.path.isdir(root) else os.path.dirname(os.path.abspath(root))),
        max_frames=data.max_frames,
        classes=tuple(data.classes),
        max_frame_bytes=data.max_frame_bytes,
        max_frame_pixels=data.max_frame_pixels,
    )


def _survey(root: str, quarantine_uri: str) -> list[sources.Unit]:
    """The input units; the files under the root that are not read are listed in the quarantine
    before the graph runs, so the summary can count them."""
    found = sources.survey(root)
    os.makedirs(quarantine_uri, exist_ok=True)
    with open(os.path.join(quarantine_uri, IGNORED_FILE), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"path": path, "reason": reason}) + "\n" for path, reason in found.ignored)
    return found.units


def _check_and_stage(
    p: beam.Pipeline,
    units: list[sources.Unit],
    root: str,
    rules: checks.Rules,
    progress_token: str,
    quarantine_uri: str,
    staging: str,
) -> tuple[beam.pvalue.DoOutputsTuple, beam.PCollection]:
    """Pass 1: rejections go to the quarantine and check-passed events to staging, so no frame
    bytes cross a stage boundary; the tagged outputs and the staged file names."""
    checked = (
        p
        | "Units" >> beam.Create(units, reshuffle=True)
        | "ReadAndCheck"
        >> beam.ParDo(_ReadAndCheck(root, rules, progress_token)).with_outputs("meta", "rejected", main="ok")
    )
    checked.rejected | "QuarantineChecks" >> beam.io.WriteToText(
        os.path.join(quarantine_uri, f"{QUARANTINE_PREFIX}-checks"), file_name_suffix=".jsonl"
    )
    staged = checked.ok | "Stage" >> beam.io.WriteToTFRecord(os.path.join(staging, "events"))
    return checked, staged


def _first_per_id(meta: beam.PCollection) -> beam.PCollection:
    """Per check-passed event id: (how many carry it, the first one's metadata)."""
    return (
        meta
        | "Passed" >> beam.Filter(lambda m: m.reason is None)
        | "ById" >> beam.Map(lambda m: (m.event_id, m))
        | "KeepFirst" >> beam.CombinePerKey(_KeepFirst())
    )


def _kept_sources(per_id: beam.PCollection) -> beam.PCollection:
    """Per duplicated id, the source of the occurrence kept: pass 2 quarantines every other one."""
    return (
        per_id
        | "Duplicated" >> beam.Filter(lambda kv: kv[1][0] > 1)
        | "KeptSource" >> beam.Map(lambda kv: (kv[0], kv[1][1].source))
    )


def _vocabulary(p: beam.Pipeline, per_id: beam.PCollection, data: DataConfig) -> beam.PCollection:
    """The configured classes, else the sorted labels of the kept events (one list)."""
    if data.classes:
        return p | "ConfiguredClasses" >> beam.Create([list(data.classes)])
    return (
        per_id
        | "Labels" >> beam.FlatMap(lambda kv: [kv[1][1].label] if kv[1][1].label is not None else [])
        | "DistinctLabels" >> beam.Distinct()
        | "Vocabulary" >> beam.combiners.ToList()
        | "Sorted" >> beam.Map(sorted)
    )


def _write_summary(
    meta: beam.PCollection,
    per_id: beam.PCollection,
    classes: beam.PCollection,
    data: DataConfig,
    quarantine_uri: str,
) -> None:
    """The summary, computed from the metadata alone, with the vocabulary, as one JSON file."""
    summary_items = (
        meta | "RejectedReasons" >> beam.FlatMap(lambda m: [("rejected", m.reason)] if m.reason else []),
        per_id | "KeptItems" >> beam.Map(lambda kv: ("kept", kv[1])),
    ) | "SummaryItems" >> beam.Flatten()
    summary = summary_items | "Summarize" >> beam.CombineGlobally(_Summarize(data.eval_percent))
    (
        (summary, classes)
        | "SummaryAndClasses" >> beam.Flatten()
        | "Key" >> beam.Map(lambda x: ("classes", x) if isinstance(x, list) else ("summary", x))
        | "Together" >> beam.combiners.ToDict()
        | "AsJson" >> beam.Map(lambda d: json.dumps({**d["summary"], "classes": d["classes"]}, indent=2))
        | "WriteSummary"
        >> beam.io.WriteToText(
            os.path.join(quarantine_uri, SUMMARY_FILE), num_shards=1, shard_name_template=""
        )
    )


def _finalize_splits(
    staged: beam.PCollection,
    kept_source: beam.PCollection,
    classes: beam.PCollection,
    data: DataConfig,
    rules: checks.Rules,
    examples_uri: str,
    quarantine_uri: str,
) -> None:
    """Pass 2: the staged events back, later duplicates to the quarantine, the rest to their splits."""
    final = (
        staged
        | "ReadStaged" >> beam.io.ReadAllFromTFRecord()
        | "Finalize"
        >> beam.ParDo(
            _Finalize(data.eval_percent, rules.data_root),
            kept_source=beam.pvalue.AsDict(kept_source),
            classes=beam.pvalue.AsSingleton(classes),
        ).with_outputs("rejected", *layout.SPLITS)
    )
    final.rejected | "QuarantineDuplicates" >> beam.io.WriteToText(
        os.path.join(quarantine_uri, f"{QUARANTINE_PREFIX}-duplicates"), file_name_suffix=".jsonl"
    )
    for split in layout.SPLITS:
        (
            final[split]
            | f"Serialize[{split}]" >> beam.Map(lambda e: e.SerializeToString())
            | f"Write[{split}]"
            >> beam.io.WriteToTFRecord(
                os.path.join(layout.split_dir(examples_uri, split), "data_tfrecord"),
                file_name_suffix=".gz",
            )
        )


def event_spec_from(summary: dict[str, Any], data: DataConfig) -> layout.EventSpec:
    """Model geometry and vocabulary: configured values win, else what the data says."""
    sizes = {tuple(int(v) for v in k.split("x")): n for k, n in summary["size_histogram"].items()}
    # Most common size; ties go to the larger frame so nothing is downsampled needlessly.
    common = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))[0] if sizes else (0, 0)
    frames = max((int(k) for k in summary["frames_histogram"]), default=0)
    channels = max((int(k) for k in summary["channels_histogram"]), default=0)
    height, width = data.height or common[0], data.width or common[1]
    if not (data.height or data.width):
        height, width = fit_pixel_budget(height, width, data.max_input_pixels)
    return layout.EventSpec(
        classes=tuple(data.classes or summary["classes"]),
        frames=data.frames or frames,
        height=height,
        width=width,
        channels=data.channels or channels,
    )


def fit_pixel_budget(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """The largest size of ``height``'s aspect ratio within ``max_pixels`` (unchanged if it fits).

    Cameras send VGA and larger; training at source resolution would need tens of GB. The model
    input is chosen once here and every decode (training, export signatures, serving) resizes
    to it.
    """
    if max_pixels < 1:
        raise ValueError(f"data.max_input_pixels must be >= 1, got {max_pixels}")
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    new_h, new_w = max(1, int(height * scale)), max(1, int(width * scale))
    while new_h * new_w > max_pixels:  # float rounding
        new_h, new_w = max(1, new_h - (new_h >= new_w)), max(1, new_w - (new_w > new_h))
    return new_h, new_w


def finish_outputs(examples_uri: str, quarantine_uri: str, data: DataConfig) -> dict[str, Any]:
    """After the Beam run: drop empty splits and staging, write event_spec.json, return the summary."""
    shutil.rmtree(os.path.join(examples_uri, "_staging"), ignore_errors=True)
    with open(os.path.join(quarantine_uri, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(quarantine_uri, IGNORED_FILE), encoding="utf-8") as f:
        ignored = [json.loads(line) for line in f]
    summary["ignored_files"] = len(ignored)
    summary["ignored_by_reason"] = dict(
        collections.Counter(entry["reason"] for entry in ignored).most_common()
    )
    summary["ignored_examples"] = [entry["path"] for entry in ignored[:10]]
    with open(os.path.join(quarantine_uri, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    for split in layout.SPLITS:
        if not summary["splits"].get(split):
            shutil.rmtree(layout.split_dir(examples_uri, split), ignore_errors=True)
    if summary["accepted"] and summary["classes"]:
        event_spec_from(summary, data).save(examples_uri)
    return summary

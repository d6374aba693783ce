"""On-device runner: classify events with a released ``.tflite`` file and time it.

This is what an app does on a phone or camera: an on-device interpreter (LiteRT, else
``tflite_runtime``; ``ondevice.runtime.lite_runtime`` chooses, and the summary names it) and
PIL only, labels and normalization from the model's own standard TFLite metadata, one event
at a time. It must never import
TensorFlow, directly or through any module it imports (a test runs it where importing
TensorFlow fails).

Events come from JSON Lines manifests (``*.jsonl`` under ``--data``, or one file), one
event per line: ``{"event_id": ..., "label": ..., "frames": ["rel/path.png", {"b64": ...}]}``
with frame paths relative to the manifest; or, where ``--data`` holds no manifest, from an
image-folder tree ``<label>/<event_id>/<frame>.png`` (``ondevice.folders``, as ingest reads it).
TFRecords need TensorFlow's Example parser, which a device does not have: they are refused
with what to pass instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from contract.errors import UserError
from ondevice.folders import FolderEvent, folder_tree
from ondevice.frames import MAX_FRAME_PIXELS, FrameDecodeError
from ondevice.manifest import read_manifest
from ondevice.tflite_model import LiteEventModel, LiteModelError


@dataclass
class Event:
    event_id: str
    label: str | None
    frames: list[bytes]
    source: str


TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")


def iter_events(data: str, stream=None) -> Iterator[Event]:
    """Events of the manifests under ``data``, or of its image-folder tree (entries outside the
    tree's layout are counted on ``stream`` with their reasons). The form is decided, and a
    refusal raised, before the first event is read."""
    if os.path.isfile(data):
        if data.endswith(TFRECORD_SUFFIXES):
            raise UserError(_TFRECORDS.format(data=data))
        return iter_manifest_events(data)
    if not os.path.isdir(data):
        raise UserError(f"--data {data!r} does not exist")
    names = [os.path.basename(f) for f in _visible_files(data)]
    if any(f.endswith(".jsonl") for f in names):
        return iter_manifest_events(data)
    if any(f.endswith(TFRECORD_SUFFIXES) for f in names):
        raise UserError(_TFRECORDS.format(data=data))
    events, ignored = folder_tree(data)
    if not events:
        raise UserError(
            f"--data {data!r} holds no events: expected *.jsonl manifests or an image-folder tree "
            "<label>/<event_id>/<frame>.png"
        )
    if ignored:
        reasons = Counter(reason for _path, reason in ignored)
        print(f"ignored {len(ignored)} entries of the folder tree: "
              + "; ".join(f"{n} {reason}" for reason, n in reasons.items()),
              file=stream or sys.stdout)  # fmt: skip
    return _folder_events(data, events)


def _visible_files(root: str) -> list[str]:
    """Files under ``root``, hidden ones (and hidden directories) left out, as ingest leaves them."""
    found = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        found += [os.path.join(d, f) for f in sorted(fs) if not f.startswith(".")]
    return found


_TFRECORDS = (
    "--data {data!r} holds TFRecords, which need TensorFlow's Example parser (not on a device): "
    "pass JSON Lines manifests or an image-folder tree <label>/<event_id>/<frame>.png"
)


def _folder_events(root: str, events: list[FolderEvent]) -> Iterator[Event]:
    for event in events:
        where = os.path.relpath(event.path, root)
        frames = []
        for path in event.frame_paths():
            try:
                with open(path, "rb") as f:
                    frames.append(f.read())
            except OSError as e:
                raise UserError(
                    f"{where}: cannot read frame {os.path.basename(path)!r}: {e.strerror}"
                ) from None
        yield Event(event_id=event.event_id, label=event.label, frames=frames, source=where)


def iter_manifest_events(data: str) -> Iterator[Event]:
    """Events of every ``*.jsonl`` manifest under ``data`` (sorted), or of one manifest file."""
    if os.path.isfile(data):
        manifests = [data]
    elif os.path.isdir(data):
        manifests = sorted(f for f in _visible_files(data) if f.endswith(".jsonl"))
    else:
        raise UserError(f"--data {data!r} does not exist")
    if not manifests:
        raise UserError(f"--data {data!r} holds no *.jsonl manifests")
    for manifest in manifests:
        base = os.path.dirname(os.path.abspath(manifest))
        for line in read_manifest(manifest):
            where = f"{manifest}:{line.number}"
            if line.record is None:
                raise UserError(f"{where}: {line.error}")
            if not isinstance(line.record.get("frames"), list):
                raise UserError(f"{where}: expected an object with a 'frames' list")
            yield Event(
                event_id=str(line.record.get("event_id", where)),
                label=line.record.get("label"),
                frames=[_read_frame(fr, base, where) for fr in line.record["frames"]],
                source=where,
            )


def _read_frame(frame: object, base: str, where: str) -> bytes:
    if isinstance(frame, dict) and isinstance(frame.get("b64"), str):
        try:
            return base64.b64decode(frame["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"{where}: a frame's 'b64' is not valid base64") from None
    if isinstance(frame, str):
        path = os.path.join(base, frame)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise UserError(f"{where}: cannot read frame {frame!r}: {e.strerror}") from None
    raise UserError(f'{where}: a frame must be a relative path or {{"b64": ...}}, got {frame!r}')


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


@dataclass
class _Tally:
    """Timings and counts of the run so far, in one place for the summary and the closing lines."""

    decode_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"events": 0, "labelled": 0, "correct": 0, "failed": 0}
    )


def run_device(
    model_path: str,
    data: str,
    *,
    limit: int = 0,
    threads: int = 0,
    warmup: int = 3,
    show: int = 20,
    out_path: str = "",
    stream=None,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
) -> dict:
    """Classify the events under ``data``; print predictions and latency; return the summary."""

    stream = stream or sys.stdout
    model = _load_model(model_path, threads, max_frame_pixels)
    events = iter_events(data, stream)  # the input form, or why it is refused, before --out is opened
    _print_model(model, model_path, stream)
    tally = _classify_events(model, events, limit, warmup, show, out_path, stream)
    if tally.counts["events"] == 0:
        raise UserError(f"no event under {data!r} could be classified")
    summary = _summarize(model_path, model, tally)
    _print_totals(summary, model, tally.counts, show, stream)
    return summary


def _load_model(model_path: str, threads: int, max_frame_pixels: int) -> LiteEventModel:
    try:
        return LiteEventModel(model_path, num_threads=threads or None, max_frame_pixels=max_frame_pixels)
    except LiteModelError as e:
        raise UserError(str(e)) from e


def _print_model(model: LiteEventModel, model_path: str, stream) -> None:
    print(
        f"model {model_path}: {model.size_bytes / 1024:.1f} KiB, input {model.input_dtype} "
        f"[B,{','.join(map(str, model.input_shape))}], labels {list(model.labels)}, runtime {model.runtime}",
        file=stream,
    )


def _classify_events(
    model: LiteEventModel, events: Iterator[Event], limit: int, warmup: int, show: int, out_path: str, stream
) -> _Tally:
    """Events in order up to ``limit``; the ``--out`` file is closed whatever stops the run."""
    tally = _Tally()
    out = open(out_path, "w", encoding="utf-8") if out_path else None  # noqa: SIM115  (closed below)
    try:
        for i, event in enumerate(events):
            if limit and i >= limit:
                break
            result = _classify(model, event, tally, warmup, stream)
            if result is not None:
                _record_prediction(model, event, result, tally, show, out, stream)
    finally:
        if out is not None:
            out.close()
    return tally


def _classify(model: LiteEventModel, event: Event, tally: _Tally, warmup: int, stream) -> dict | None:
    """The model's outputs, or None for an event whose frames do not decode (skipped, not fatal).

    Decode and inference are timed apart; the warm-up runs before the first event's timed call only."""
    t0 = time.perf_counter()
    try:
        decoded = model.decode([event.frames])
    except FrameDecodeError as e:
        tally.counts["failed"] += 1
        print(f"{event.event_id}: skipped, {e}", file=stream)
        return None
    t1 = time.perf_counter()
    if tally.counts["events"] == 0:
        for _ in range(max(0, warmup)):  # first invocations allocate; keep them out of the numbers
            model.predict_decoded(decoded)
    t2 = time.perf_counter()
    result = model.predict_decoded(decoded)
    t3 = time.perf_counter()
    tally.decode_s.append(t1 - t0)
    tally.infer_s.append(t3 - t2)
    tally.total_s.append((t1 - t0) + (t3 - t2))
    tally.counts["events"] += 1
    return result


def _record_prediction(
    model: LiteEventModel, event: Event, result: dict, tally: _Tally, show: int, out, stream
) -> None:
    """Only labelled events count towards accuracy; only the first ``show`` are printed, every one
    goes to ``--out``."""
    name = result["class_name"][0].decode("utf-8")
    prob = float(result["probabilities"][0][result["class_id"][0]])
    best = int(result["best_frame"][0])
    verdict = ""
    if event.label is not None:
        tally.counts["labelled"] += 1
        ok = event.label == name
        tally.counts["correct"] += int(ok)
        verdict = f"  label={event.label} {'ok' if ok else 'WRONG'}"
    if tally.counts["events"] <= show:
        print(f"{event.event_id}: {name} p={prob:.3f} best_frame={best}{verdict}", file=stream)
    if out is not None:
        out.write(
            json.dumps(
                {
                    "event_id": event.event_id,
                    "class_name": name,
                    "probability": prob,
                    "best_frame": best,
                    "probabilities": [float(p) for p in result["probabilities"][0]],
                    "label": event.label,
                    "runtime": str(model.runtime),
                }
            )
            + "\n"
        )


def _summarize(model_path: str, model: LiteEventModel, tally: _Tally) -> dict:
    counts = tally.counts
    return {
        "model": model_path,
        "runtime": model.runtime.describe(),
        **counts,
        "accuracy": counts["correct"] / counts["labelled"] if counts["labelled"] else None,
        "latency_ms": {
            "inference_p50": percentile_ms(tally.infer_s, 50),
            "inference_p99": percentile_ms(tally.infer_s, 99),
            "decode_p50": percentile_ms(tally.decode_s, 50),
            "end_to_end_p50": percentile_ms(tally.total_s, 50),
            "end_to_end_p99": percentile_ms(tally.total_s, 99),
        },
    }


def _print_totals(summary: dict, model: LiteEventModel, counts: dict[str, int], show: int, stream) -> None:
    if counts["events"] > show:
        print(f"... {counts['events'] - show} more", file=stream)
    lat = summary["latency_ms"]
    acc = (
        f", accuracy {summary['accuracy']:.3f} on the {counts['labelled']} labelled events of --data "
        "(all of them: events the model was trained on count too; give held-out events to measure it)"
        if counts["labelled"]
        else ""
    )
    print(
        f"{counts['events']} events classified ({counts['failed']} skipped){acc} with {model.runtime}\n"
        f"latency per event: inference p50 {lat['inference_p50']:.2f} ms p99 {lat['inference_p99']:.2f} ms; "
        f"decode+inference p50 {lat['end_to_end_p50']:.2f} ms p99 {lat['end_to_end_p99']:.2f} ms",
        file=stream,
    )

"""Discovery and reading of the three accepted input forms.

Everything becomes a ``RawEvent``: a JSON-like record exactly as the user wrote it
(or as synthesised from a folder / tf.Example), its position for deterministic
duplicate resolution, and the raw text kept for the quarantine. Reading never
judges: a line that is not JSON is still a ``RawEvent`` (with ``record=None``) so
that the checks can reject it with a reason instead of it being lost.

Input forms under the data root (auto-detected, in this order):
1. ``*.jsonl`` manifests anywhere below the root (frame paths relative to the manifest).
2. ``*.tfrecord`` / ``*.tfrecord.gz`` files of tf.Examples in the project layout.
3. an image-folder tree ``<label>/<event_id>/<frame>.png`` or ``<label>/<name>.jpg``.

Symlinked directories are walked (each real directory once). Every file that is not read
is listed by ``survey`` with the reason (another form took precedence, not an input format,
outside the folder layout, hidden), and ingest reports them: nothing is skipped silently.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
from tensorflow.core.example import example_pb2

from contract import layout
from contract.config import DataConfig
from contract.errors import UserError
from ondevice.folders import IMAGE_EXTENSIONS, FolderEvent, folder_tree
from ondevice.manifest import read_manifest


def max_record_bytes(max_frame_bytes: int, max_frames: int) -> int:
    """Largest acceptable TFRecord record: max_frames frames of max_frame_bytes, plus metadata."""
    return max_frame_bytes * max_frames + (1 << 20)


DEFAULT_MAX_RECORD_BYTES = max_record_bytes(DataConfig.max_frame_bytes, DataConfig.max_frames)
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")


@dataclass
class RawEvent:
    source: str  # "<file relative to root>:<line or index>" — shown to users, and the dedup order
    record: dict[str, Any] | None  # None: the line could not be parsed into an object
    raw: str  # original text (JSON line) kept verbatim for the quarantine
    base_dir: str  # directory frame paths are relative to
    parse_error: str = ""
    order: tuple[str, int] = ("", 0)  # (file, line/record index): "first occurrence" for duplicates
    inline_frames: list[bytes] = field(default_factory=list)  # frames that arrived as bytes (TFRecord)


@dataclass(frozen=True)
class Unit:
    """One independently readable piece of input: the parallelism grain of ingest."""

    kind: str  # "jsonl" | "tfrecord" | ondevice.folders.FOLDER_EVENT | FOLDER_IMAGE
    path: str  # absolute path
    label: str = ""


@dataclass
class Survey:
    """What ingest reads under a data root, and every file it does not read, with why."""

    units: list[Unit]
    ignored: list[tuple[str, str]]  # (path relative to the root, reason)


IGNORED_HIDDEN = "hidden (name starts with '.')"
IGNORED_FORMAT = "not an input format (*.jsonl, *.tfrecord[.gz], .png/.jpg/.jpeg images)"
IGNORED_PRECEDENCE = "{kind} are not read when *.{winner} files are present: pass them as their own --data"
IGNORED_LOOP = "symlink to a directory already walked"
IGNORED_OUTSIDE = "symlink to a directory outside --data (not followed)"


def _walk(root: str, ignored: list[tuple[str, str]]) -> list[str]:
    """Every visible file under ``root``, following directory symlinks inside it, each real directory once."""
    top = os.path.realpath(root)
    seen = {top}
    files = []
    for d, dirs, fs in os.walk(root, followlinks=True):
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(d, name))
            reason = (
                IGNORED_HIDDEN if name.startswith(".")
                else IGNORED_OUTSIDE if os.path.commonpath([top, real]) != top
                else IGNORED_LOOP if real in seen
                else None
            )  # fmt: skip
            if reason:
                dirs.remove(name)
                ignored.append((os.path.relpath(os.path.join(d, name), root), reason))
            else:
                seen.add(real)
        for f in fs:
            path = os.path.join(d, f)
            if f.startswith("."):
                ignored.append((os.path.relpath(path, root), IGNORED_HIDDEN))
            else:
                files.append(path)
    return sorted(files)


def discover(root: str) -> list[Unit]:
    """All input units under ``root``, sorted so every run reads them in the same order."""
    return survey(root).units


def survey(root: str) -> Survey:
    """``discover``, plus every file under ``root`` that will not be read and why."""
    if not os.path.exists(root):
        raise UserError(f"data path {root!r} does not exist; pass --data DIR with your events")
    root = os.path.abspath(root)
    if os.path.isfile(root):
        if root.endswith(".jsonl"):
            return Survey([Unit("jsonl", root)], [])
        if root.endswith(TFRECORD_SUFFIXES):
            return Survey([Unit("tfrecord", root)], [])
        raise UserError(f"{root!r} is neither a .jsonl manifest nor a TFRecord file")
    ignored: list[tuple[str, str]] = []
    files = _walk(root, ignored)
    jsonl = [f for f in files if f.endswith(".jsonl")]
    records = [f for f in files if f.endswith(TFRECORD_SUFFIXES)]
    images = {f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)}

    def rel(path: str) -> str:
        return os.path.relpath(path, root)

    if jsonl or records:
        kind, read = ("jsonl", jsonl) if jsonl else ("tfrecord", records)
        for f in sorted(set(files) - set(read)):
            if f.endswith(TFRECORD_SUFFIXES):
                ignored.append((rel(f), IGNORED_PRECEDENCE.format(kind="TFRecord files", winner=kind)))
            elif f in images:
                # Under manifests, images are the frames they name (read, or reported per event).
                if kind == "tfrecord":
                    ignored.append((rel(f), IGNORED_PRECEDENCE.format(kind="image trees", winner=kind)))
            else:
                ignored.append((rel(f), IGNORED_FORMAT))
        return Survey([Unit(kind, f) for f in read], sorted(ignored))
    events, outside = folder_tree(root)  # hidden entries: listed by _walk (files) or holding nothing read
    units = [Unit(event.kind, event.path, event.label) for event in events]
    ignored += outside
    if not units:
        raise UserError(
            f"no events found under {root!r}: expected *.jsonl manifests, *.tfrecord(.gz) files, "
            "or an image-folder tree <label>/<event_id>/<frame>.png"
        )
    return Survey(units, sorted(set(ignored)))


def read_unit(unit: Unit, root: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RawEvent]:
    """The events of one unit; a TFRecord record over ``max_record_bytes`` is skipped unread."""
    root = os.path.abspath(root)
    rel = os.path.relpath(unit.path, root if os.path.isdir(root) else os.path.dirname(root))
    if unit.kind == "jsonl":
        yield from _read_jsonl(unit.path, rel)
    elif unit.kind == "tfrecord":
        yield from _read_tfrecord(unit.path, rel, max_record_bytes)
    else:
        yield _folder_event(unit, rel, root)


def _read_jsonl(path: str, rel: str) -> Iterator[RawEvent]:
    base_dir = os.path.dirname(path)
    for line in read_manifest(path):
        source = f"{rel}:{line.number}"
        yield RawEvent(source, line.record, line.text, base_dir, line.error or "", order=(rel, line.number))


def _folder_event(unit: Unit, rel: str, root: str) -> RawEvent:
    event = FolderEvent(unit.kind, unit.path, unit.label)
    frame_paths = [os.path.relpath(path, root) for path in event.frame_paths()]
    event_id = event.event_id
    mtime = os.stat(unit.path).st_mtime
    record = {
        "event_id": event_id,
        "device_id": "unknown",
        "timestamp": dt.datetime.fromtimestamp(mtime, dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        "label": unit.label,
        "frames": frame_paths,
    }
    return RawEvent(f"{rel}", record, json.dumps(record), root, order=(rel, 0))


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _BadRecord(ValueError):
    """One record is unusable but the file can still be framed: the next record is read."""

    def __init__(self, message: str, offset: int, data: bytes = b"") -> None:
        super().__init__(f"{message} at byte {offset}")
        self.data = data  # the record's bytes as read (kept in the quarantine), b"" if skipped


def _tfrecord_payloads(path: str, max_record_bytes: int) -> Iterator[bytes | _BadRecord]:
    """Each record's bytes (or why that one record is bad), CRCs checked as TensorFlow does.

    Raises ValueError when the file cannot be framed any further (truncated, or a length whose
    CRC does not match): everything after that point is one unreadable remainder.
    """
    opener = gzip.open if _is_gzip(path) else open
    offset = 0  # in the (decompressed) record stream
    with opener(path, "rb") as f:
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
                raise ValueError(f"corrupted record length (CRC mismatch) at byte {offset}")
            if length > max_record_bytes:
                skipped = 0
                while skipped < length + 4:  # streamed past, never held in memory
                    chunk = f.read(min(1 << 20, length + 4 - skipped))
                    if not chunk:
                        raise ValueError(
                            f"truncated record body (a record of {length} bytes) at byte {offset}"
                        )
                    skipped += len(chunk)
                yield _BadRecord(f"record of {length} bytes exceeds the {max_record_bytes}-byte limit "
                                 "(data.max_frame_bytes x data.max_frames)", offset)  # fmt: skip
                offset += 12 + length + 4
                continue
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"truncated record body at byte {offset}")
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                yield _BadRecord("record data CRC mismatch (corrupted bytes)", offset, data)
            else:
                yield data
            offset += 12 + length + 4


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_tfrecord(path: str, rel: str, max_record_bytes: int) -> Iterator[RawEvent]:
    base_dir = os.path.dirname(path)
    index = -1
    try:
        for index, data in enumerate(_tfrecord_payloads(path, max_record_bytes)):
            source = f"{rel}:{index}"
            if isinstance(data, _BadRecord):  # quarantined with its bytes (base64), when it was read
                raw = base64.b64encode(data.data).decode()
                yield RawEvent(
                    source, None, raw, base_dir, f"unreadable TFRecord record: {data}", order=(rel, index)
                )
                continue
            raw = base64.b64encode(data).decode()
            try:
                example = example_pb2.Example.FromString(data)
            except Exception as e:  # protobuf raises DecodeError subclasses
                yield RawEvent(source, None, raw, base_dir, f"not a tf.Example: {e}", order=(rel, index))
                continue
            feats = example.features.feature
            label = _text(feats, layout.LABEL_NAME)
            record: dict[str, Any] = {
                "event_id": _text(feats, layout.EVENT_ID),
                "device_id": _text(feats, layout.DEVICE_ID),
                "timestamp": _text(feats, layout.TIMESTAMP),
                "label": label or None,
                "frames": [f"<inline frame {i}>" for i in range(len(feats[layout.FRAMES].bytes_list.value))]
                if layout.FRAMES in feats
                else None,
            }
            best_frame = _best_frame(feats[layout.BEST_FRAME]) if layout.BEST_FRAME in feats else None
            if best_frame is not None:
                record["best_frame"] = best_frame
            frames = list(feats[layout.FRAMES].bytes_list.value) if layout.FRAMES in feats else []
            yield RawEvent(source, record, raw, base_dir, inline_frames=frames, order=(rel, index))
    except (ValueError, OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile, EOFError, zlib.error
        yield RawEvent(
            f"{rel}:{index + 1}", None, "", base_dir,
            f"unreadable TFRecord file from record {index + 1} on ({e}); "
            "the rest of the file cannot be framed",
            order=(rel, index + 1),
        )  # fmt: skip


def _best_frame(feature: Any) -> Any:
    """The record's ``best_frame`` from a layout feature: None for unknown (-1); anything but one
    int64 is passed on as a description, so the checks reject it instead of it being lost."""

    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value) if kind else []
    if kind != "int64_list" or len(values) != 1:
        return f"<{kind or 'empty'} feature {values[:4]!r}>"
    return None if values[0] == layout.UNKNOWN_FRAME else int(values[0])


def _text(feats: Any, name: str) -> str | None:
    if name not in feats or not feats[name].bytes_list.value:
        return None
    return feats[name].bytes_list.value[0].decode("utf-8", errors="replace")


def reread_line(root: str, source: str) -> str:
    """The manifest line ``source`` ("<file relative to root>:<line>") as written; "" if gone."""
    rel, _, number = source.rpartition(":")
    path = os.path.join(root, rel)
    try:
        with open(path, "rb") as f:
            for i, line in enumerate(f, start=1):
                if i == int(number):
                    return line.decode("utf-8", errors="replace").rstrip("\r\n")
    except (OSError, ValueError):
        pass
    return ""

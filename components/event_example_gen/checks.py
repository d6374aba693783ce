"""Per-event validation: every event read is accepted or rejected with a reason.

Reasons are stable machine-readable codes (they key ``rejected_by_reason`` in the
report and the quarantine); ``detail`` is the human sentence naming the field and what
to do. Duplicate ids are decided later, across all events (see the executor).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import io
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from components.event_example_gen.sources import TFRECORD_SUFFIXES, RawEvent
from contract.config import DataConfig
from ondevice import frames as framecodec

# Reason codes. Keep in sync with the README's table.
MALFORMED_LINE = "malformed_line"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_LABEL = "unknown_label"
WRONG_FRAME_COUNT = "wrong_frame_count"
BAD_FRAME_REF = "bad_frame_ref"
PATH_ESCAPE = "path_escape"
FRAME_MISSING = "frame_missing"
FRAME_UNREADABLE = (
    "frame_unreadable"  # exists but is not a readable regular file (a directory, a FIFO, no permission)
)
FRAME_TOO_LARGE = "frame_too_large"
UNDECODABLE_FRAME = "undecodable_frame"
MIXED_FRAME_SIZES = "mixed_frame_sizes"
DUPLICATE_ID = "duplicate_id"

REASONS = (
    MALFORMED_LINE, MISSING_FIELD, BAD_FIELD, BAD_TIMESTAMP, UNKNOWN_LABEL, WRONG_FRAME_COUNT,
    BAD_FRAME_REF, PATH_ESCAPE, FRAME_MISSING, FRAME_UNREADABLE, FRAME_TOO_LARGE, UNDECODABLE_FRAME,
    MIXED_FRAME_SIZES, DUPLICATE_ID,
)  # fmt: skip

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Rules:
    """What the checks enforce; built from the data config."""

    data_root: str
    max_frames: int
    classes: tuple[str, ...] = ()  # empty: any label is accepted (the vocabulary is derived)
    max_frame_bytes: int = DataConfig.max_frame_bytes
    max_frame_pixels: int = DataConfig.max_frame_pixels

    @functools.cached_property
    def real_root(self) -> str:
        """The data root with symlinks resolved, once (every frame path is checked against it)."""
        return os.path.realpath(self.data_root)


@dataclass
class Accepted:
    event_id: str
    device_id: str
    timestamp: str
    label: str | None
    frames: list[bytes]
    height: int
    width: int
    channels: int
    best_frame: int | None = None  # the optional manifest field: 0-based frame showing the object best


@dataclass
class Rejected:
    reason: str
    detail: str
    event_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def check(event: RawEvent, rules: Rules) -> Accepted | Rejected:
    """Validate one raw event against ``rules``."""
    if event.record is None:
        if event.order[0].endswith(TFRECORD_SUFFIXES):
            hint = "each record must be a tf.Example in the layout, written by tf.io.TFRecordWriter"
        else:
            hint = "each line must be one JSON object"
        return Rejected(MALFORMED_LINE, f"{event.source}: {event.parse_error}; {hint}")
    record = event.record
    event_id = record.get("event_id") if isinstance(record.get("event_id"), str) else None
    try:
        return _check_record(event, record, rules)
    except _Reject as r:
        return Rejected(r.reason, f"{event.source}: {r.detail}", event_id)


def _check_record(event: RawEvent, record: dict[str, Any], rules: Rules) -> Accepted:
    for name in ("event_id", "device_id", "timestamp", "frames"):
        if record.get(name) is None:
            raise _Reject(
                MISSING_FIELD,
                f"field {name!r} is missing; every event needs event_id, device_id, timestamp, frames",
            )
    for name in ("event_id", "device_id", "timestamp"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise _Reject(BAD_FIELD, f"field {name!r} must be a non-empty string, got {record[name]!r}")
    label = record.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        raise _Reject(BAD_FIELD, f"field 'label' must be a class name or null (unlabelled), got {label!r}")
    timestamp = record["timestamp"]
    if not _valid_timestamp(timestamp):
        raise _Reject(BAD_TIMESTAMP, f"timestamp {timestamp!r} is not RFC 3339 (e.g. 2026-01-05T12:00:00Z)")
    if label is not None and rules.classes and label not in rules.classes:
        raise _Reject(
            UNKNOWN_LABEL,
            f"label {label!r} is not in the class vocabulary {list(rules.classes)}; "
            "fix the label or add the class to --classes",
        )
    frames = record["frames"]
    if not isinstance(frames, list):
        raise _Reject(
            BAD_FIELD,
            f"field 'frames' must be a list of paths or {{'b64': ...}} objects, got {type(frames).__name__}",
        )
    if not 1 <= len(frames) <= rules.max_frames:
        raise _Reject(
            WRONG_FRAME_COUNT,
            f"{len(frames)} frames; events need 1..{rules.max_frames} "
            "(raise --max-frames if longer bursts are expected)",
        )
    best_frame = record.get("best_frame")
    if best_frame is not None and (
        isinstance(best_frame, bool) or not isinstance(best_frame, int) or not 0 <= best_frame < len(frames)
    ):
        raise _Reject(
            BAD_FIELD,
            f"field 'best_frame' must be a 0-based index of one of the event's {len(frames)} frames "
            f"(0..{len(frames) - 1}) or null, got {best_frame!r}",
        )
    payloads = event.inline_frames or [
        _load_frame(ref, i, event.base_dir, rules) for i, ref in enumerate(frames)
    ]
    shapes = []
    for i, data in enumerate(payloads):
        if len(data) > rules.max_frame_bytes:
            raise _Reject(
                FRAME_TOO_LARGE,
                f"frame {i} is {len(data)} bytes, over the {rules.max_frame_bytes}-byte limit",
            )
        shapes.append(_decode_shape(data, i, rules.max_frame_pixels))
    sizes = {(h, w) for h, w, _ in shapes}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise _Reject(
            MIXED_FRAME_SIZES,
            f"frames have different sizes ({listed}); all frames of an event must share one size",
        )
    height, width = sizes.pop()
    return Accepted(
        event_id=record["event_id"],
        device_id=record["device_id"],
        timestamp=timestamp,
        label=label,
        frames=payloads,
        height=height,
        width=width,
        channels=max(c for _, _, c in shapes),
        best_frame=best_frame,
    )


def _valid_timestamp(value: str) -> bool:
    if not _RFC3339.match(value):
        return False
    text = value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T").replace(" ", "T")
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _load_frame(ref: Any, index: int, base_dir: str, rules: Rules) -> bytes:
    if isinstance(ref, dict) and set(ref) == {"b64"} and isinstance(ref["b64"], str):
        try:
            return base64.b64decode(ref["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise _Reject(UNDECODABLE_FRAME, f"frame {index}: 'b64' is not valid base64") from None
    if not isinstance(ref, str) or not ref:
        raise _Reject(
            BAD_FRAME_REF, f"frame {index} must be a relative path or {{'b64': ...}}, got {str(ref)[:80]!r}"
        )
    root = rules.real_root
    path = os.path.realpath(os.path.join(base_dir, ref))
    if os.path.isabs(ref) or os.path.commonpath([root, path]) != root:
        raise _Reject(
            PATH_ESCAPE, f"frame {index} path {ref!r} points outside the data directory {rules.data_root}"
        )
    try:
        info = os.stat(path)
    except OSError:
        raise _Reject(
            FRAME_MISSING, f"frame {index} file {ref!r} does not exist (relative to {base_dir})"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise _Reject(FRAME_UNREADABLE, f"frame {index} path {ref!r} is {kind}; name an image file")
    if info.st_size > rules.max_frame_bytes:
        raise _Reject(
            FRAME_TOO_LARGE,
            f"frame {index} file {ref!r} is {info.st_size} bytes, "
            f"over the {rules.max_frame_bytes}-byte limit",
        )
    try:
        with open(path, "rb") as f:
            return f.read(rules.max_frame_bytes + 1)  # never more than the limit, even if it grew
    except OSError as e:
        raise _Reject(
            FRAME_UNREADABLE, f"frame {index} file {ref!r} cannot be read ({e.strerror or e})"
        ) from None


def _decode_shape(data: bytes, index: int, max_pixels: int) -> tuple[int, int, int]:
    """(height, width, channels) after a full decode; PNG and JPEG only, at most ``max_pixels``
    (read from the header, before anything is decoded)."""

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise _Reject(
                    UNDECODABLE_FRAME, f"frame {index} is {image.format}, only PNG and JPEG are accepted"
                )
            try:
                framecodec.check_size(image, data, max_pixels)
            except framecodec.FrameDecodeError as e:
                raise _Reject(FRAME_TOO_LARGE, f"frame {index}: {e}") from None
            width, height = image.size
            image.load()  # full decode: catches truncated files that open() accepts
            channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    except _Reject:
        raise
    except Image.DecompressionBombError as e:  # PIL's own ceiling, above ours unless raised
        raise _Reject(FRAME_TOO_LARGE, f"frame {index}: {e}") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise _Reject(
            UNDECODABLE_FRAME, f"frame {index} does not decode as PNG/JPEG ({type(e).__name__}: {e})"
        ) from None
    return height, width, channels

"""Read the metadata eventpipe embeds in its ``.tflite`` files, with the Python standard library only.

The TFLite schema (tensorflow/lite/schema/schema.fbs) gives every model a ``metadata`` list of
``{name, buffer}`` entries pointing into its ``buffers``; the converter itself stores
``min_runtime_version`` and ``CONVERSION_METADATA`` there. eventpipe adds one entry,
``EVENTPIPE_METADATA``, whose buffer is UTF-8 JSON: labels, input normalization, frames layout,
quantization and output names (written by ``trainer.productionize.lite.embed_metadata``). An app or the
on-device runner reads it with ``read_metadata`` — no TensorFlow, no tflite-support, no side
files. Interpreters ignore metadata entries they do not know, so the model runs everywhere.

Flatbuffer layout used here (little endian): the file starts with the root table's uoffset;
a table starts with an soffset to its vtable; the vtable lists uint16 field offsets; offset
fields (vectors, strings, tables) hold a uoffset relative to where they are stored.
"""

from __future__ import annotations

import json
import struct
from typing import Any

METADATA_NAME = "EVENTPIPE_METADATA"
FORMAT = "eventpipe.tflite-metadata/1"
FILE_IDENTIFIER = b"TFL3"

# Field slots in schema.fbs.
_MODEL_BUFFERS = 4
_MODEL_METADATA = 6
_METADATA_NAME = 0
_METADATA_BUFFER = 1
_BUFFER_DATA = 0
_BUFFER_OFFSET = 1
_BUFFER_SIZE = 2


class MetadataError(ValueError):
    """The file is not a TFLite model or carries no eventpipe metadata."""


def _u32(buf: bytes, pos: int) -> int:
    return struct.unpack_from("<I", buf, pos)[0]


def _field(buf: bytes, table: int, slot: int) -> int | None:
    """Absolute position of field ``slot`` of the table at ``table`` (None if absent)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    entry = 4 + 2 * slot
    if entry >= vtable_size:
        return None
    offset = struct.unpack_from("<H", buf, vtable + entry)[0]
    return table + offset if offset else None


def _deref(buf: bytes, pos: int) -> int:
    return pos + _u32(buf, pos)


def _vector(buf: bytes, table: int, slot: int) -> tuple[int, int]:
    """(start of elements, length) of a vector field; (0, 0) if absent."""
    pos = _field(buf, table, slot)
    if pos is None:
        return 0, 0
    vec = _deref(buf, pos)
    return vec + 4, _u32(buf, vec)


def _string(buf: bytes, table: int, slot: int) -> str | None:
    start, length = _vector(buf, table, slot)
    return None if not start else buf[start : start + length].decode("utf-8")


def metadata_entries(model: bytes) -> dict[str, bytes]:
    """All ``metadata`` entries of a TFLite flatbuffer: name -> the bytes of its buffer."""
    buf = bytes(model)
    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise MetadataError("not a TFLite model (missing the TFL3 file identifier)")
    root = _u32(buf, 0)
    buffers_start, n_buffers = _vector(buf, root, _MODEL_BUFFERS)
    meta_start, n_meta = _vector(buf, root, _MODEL_METADATA)
    entries: dict[str, bytes] = {}
    for i in range(n_meta):
        entry = _deref(buf, meta_start + 4 * i)
        name = _string(buf, entry, _METADATA_NAME) or ""
        index_pos = _field(buf, entry, _METADATA_BUFFER)
        index = _u32(buf, index_pos) if index_pos is not None else 0
        if index >= n_buffers:
            raise MetadataError(f"metadata {name!r} points at buffer {index} of {n_buffers}")
        buffer = _deref(buf, buffers_start + 4 * index)
        data_start, data_len = _vector(buf, buffer, _BUFFER_DATA)
        if data_start:
            entries[name] = buf[data_start : data_start + data_len]
            continue
        # Models over 2 GB keep buffer contents outside the flatbuffer: offset/size from file start.
        off_pos, size_pos = _field(buf, buffer, _BUFFER_OFFSET), _field(buf, buffer, _BUFFER_SIZE)
        offset = struct.unpack_from("<Q", buf, off_pos)[0] if off_pos is not None else 0
        size = struct.unpack_from("<Q", buf, size_pos)[0] if size_pos is not None else 0
        entries[name] = buf[offset : offset + size] if offset > 1 else b""
    return entries


def read_metadata(model: bytes | str) -> dict[str, Any]:
    """eventpipe's metadata dict from a ``.tflite`` path or its bytes."""
    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    entries = metadata_entries(model)
    if METADATA_NAME not in entries:
        raise MetadataError(f"no {METADATA_NAME} entry (found: {', '.join(sorted(entries)) or 'none'})")
    meta = json.loads(entries[METADATA_NAME].decode("utf-8"))
    if meta.get("format") != FORMAT:
        raise MetadataError(f"unknown metadata format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta

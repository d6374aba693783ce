"""Read the standard TFLite metadata of an eventpipe ``.tflite`` file, with the standard library only.

eventpipe writes TFLite's standard model metadata with tflite-support's metadata writers
(``trainer.lite.tflite.embed_metadata``), so any TFLite tool (``MetadataDisplayer``,
Android Studio, the Task library) sees the labels and the input normalization. A device has
neither tflite-support nor TensorFlow, so ``read_metadata`` parses the same structures here:

- the model's ``metadata`` list holds an entry ``TFLITE_METADATA`` whose buffer is a
  ``ModelMetadata`` flatbuffer (tflite-support's metadata_schema.fbs, file identifier ``M001``):
  input/output tensor names and descriptions, the input's ``NormalizationOptions``
  (``model value = (pixel - mean) / std``) and the associated files' names;
- associated files are packed as a zip archive appended to the flatbuffer (``zipfile`` reads
  it): ``labels.txt`` (``TENSOR_AXIS_LABELS`` of the logits output, one class per line) and
  ``event_spec.json`` (model-level ``DESCRIPTIONS``: frames layout, tensor names and
  quantization, variant, ... — whatever the standard schema has no field for).

Labels and normalization live only in the standard places; ``read_metadata`` puts them back
into the one dict its callers use. Interpreters ignore metadata entries, so the model runs
everywhere.

Flatbuffer layout used here (little endian): a buffer starts with the root table's uoffset
(then the 4-byte file identifier); a table starts with an soffset to its vtable; the vtable
lists uint16 field offsets (field slot ``n`` at byte ``4 + 2n``); offset fields (vectors,
strings, tables) hold a uoffset relative to where they are stored.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from typing import Any

METADATA_NAME = "TFLITE_METADATA"  # tflite-support's MetadataPopulator.METADATA_FIELD_NAME
METADATA_IDENTIFIER = b"M001"  # MetadataPopulator.METADATA_FILE_IDENTIFIER
FORMAT = "eventpipe.event-spec/2"
FILE_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
EVENT_SPEC_FILE = "event_spec.json"
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions

# Field slots in tensorflow/lite/schema/schema.fbs.
_MODEL_BUFFERS = 4
_MODEL_METADATA = 6
_METADATA_NAME = 0
_METADATA_BUFFER = 1
_BUFFER_DATA = 0
_BUFFER_OFFSET = 1
_BUFFER_SIZE = 2
# Field slots in tflite-support's metadata_schema.fbs (checked against the vtable offsets in
# metadata_schema_py_generated.py by tests/trainer/test_productionize.py).
_MM_NAME, _MM_DESCRIPTION, _MM_VERSION, _MM_SUBGRAPHS, _MM_FILES, _MM_MIN_PARSER = 0, 1, 2, 3, 6, 7
_SG_INPUTS, _SG_OUTPUTS = 2, 3
_TM_NAME, _TM_DESCRIPTION, _TM_PROCESS_UNITS, _TM_FILES = 0, 1, 4, 6
_PU_OPTIONS_TYPE, _PU_OPTIONS = 0, 1
_NORM_MEAN, _NORM_STD = 0, 1
_AF_NAME, _AF_DESCRIPTION, _AF_TYPE = 0, 1, 2


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


def _tables(buf: bytes, table: int, slot: int) -> list[int]:
    """Positions of the tables in a vector-of-tables field."""
    start, length = _vector(buf, table, slot)
    return [_deref(buf, start + 4 * i) for i in range(length)]


def _floats(buf: bytes, table: int, slot: int) -> list[float]:
    start, length = _vector(buf, table, slot)
    return list(struct.unpack_from(f"<{length}f", buf, start)) if start else []


def _u8(buf: bytes, table: int, slot: int) -> int:
    pos = _field(buf, table, slot)
    return buf[pos] if pos is not None else 0


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


def _associated_files(buf: bytes, table: int, slot: int) -> list[dict[str, Any]]:
    return [
        {
            "name": _string(buf, f, _AF_NAME),
            "description": _string(buf, f, _AF_DESCRIPTION),
            "type": _u8(buf, f, _AF_TYPE),
        }
        for f in _tables(buf, table, slot)
    ]


def _tensor(buf: bytes, table: int) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": _string(buf, table, _TM_NAME),
        "description": _string(buf, table, _TM_DESCRIPTION),
        "associated_files": _associated_files(buf, table, _TM_FILES),
    }
    for unit in _tables(buf, table, _TM_PROCESS_UNITS):
        if _u8(buf, unit, _PU_OPTIONS_TYPE) == NORMALIZATION_OPTIONS:
            options = _field(buf, unit, _PU_OPTIONS)
            if options is not None:
                options = _deref(buf, options)
                tensor["normalization"] = {
                    "mean": _floats(buf, options, _NORM_MEAN),
                    "std": _floats(buf, options, _NORM_STD),
                }
    return tensor


def parse_model_metadata(blob: bytes) -> dict[str, Any]:
    """The parts of a ``ModelMetadata`` flatbuffer eventpipe uses, as plain Python values."""
    buf = bytes(blob)
    if len(buf) < 8 or buf[4:8] != METADATA_IDENTIFIER:
        raise MetadataError(f"{METADATA_NAME} is not a ModelMetadata flatbuffer (identifier {buf[4:8]!r})")
    root = _u32(buf, 0)
    subgraphs = _tables(buf, root, _MM_SUBGRAPHS)
    if len(subgraphs) != 1:
        raise MetadataError(f"expected metadata for 1 subgraph, found {len(subgraphs)}")
    return {
        "name": _string(buf, root, _MM_NAME),
        "description": _string(buf, root, _MM_DESCRIPTION),
        "version": _string(buf, root, _MM_VERSION),
        "min_parser_version": _string(buf, root, _MM_MIN_PARSER),
        "associated_files": _associated_files(buf, root, _MM_FILES),
        "inputs": [_tensor(buf, t) for t in _tables(buf, subgraphs[0], _SG_INPUTS)],
        "outputs": [_tensor(buf, t) for t in _tables(buf, subgraphs[0], _SG_OUTPUTS)],
    }


MAX_ASSOCIATED_FILE_BYTES = 1024 * 1024  # labels and the event spec are a few KiB; a zip bomb is not


def associated_files(model: bytes, names: set[str] | None = None) -> dict[str, bytes]:
    """The files packed into the model (a zip archive appended to the flatbuffer), or only
    ``names``; a file that would inflate past ``MAX_ASSOCIATED_FILE_BYTES`` is refused unread."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            out = {}
            for info in archive.infolist():
                if names is not None and info.filename not in names:
                    continue
                if info.file_size > MAX_ASSOCIATED_FILE_BYTES:
                    raise MetadataError(
                        f"associated file {info.filename!r} inflates to {info.file_size} bytes "
                        f"(limit {MAX_ASSOCIATED_FILE_BYTES})"
                    )
                out[info.filename] = archive.read(info)
            return out
    except zipfile.BadZipFile:
        return {}  # nothing packed: the caller names the file it misses
    except (zipfile.LargeZipFile, OSError, EOFError) as e:
        raise MetadataError(f"the files packed with the model cannot be read: {e}") from e


def read_metadata(model: bytes | str) -> dict[str, Any]:
    """eventpipe's metadata dict (see ``_read_metadata``); any malformed input is a MetadataError."""
    try:
        return _read_metadata(model)
    except MetadataError:
        raise
    except (struct.error, IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        # A truncated or hostile flatbuffer, or JSON that is not the event spec: say so, no traceback.
        raise MetadataError(f"unreadable TFLite metadata: {type(e).__name__}: {e}") from e


def _read_metadata(model: bytes | str) -> dict[str, Any]:
    """eventpipe's metadata dict from a ``.tflite`` path or its bytes.

    ``event_spec.json`` with ``labels`` (from ``labels.txt``), ``input.normalization`` (from the
    input's NormalizationOptions), ``input.name``/``outputs`` (from the tensor metadata, in the
    subgraph's output order) and ``name``/``description``/``version`` filled in from the
    standard metadata.
    """
    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    model = bytes(model)
    entries = metadata_entries(model)
    if METADATA_NAME not in entries:
        raise MetadataError(f"no {METADATA_NAME} entry (found: {', '.join(sorted(entries)) or 'none'})")
    standard = parse_model_metadata(entries[METADATA_NAME])
    files = associated_files(model)
    if EVENT_SPEC_FILE not in files:
        raise MetadataError(
            f"no {EVENT_SPEC_FILE} packed with the model (found: {', '.join(sorted(files)) or 'none'})"
        )
    meta = json.loads(files[EVENT_SPEC_FILE].decode("utf-8"))
    if meta.get("format") != FORMAT:
        raise MetadataError(f"unknown {EVENT_SPEC_FILE} format {meta.get('format')!r}; expected {FORMAT!r}")
    if len(standard["inputs"]) != 1:
        raise MetadataError(f"expected metadata for 1 input tensor, found {len(standard['inputs'])}")
    (inp,) = standard["inputs"]
    label_files = [
        f["name"]
        for t in standard["outputs"]
        for f in t["associated_files"]
        if f["type"] == TENSOR_AXIS_LABELS
    ]
    if not label_files or label_files[0] not in files:
        raise MetadataError(
            f"no labels file (TENSOR_AXIS_LABELS) packed with the model (found: {sorted(files)})"
        )
    labels = [line for line in files[label_files[0]].decode("utf-8").splitlines() if line]
    meta["labels"] = labels
    meta["input"] = {**meta.get("input", {}), "name": inp["name"]}
    if "normalization" in inp:
        meta["input"]["normalization"] = inp["normalization"]
    meta["outputs"] = {t["name"]: t["name"] for t in standard["outputs"]}
    if "event_spec" in meta:
        meta["event_spec"] = {**meta["event_spec"], "classes": labels}
    for key in ("name", "description", "version"):
        if standard[key] is not None:
            meta[key] = standard[key]
    return meta

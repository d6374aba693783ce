"""Tensor encodings on the wire: ``TensorProto`` (gRPC) and TF Serving's JSON (REST).

The JSON rules follow TF Serving's ``json_tensor.cc``: row form (``instances``) and column
form (``inputs``), ``{"b64": ...}`` for string tensors, strict types (an int tensor does not
take ``1.0``; a float tensor does not take a string), floats written as the shortest text
that round-trips in the tensor's precision, ``NaN``/``Infinity`` allowed, and string outputs
whose alias ends in ``_bytes`` written as ``{"b64": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from contract.config import ServingConfig
from serving.signatures import NUMPY_DTYPES, Signature, TensorSig, dtype_name, dtype_of_array
from serving.status import UNIMPLEMENTED, ServingError, invalid

B64_KEY = "b64"
BYTES_SUFFIX = "_bytes"

ROW = "row"
COLUMN = "column"


# -- TensorProto ---------------------------------------------------------------------------
def array_to_proto(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """NumPy -> TensorProto (numbers as ``tensor_content``, strings as ``string_val``).

    ``proto``: an empty message to fill in place (a response's ``outputs[alias]``), which
    spares building a separate message and copying it in.
    """
    dtype = dtype_of_array(array)
    if proto is None:
        proto = tensor_pb2.TensorProto()
    proto.dtype = dtype
    if dtype == types_pb2.DT_STRING:
        values = array.reshape(-1).tolist()
        if not all(isinstance(v, bytes) for v in values):
            values = [_as_bytes(v) for v in values]
        proto.string_val.extend(values)
    else:
        little = NUMPY_DTYPES[dtype].newbyteorder("<")
        proto.tensor_content = np.ascontiguousarray(array).astype(little, copy=False).tobytes()
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    return proto


# Largest tensor a request may declare (elements; the default of serving.max_tensor_elements). A
# TensorProto names its shape and may carry fewer values than that (the last one repeats), so 43
# bytes can declare gigabytes: the count is checked before anything is allocated.
MAX_TENSOR_ELEMENTS = ServingConfig.max_tensor_elements


def declared_elements(proto: tensor_pb2.TensorProto, max_elements: int = MAX_TENSOR_ELEMENTS) -> list[int]:
    """The shape ``proto`` declares, refused (INVALID_ARGUMENT) if malformed or over ``max_elements``."""
    shape = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise invalid(f"tensor shape {shape} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
        if count > max_elements:
            break
    if count > max_elements:
        raise invalid(
            f"tensor shape {shape} declares more than {max_elements} elements, the server's limit "
            f"(serving.max_tensor_elements); send smaller batches"
        )
    return shape


def proto_inputs(
    protos: Any, signature: Signature, max_elements: int = MAX_TENSOR_ELEMENTS
) -> dict[str, np.ndarray]:
    """A ``PredictRequest``'s ``inputs`` map -> arrays; each declared shape is checked against the
    signature before its values are read (unknown aliases are left for ``check_inputs`` to name)."""
    inputs = {}
    for alias, proto in protos.items():
        if alias in signature.inputs:
            signature.inputs[alias].check_declared([d.size for d in proto.tensor_shape.dim])
        inputs[alias] = proto_to_array(proto, max_elements)
    return inputs


def proto_to_array(proto: tensor_pb2.TensorProto, max_elements: int = MAX_TENSOR_ELEMENTS) -> np.ndarray:
    """TensorProto -> NumPy, with ``tf.make_ndarray`` semantics (strings as ``bytes`` objects).

    The declared size is checked against ``max_elements`` before any padding or allocation.
    """
    shape = declared_elements(proto, max_elements)
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        count = int(np.prod(shape)) if shape else 1
        if len(values) != count:
            if not values or len(values) > count:
                raise invalid(f"string tensor has {len(values)} values for shape {shape}")
            values += [values[-1]] * (count - len(values))
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)
    if proto.dtype not in NUMPY_DTYPES:
        raise invalid(f"unsupported tensor dtype {dtype_name(proto.dtype)}")
    if proto.tensor_content:
        dtype = NUMPY_DTYPES[proto.dtype].newbyteorder("<")
        expected = int(np.prod(shape)) * dtype.itemsize if shape else dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise invalid(
                f"tensor_content has {len(proto.tensor_content)} bytes, shape {shape} of "
                f"{dtype_name(proto.dtype)} needs {expected}"
            )
        return (
            np.frombuffer(proto.tensor_content, dtype=dtype).astype(NUMPY_DTYPES[proto.dtype]).reshape(shape)
        )
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as e:
        raise invalid(f"malformed TensorProto: {e}") from e


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise invalid(f"string tensor holds a {type(value).__name__}")


# -- JSON request ---------------------------------------------------------------------------
def _json_text(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype: int) -> Exception:
    return invalid(
        f"JSON Value: {_json_text(value)} Type: {_json_type(value)} is not of expected type: "
        f"{dtype_name(dtype).lower()[3:]}"
    )


def is_b64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _decode_b64(value: dict) -> bytes:
    text = value[B64_KEY]
    try:
        raw = text.encode("ascii")
        if raw.translate(None, _B64_ALPHABET):  # any byte outside the alphabet (fast, in C)
            raise ValueError(text)
        return binascii.a2b_base64(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise invalid("Unable to base64 decode") from None


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _string_tensor(value: Any, name: str) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list[bytes] = []

    def walk(v: Any, level: int) -> None:
        if isinstance(v, list):
            if level >= len(shape):
                raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
            if len(v) != shape[level]:
                raise invalid(
                    f"Encountered list at unexpected size: {len(v)} at level: {level} "
                    f"expected size: {shape[level]}"
                )
            for item in v:
                walk(item, level + 1)
            return
        if level != len(shape):
            raise invalid(
                f"JSON Value: {_json_text(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if isinstance(v, str):
            flat.append(v.encode("utf-8"))
        elif isinstance(v, dict):
            if not is_b64_object(v):
                raise invalid(f"JSON Value: {_json_text(v)} not formatted correctly for base64 data")
            flat.append(_decode_b64(v))
        else:
            raise _type_error(v, types_pb2.DT_STRING)

    walk(value, 0)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


_FLOAT_LIMITS = {
    types_pb2.DT_FLOAT: (float(np.finfo(np.float32).max), (1 << 24) - 1),
    types_pb2.DT_HALF: (float(np.finfo(np.float16).max), (1 << 11) - 1),
    types_pb2.DT_DOUBLE: (float(np.finfo(np.float64).max), (1 << 53) - 1),
}


def _numeric_tensor(value: Any, dtype: int, name: str) -> np.ndarray:
    try:
        raw = np.asarray(value)
    except ValueError:
        raw = None
    if raw is None or raw.dtype == object:
        if raw is not None and raw.ndim == len(_dense_shape(value)) and raw.size:
            flat = raw.reshape(-1)
            bad = next((v for v in flat if not isinstance(v, (int, float)) or isinstance(v, bool)), flat[0])
            raise _type_error(bad, dtype)
        raise invalid(f"input '{name}': lists are ragged (all lists at one level must have the same size)")
    kind = raw.dtype.kind
    target = NUMPY_DTYPES[dtype]
    if kind in ("U", "S"):
        raise _type_error(raw.reshape(-1)[0].item(), dtype)
    if dtype == types_pb2.DT_BOOL:
        if kind != "b":
            raise _type_error(raw.reshape(-1)[0].item() if raw.size else value, dtype)
        return raw
    if kind == "b":
        raise _type_error(bool(raw.reshape(-1)[0]), dtype)
    if target.kind == "f":
        max_value, max_int = _FLOAT_LIMITS[dtype]
        if raw.size and kind in ("i", "u") and int(np.abs(raw).max()) > max_int:
            raise invalid(
                f"Cannot convert JSON value: {_json_text(raw.reshape(-1)[np.argmax(np.abs(raw))].item())} "
                f"to {dtype_name(dtype).lower()[3:]} without loss of precision."
            )
        if raw.size and kind == "f":
            finite = raw[np.isfinite(raw)]
            if finite.size and float(np.abs(finite).max()) > max_value:
                raise invalid(
                    f"Cannot convert JSON value: {float(np.abs(finite).max())} to "
                    f"{dtype_name(dtype).lower()[3:]} without loss of precision."
                )
        return raw.astype(target)
    # Integer tensors take JSON integers only, within range.
    if kind == "f":
        raise _type_error(raw.reshape(-1)[0].item(), dtype)
    info = np.iinfo(target)
    if raw.size and (int(raw.min()) < info.min or int(raw.max()) > info.max):
        raise _type_error(int(raw.max() if int(raw.max()) > info.max else raw.min()), dtype)
    return raw.astype(target)


def json_to_array(value: Any, sig: TensorSig) -> np.ndarray:
    """One JSON value (scalar or nested lists) -> an array of ``sig``'s dtype."""
    if sig.dtype == types_pb2.DT_STRING:
        return _string_tensor(value, sig.alias)
    if sig.dtype not in NUMPY_DTYPES:
        raise ServingError(UNIMPLEMENTED, f"Conversion of JSON to type: {dtype_name(sig.dtype)}")
    if isinstance(value, dict):
        raise _type_error(value, sig.dtype)
    return _numeric_tensor(value, sig.dtype, sig.alias)


def parse_predict_body(body: bytes) -> dict[str, Any]:
    """Parse a ``:predict`` body into a JSON object (TF Serving's parse errors)."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except RecursionError:
        # The C parser stops at the interpreter's recursion limit instead of exhausting the stack.
        raise invalid(
            f"JSON Parse error: nesting deeper than {sys.getrecursionlimit()} levels "
            "(a prediction request needs fewer than 10)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        pos = getattr(e, "pos", getattr(e, "start", 0))
        reason = getattr(e, "msg", str(e))
        raise invalid(f"JSON Parse error: {reason} at offset: {pos}") from None
    except ValueError as e:  # e.g. an integer literal over Python's 4300-digit conversion limit
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_json_text(doc)} Is not object")
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {_json_text(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return doc


def request_inputs(
    doc: dict[str, Any], signature: Signature, max_elements: int = MAX_TENSOR_ELEMENTS
) -> tuple[dict[str, np.ndarray], str]:
    """The input arrays of a parsed ``:predict`` body, and its form (``ROW`` or ``COLUMN``).

    Each array may hold at most ``max_elements`` (the gRPC ceiling): the body limit bounds what
    JSON can carry, this bounds what reaches the model.
    """
    inputs, form = _request_arrays(doc, signature)
    for alias, array in inputs.items():
        if array.size > max_elements:
            raise invalid(
                f"input '{alias}' has {array.size} elements, more than the server's limit of "
                f"{max_elements} (serving.max_tensor_elements)"
            )
    return inputs, form


def _request_arrays(doc: dict[str, Any], signature: Signature) -> tuple[dict[str, np.ndarray], str]:
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            "JSON Value: (request) Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if not signature.inputs:
        raise invalid(f"Failed to get input map for signature: {signature.name}")
    if has_instances:
        return _rows(doc["instances"], signature), ROW
    if has_inputs:
        return _columns(doc["inputs"], signature), COLUMN
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def _rows(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid("JSON Value: (request) Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid("JSON Value: (request) No values in 'instances' array")
    names = sorted(signature.inputs)
    objects = _is_named_object(instances[0])
    if not objects:
        if len(names) > 1:
            raise invalid(
                "instances is a plain list, but expecting list of objects as multiple input tensors "
                "required as per tensorinfo_map"
            )
        for i, item in enumerate(instances):
            if _is_named_object(item):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        sig = signature.inputs[names[0]]
        return {sig.alias: _stack(instances, sig)}
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, item in enumerate(instances):
        if not _is_named_object(item):
            raise invalid(f"Expecting object but got list at item {i} of input list")
        if set(item) != set(names):
            unknown = sorted(set(item) - set(names))
            if unknown:
                raise invalid(
                    f"Failed to process element: {i} key: {unknown[0]} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {unknown[0]}"
                )
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_json_text(item)} "
                f"keys must be equal to: {','.join(names)}"
            )
        for n in names:
            columns[n].append(item[n])
    return {n: _stack(columns[n], signature.inputs[n]) for n in names}


def _stack(items: list[Any], sig: TensorSig) -> np.ndarray:
    """Per-instance values -> one batched array; every instance must have the same shape."""
    first_shape = _dense_shape(items[0])
    for i, item in enumerate(items[1:], start=1):
        shape = _dense_shape(item)
        if shape != first_shape:
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: "
                f"Expecting shape [{','.join(map(str, first_shape))}] but got: [{','.join(map(str, shape))}]"
            )
    return json_to_array(items, sig)


def _columns(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not _is_named_object(inputs):
        if len(names) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        return {names[0]: json_to_array(inputs, signature.inputs[names[0]])}
    out = {}
    for n in names:
        if n not in inputs:
            raise invalid(f"Missing named input: {n} in 'inputs' object.")
        out[n] = json_to_array(inputs[n], signature.inputs[n])
    return out


# -- JSON response --------------------------------------------------------------------------
def _json_values(name: str, array: np.ndarray) -> Any:
    """An output array as nested lists of JSON-ready Python values."""
    kind = array.dtype.kind
    if kind == "f":
        # Shortest text that round-trips in the array's own precision (TF Serving's WriteDecimal).
        return array.astype(str).astype(np.float64).tolist()
    if kind in ("O", "S", "U"):
        as_b64 = name.endswith(BYTES_SUFFIX)

        def text(v: Any) -> Any:
            data = _as_bytes(v)
            if as_b64:
                return {B64_KEY: base64.b64encode(data).decode("ascii")}
            return data.decode("utf-8", errors="replace")

        flat = [text(v) for v in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def response_json(outputs: dict[str, np.ndarray], form: str) -> bytes:
    """``{"predictions": ...}`` (row form) or ``{"outputs": ...}`` (column form)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if form == ROW:
        batch = None
        for n in names:
            if outputs[n].ndim == 0:
                raise invalid(f"Tensor name: {n} has no shape information ")
            if batch is not None and outputs[n].shape[0] != batch:
                raise invalid(
                    f"Tensor name: {n} has inconsistent batch size: {outputs[n].shape[0]} expecting: {batch}"
                )
            batch = outputs[n].shape[0]
        values = {n: _json_values(n, outputs[n]) for n in names}
        if len(names) == 1:
            predictions = values[names[0]]
        else:
            predictions = [{n: values[n][i] for n in names} for i in range(batch or 0)]
        body = {"predictions": predictions}
    else:
        values = {n: _json_values(n, outputs[n]) for n in names}
        body = {"outputs": values[names[0]] if len(names) == 1 else values}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def error_json(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")

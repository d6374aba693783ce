"""Signatures a servable exposes: named, typed, shaped inputs and outputs.

Both backends (SavedModel, TFLite) describe themselves with these, so the REST/gRPC layers,
the batcher and the metadata endpoints never care which runtime answers. ``to_proto`` gives
the ``SignatureDef`` TF Serving's ``GetModelMetadata`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.status import invalid

PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"

# TensorFlow DataType <-> NumPy. Strings are object arrays of ``bytes``.
NUMPY_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_STRING: np.dtype(object),
}
DTYPE_OF_NUMPY: dict[np.dtype, int] = {v: k for k, v in NUMPY_DTYPES.items()}


def dtype_name(dtype: int) -> str:
    """``DT_FLOAT`` etc.; a number no DataType has (a hostile request) names itself."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DT_<unknown {dtype}>"


def dtype_of_array(array: np.ndarray) -> int:
    """TensorFlow DataType of a NumPy array (``bytes``/``str`` arrays are DT_STRING)."""
    if array.dtype.kind in ("O", "S", "U"):
        return types_pb2.DT_STRING
    try:
        return DTYPE_OF_NUMPY[array.dtype]
    except KeyError:
        raise invalid(f"unsupported tensor dtype {array.dtype}") from None


@dataclass(frozen=True)
class TensorSig:
    """One signature input or output: alias, DataType, shape (None dims unknown), graph name.

    ``max_shape``: upper bounds for dimensions the shape leaves open (None: unbounded). A bounded
    dimension takes 1..bound entries; string inputs shorter than the bound are padded with ""
    (``padded``), the contract's padding of short events.
    """

    alias: str
    dtype: int
    shape: tuple[int | None, ...] | None  # None: unknown rank
    tensor_name: str = ""
    max_shape: tuple[int | None, ...] | None = None

    @property
    def numpy_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.dtype]

    def _bound(self, axis: int) -> int | None:
        return self.max_shape[axis] if self.max_shape is not None and self.shape[axis] is None else None

    def shape_text(self) -> str:
        if self.shape is None:
            return "[?]"
        dims = []
        for axis, d in enumerate(self.shape):
            bound = self._bound(axis)
            dims.append(f"1..{bound}" if bound is not None else "-1" if d is None else str(d))
        return "[" + ",".join(dims) + "]"

    def fits(self, dims: tuple[int, ...] | list[int]) -> bool:
        """Whether a shape has this input's rank, fixed dimensions and bounds."""
        if self.shape is None:
            return True
        if len(dims) != len(self.shape):
            return False
        for axis, (want, got) in enumerate(zip(self.shape, dims, strict=True)):
            bound = self._bound(axis)
            if (want is not None and want != got) or (bound is not None and not 1 <= got <= bound):
                return False
        return True

    def check(self, array: np.ndarray) -> None:
        """Raise INVALID_ARGUMENT unless ``array`` fits this input's dtype and shape."""
        if dtype_of_array(array) != self.dtype:
            raise invalid(
                f"input '{self.alias}' has dtype {dtype_name(dtype_of_array(array))} "
                f"but the signature expects {dtype_name(self.dtype)}"
            )
        self.check_declared(list(array.shape))

    def check_declared(self, dims: list[int]) -> None:
        """Raise INVALID_ARGUMENT unless a shape a request declares (before its values are read)
        fits this input's rank, fixed dimensions and bounds: nothing is allocated for a misfit."""
        if not self.fits(dims):
            got = "[" + ",".join(str(d) for d in dims) + "]"
            raise invalid(
                f"input '{self.alias}' has shape {got} but the signature expects {self.shape_text()}"
            )

    def padded(self, array: np.ndarray) -> np.ndarray:
        """A string input padded with "" up to its bounds (a fitting ``array``; others unchanged)."""
        if self.max_shape is None or self.dtype != types_pb2.DT_STRING:
            return array
        widths = [(0, (self._bound(axis) or got) - got) for axis, got in enumerate(array.shape)]
        if not any(after for _, after in widths):
            return array
        return np.pad(array, widths, constant_values=b"")

    def to_proto(self) -> meta_graph_pb2.TensorInfo:
        info = meta_graph_pb2.TensorInfo(name=self.tensor_name, dtype=self.dtype)
        if self.shape is None:
            info.tensor_shape.unknown_rank = True
        else:
            info.tensor_shape.CopyFrom(
                tensor_shape_pb2.TensorShapeProto(
                    dim=[
                        tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in self.shape
                    ]
                )
            )
        return info

    @classmethod
    def from_proto(cls, alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSig:
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        return cls(alias=alias, dtype=info.dtype, shape=shape, tensor_name=info.name)


@dataclass(frozen=True)
class Signature:
    """A named function of a servable: inputs and outputs by alias."""

    name: str
    inputs: dict[str, TensorSig]
    outputs: dict[str, TensorSig]
    method_name: str = PREDICT_METHOD

    def to_proto(self) -> meta_graph_pb2.SignatureDef:
        sig = meta_graph_pb2.SignatureDef(method_name=self.method_name)
        for alias, t in self.inputs.items():
            sig.inputs[alias].CopyFrom(t.to_proto())
        for alias, t in self.outputs.items():
            sig.outputs[alias].CopyFrom(t.to_proto())
        return sig

    @classmethod
    def from_proto(cls, name: str, proto: meta_graph_pb2.SignatureDef) -> Signature:
        return cls(
            name=name,
            inputs={k: TensorSig.from_proto(k, v) for k, v in proto.inputs.items()},
            outputs={k: TensorSig.from_proto(k, v) for k, v in proto.outputs.items()},
            method_name=proto.method_name or PREDICT_METHOD,
        )

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> int:
        """Validate a full input map; returns the batch size (dim 0 shared by all inputs)."""
        sent, wanted = set(inputs), set(self.inputs)
        if sent != wanted:
            extra = ",".join(sorted(sent - wanted))
            missing = ",".join(sorted(wanted - sent))
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{extra}}}. Missing but required: {{{missing}}}."
            )
        batch = None
        for alias, array in inputs.items():
            self.inputs[alias].check(array)
            if array.ndim == 0:
                continue
            if batch is None:
                batch = array.shape[0]
            elif array.shape[0] != batch:
                raise invalid(f"inputs have different batch sizes: {batch} and {array.shape[0]} ('{alias}')")
        return batch if batch is not None else 1

    def padded_inputs(self, inputs: dict[str, np.ndarray], max_elements: int) -> dict[str, np.ndarray]:
        """Checked inputs with every bounded string input padded to its bound (``TensorSig.padded``);
        padding may not take an input past ``max_elements`` (the limit the request was read under)."""
        padded = {alias: self.inputs[alias].padded(array) for alias, array in inputs.items()}
        for alias, array in padded.items():
            if array.size > max_elements:
                raise invalid(
                    f"input '{alias}' padded to shape {list(array.shape)} "
                    f"holds more than {max_elements} elements, "
                    "the server's limit (serving.max_tensor_elements); send smaller batches"
                )
        return padded

    def select_outputs(self, output_filter: list[str] | tuple[str, ...]) -> list[str]:
        """Output aliases to return: all, or the filter (each must exist)."""
        if not output_filter:
            return sorted(self.outputs)
        for alias in output_filter:
            if alias not in self.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                    f"the set {{{','.join(sorted(self.outputs))}}}."
                )
        return list(dict.fromkeys(output_filter))

"""TFLite conversion of the student: full-integer int8 and float16, metadata, parity gate.

- int8: every op integer; weights per-channel int8, activations calibrated on a representative
  data set of training events; input ``int8`` or ``uint8`` as configured. The representative
  set pins the input range to exactly [0, 1], so the input quantization is ``pixel - 128``
  (int8) or ``pixel`` (uint8): an app can feed camera bytes without arithmetic.
- float16: float16 weights (half the bytes; GPU delegates run it natively), float32 in/out.
- Sparse encoding (``Optimize.EXPERIMENTAL_SPARSITY``) is tried for pruned models and kept only
  when the file gets smaller.
- Names of intermediate tensors (debug strings, a sizeable share of a small model) are
  dropped; the signature and its input/output names stay.
- Metadata: TFLite's standard model metadata, written with tflite-support's metadata writers
  (input/output names and descriptions, the input's normalization, ``labels.txt`` on the
  logits output) plus ``event_spec.json`` (frames layout, quantization, variant) as a packed
  associated file; ``ondevice.metadata`` reads it back without TensorFlow. No side files.

Every model takes decoded frames ``[1, K, H, W, C]`` and returns ``logits`` and
``frame_weights`` through the ``serving_default`` signature.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

# tflite-support's metadata modules, imported by path: ``import tflite_support`` also loads its
# Task library, whose pybind types clash with TensorFlow 2.16's ("StatusCode already defined").
try:
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as metadata_fb
    from tensorflow_lite_support.metadata.python import metadata as tflite_metadata
    from tensorflow_lite_support.metadata.python.metadata_writers import (
        metadata_info,
        metadata_writer,
        writer_utils,
    )
except (
    ImportError
) as e:  # its native code links libusb-1.0 (Debian: apt-get install libusb-1.0-0; make setup does)
    raise ImportError(
        f"tflite-support's metadata writers cannot be imported ({e}); install Debian's libusb-1.0-0 "
        "(apt-get install libusb-1.0-0, or make setup) and pip install tflite-support==0.4.4"
    ) from e

from contract import layout
from contract.layout import EventSpec
from ondevice.metadata import EVENT_SPEC_FILE, FORMAT, LABELS_FILE, METADATA_NAME
from ondevice.runtime import lite_runtime

LEGACY_METADATA_NAME = "EVENTPIPE_METADATA"  # the custom JSON entry of earlier versions
VARIANTS = ("int8", "float16", "float32")
INPUT_TYPES = ("int8", "uint8")


@dataclass
class LiteModel:
    """One converted variant: its bytes and how it was made."""

    variant: str
    content: bytes
    sparse: bool
    dense_bytes: int
    sparse_bytes: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "sparse_encoding": self.sparse,
            "dense_encoding_bytes": self.dense_bytes,
            "sparse_encoding_bytes": self.sparse_bytes,
        }


def representative_events(files: list[str], spec: EventSpec, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` decoded training events ``[1, K, H, W, C]`` (a shuffled sample), for calibration.

    The first event gets one pixel at 0.0 and one at 1.0 so the calibrated input range is
    exactly [0, 1] whatever the sample holds.
    """
    ds = layout.dataset(files, spec, 1, shuffle=True, seed=seed)
    events = [batch[layout.FRAMES].numpy().astype(np.float32) for batch in ds.take(max(1, count))]
    if not events:
        raise ValueError(f"no training events in {files} for the representative data set")
    first = events[0].copy()
    first.reshape(-1)[0] = 0.0
    first.reshape(-1)[1] = 1.0
    events[0] = first
    return events


def _concrete_function(model: Any, spec: EventSpec) -> Any:
    # No AutoGraph: the student (and TFMOT's wrappers) has no tensor-dependent Python control
    # flow, and converting every layer's call makes each trace of a QAT model slow
    # (docs/benchmarks.md, "Why the defaults are what they are").
    @tf.function(
        input_signature=[tf.TensorSpec([1, *spec.input_shape], tf.float32, name=layout.DECODED_INPUT)],
        autograph=False,
    )
    def serve(frames: Any) -> dict[str, Any]:
        out = model(frames, training=False)
        return {"logits": out["logits"], "frame_weights": out["frame_weights"]}

    return serve.get_concrete_function()


def _variables_only(model: Any) -> Any:
    """A trackable holding just the model's variables.

    The converter saves its trackable as a SavedModel first; handing it the Keras model makes
    that save trace every layer's call functions (tens of seconds), which the frozen signature
    does not need.
    """

    holder = tf.Module()
    holder.weights = list(model.weights)
    return holder


def convert(
    model: Any,
    spec: EventSpec,
    variant: str,
    *,
    representative: list[np.ndarray] | None = None,
    input_type: str = "int8",
    sparse: bool = False,
    function: Any = None,
) -> bytes:
    """Convert a tf_keras student to one TFLite variant (no metadata yet).

    ``function``: the model's traced signature (``_concrete_function``) when the caller already
    has it; tracing a QAT model takes seconds, and one trace serves every conversion of it.
    """

    if variant not in VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; one of {VARIANTS}")
    function = function if function is not None else _concrete_function(model, spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], _variables_only(model))
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if variant == "int8":
        if input_type not in INPUT_TYPES:
            raise ValueError(f"lite.input_type must be one of {INPUT_TYPES}, got {input_type!r}")
        if not representative:
            raise ValueError("int8 conversion needs a representative data set")
        io_type = tf.int8 if input_type == "int8" else tf.uint8
        converter.optimizations = [tf.lite.Optimize.DEFAULT, *optimizations]
        converter.representative_dataset = _as_generator(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT, *optimizations]
        converter.target_spec.supported_types = [tf.float16]
    else:
        converter.optimizations = optimizations
    with _native_output_captured() as log:
        try:
            return bytes(converter.convert())
        except Exception as e:
            failure = e
    raise RuntimeError(
        f"TFLite {variant} conversion failed: {failure}\nconverter log:\n" + "\n".join(log[-40:])
    )


@contextlib.contextmanager
def _native_output_captured() -> Iterator[list[str]]:
    """Capture what the converter's C++ code prints (absl ``W0000 ...`` lines, quantizer notes).

    It writes to file descriptors 1 and 2 directly, ignoring ``TF_CPP_MIN_LOG_LEVEL``, and
    would bury the run's progress; kept (and shown) only when the conversion fails.
    """
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield lines
        finally:
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def _as_generator(events: list[np.ndarray]) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for event in events:
            yield [event]

    return generate


def _signature_tensors(model_object: Any) -> set[int]:
    keep: set[int] = set()
    for signature in model_object.signatureDefs or []:
        for tensor_map in [*(signature.inputs or []), *(signature.outputs or [])]:
            keep.add(tensor_map.tensorIndex)
    return keep


def strip_internal_names(content: bytes) -> bytes:
    """Drop names of tensors that are neither a signature input nor output (debug strings only)."""

    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    keep = _signature_tensors(model_object)
    for index, subgraph in enumerate(model_object.subgraphs):
        io = set(subgraph.inputs) | set(subgraph.outputs) | (keep if index == 0 else set())
        for tensor_index, tensor in enumerate(subgraph.tensors):
            if tensor_index not in io:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object))


class _GeneralMd(metadata_info.GeneralMd):
    """``GeneralMd`` plus model-level associated files (the writers' ``GeneralMd`` has none)."""

    def __init__(self, files: list[metadata_info.AssociatedFileMd], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files = files

    def create_metadata(self) -> Any:
        model_metadata = super().create_metadata()
        model_metadata.associatedFiles = [f.create_metadata() for f in self.files]
        return model_metadata


def _without_metadata(content: bytes) -> bytes:
    """The flatbuffer alone: no packed files, no earlier ``TFLITE_METADATA``/legacy entry."""
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    drop = {METADATA_NAME, LEGACY_METADATA_NAME}
    kept = []
    for entry in model_object.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name in drop:
            model_object.buffers[entry.buffer].data = None  # the old blob goes; the slot stays
        else:
            kept.append(entry)
    model_object.metadata = kept
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object))


def _output_tensor_names(content: bytes) -> dict[str, str]:
    """Signature output name (``logits``) -> the subgraph tensor's name, which orders metadata."""
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    subgraph = model_object.subgraphs[0]
    (signature,) = [
        s for s in model_object.signatureDefs if s.signatureKey in (b"serving_default", "serving_default")
    ]
    names = {}
    for tensor_map in signature.outputs:
        key = tensor_map.name.decode() if isinstance(tensor_map.name, bytes) else tensor_map.name
        tensor_name = subgraph.tensors[tensor_map.tensorIndex].name
        names[key] = tensor_name.decode() if isinstance(tensor_name, bytes) else tensor_name
    return names


def event_spec_document(metadata: dict[str, Any]) -> dict[str, Any]:
    """What goes into ``event_spec.json``: ``metadata`` less what the standard fields hold.

    Labels (``labels.txt``), normalization (NormalizationOptions), tensor names and the model's
    name/description/version (tensor and model metadata) have one home each.
    """
    doc = {
        k: v for k, v in metadata.items() if k not in ("labels", "outputs", "name", "description", "version")
    }
    doc["input"] = {k: v for k, v in metadata["input"].items() if k not in ("normalization", "name")}
    if "event_spec" in doc:
        doc["event_spec"] = {k: v for k, v in doc["event_spec"].items() if k != "classes"}
    return doc


def embed_metadata(content: bytes, metadata: dict[str, Any]) -> bytes:
    """Write ``metadata`` (as ``build_metadata`` makes it) as standard TFLite metadata.

    tflite-support's ``MetadataWriter``: input image tensor with NormalizationOptions, the
    ``logits`` output as a classification tensor with ``labels.txt`` (TENSOR_AXIS_LABELS),
    ``frame_weights`` as a plain tensor, and ``event_spec.json`` packed at model level.
    Earlier metadata (standard or the legacy JSON entry) is replaced, not added to.
    """
    content = _without_metadata(content)
    inp = metadata["input"]
    channels = int(inp["channels"])
    tensor_names = _output_tensor_names(content)
    if set(tensor_names) != set(metadata["outputs"]):
        raise ValueError(
            f"model outputs {sorted(tensor_names)} but the metadata describes {sorted(metadata['outputs'])}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        labels_path = os.path.join(tmp, LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("".join(f"{label}\n" for label in metadata["labels"]))
        spec_path = os.path.join(tmp, EVENT_SPEC_FILE)
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(event_spec_document(metadata), f, indent=2, sort_keys=True)
        spec_file = metadata_info.AssociatedFileMd(
            spec_path,
            description="eventpipe event spec: frames layout, tensor quantization, variant (JSON)",
            file_type=metadata_fb.AssociatedFileType.DESCRIPTIONS,
        )
        general = _GeneralMd(
            [spec_file], name=metadata.get("name"), description=metadata.get("description"),
            version=metadata.get("version"), author="eventpipe",
        )  # fmt: skip
        norm = inp.get("normalization") or {}
        input_md = metadata_info.InputImageTensorMd(
            name=inp.get("name", layout.DECODED_INPUT),
            description=(
                f"one event: {inp['frames']} frames of {inp['height']}x{inp['width']}x{channels} "
                f"({inp.get('layout', 'NKHWC')}), time order; model value = (pixel - mean) / std"
            ),
            norm_mean=norm.get("mean"), norm_std=norm.get("std"),
            color_space_type=(metadata_fb.ColorSpaceType.RGB if channels == 3
                              else metadata_fb.ColorSpaceType.GRAYSCALE),
            tensor_type=writer_utils.get_input_tensor_types(bytearray(content))[0],
        )  # fmt: skip
        outputs = {
            "logits": metadata_info.ClassificationTensorMd(
                name="logits", description="class scores before softmax; labels: labels.txt",
                label_files=[metadata_info.LabelFileMd(labels_path)], tensor_name=tensor_names["logits"],
            ),
            "frame_weights": metadata_info.TensorMd(
                name="frame_weights", description="frame weight per frame; argmax = the best frame",
                tensor_name=tensor_names["frame_weights"],
            ),
        }  # fmt: skip
        writer = metadata_writer.MetadataWriter.create_from_metadata_info(
            bytearray(content), general_md=general, input_md=[input_md],
            output_md=[outputs[name] for name in metadata["outputs"]],
            associated_files=[labels_path, spec_path],
        )  # fmt: skip
        return bytes(writer.populate())


def display_metadata(content: bytes) -> dict[str, Any]:
    """tflite-support's own reading of the standard metadata (JSON) and packed files."""
    displayer = tflite_metadata.MetadataDisplayer.with_model_buffer(bytearray(content))
    return {
        "metadata": json.loads(displayer.get_metadata_json()),
        "files": {
            name: displayer.get_associated_file_buffer(name)
            for name in displayer.get_packed_associated_file_list()
        },
    }


def _io_details(content: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    interpreter = lite_runtime().interpreter(model_content=content)
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner("serving_default")
    return runner.get_input_details(), runner.get_output_details()


def _tensor_info(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    info: dict[str, Any] = {
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    if np.issubdtype(detail["dtype"], np.integer):
        info["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return info


def build_metadata(
    content: bytes, spec: EventSpec, variant: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What an app needs to use the model with no side files (the TFLite metadata contents)."""
    inputs, outputs = _io_details(content)
    input_info = _tensor_info(inputs[layout.DECODED_INPUT])
    input_info.update(
        {
            "name": layout.DECODED_INPUT,
            "layout": "NKHWC",
            "frames": spec.frames,
            "height": spec.height,
            "width": spec.width,
            "channels": spec.channels,
            "color_space": "RGB" if spec.channels == 3 else "GRAYSCALE",
            "value_range": [0.0, 1.0],
            # TFLite metadata convention: model value = (pixel - mean) / std for uint8 pixels.
            "normalization": {"mean": [0.0] * spec.channels, "std": [255.0] * spec.channels},
            "resize": "bilinear to height x width",
            "short_events": "repeat the last frame up to K frames",
            "frame_order": "time order, oldest first",
        }
    )
    return {
        "format": FORMAT,
        "name": "eventpipe student",
        "description": (
            f"eventpipe {variant} event classifier: {spec.frames} frames of {spec.height}x{spec.width}x"
            f"{spec.channels} -> {spec.num_classes} classes and the best frame"
        ),
        "variant": variant,
        "labels": list(spec.classes),
        "event_spec": spec.to_dict(),
        "input": input_info,
        "outputs": {"logits": "logits", "frame_weights": "frame_weights"},
        "output_tensors": {name: _tensor_info(detail) for name, detail in outputs.items()},
        "postprocessing": {
            "probabilities": "softmax(logits)",
            "class": "labels[argmax(logits)]",
            "best_frame": "argmax(frame_weights)",
        },
        **(extra or {}),
    }


def has_sparsity(model: Any, threshold: float = 0.3) -> bool:
    """Whether any kernel is at least ``threshold`` zeros (worth trying sparse encoding)."""
    for w in model.weights:
        value = w.numpy()
        if value.ndim >= 2 and value.size >= 64 and float(np.mean(value == 0)) >= threshold:
            return True
    return False


def convert_variant(
    model: Any,
    spec: EventSpec,
    variant: str,
    *,
    representative: list[np.ndarray] | None = None,
    input_type: str = "int8",
    try_sparse: bool | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> LiteModel:
    """The smallest encoding of ``variant`` (dense or sparse), names stripped, metadata embedded."""
    function = _concrete_function(model, spec)
    dense = strip_internal_names(
        convert(model, spec, variant, representative=representative, input_type=input_type, function=function)
    )
    content, sparse, sparse_bytes = dense, False, None
    if try_sparse if try_sparse is not None else has_sparsity(model):
        candidate = strip_internal_names(
            convert(
                model,
                spec,
                variant,
                representative=representative,
                input_type=input_type,
                sparse=True,
                function=function,
            )
        )
        sparse_bytes = len(candidate)
        if sparse_bytes < len(dense):
            content, sparse = candidate, True
    metadata = build_metadata(content, spec, variant, {"sparse_encoding": sparse, **(extra_metadata or {})})
    return LiteModel(variant, embed_metadata(content, metadata), sparse, len(dense), sparse_bytes, metadata)


@dataclass
class ParityResult:
    """A TFLite model vs the float student it came from, on every ingested event.

    Agreement needs no label, so the gate counts the train and unlabelled events beside the eval
    split: with a few hundred eval events one disagreement moves it by a third of a point.
    ``eval_agreement`` is the same figure on the eval split alone.
    """

    agreement: float
    events: int
    disagreements: int
    min_agreement: float
    blessed: bool
    eval_agreement: float | None = None
    eval_events: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity(
    reference_predicted: np.ndarray,
    lite_predicted: np.ndarray,
    min_agreement: float,
    eval_events: int | None = None,
) -> ParityResult:
    """The gate: top-1 of the TFLite model equals the float model's on >= ``min_agreement`` of events.

    ``eval_events``: the first that many events are the eval split (reported on their own too).
    """
    if len(reference_predicted) != len(lite_predicted):
        raise ValueError(f"{len(reference_predicted)} reference vs {len(lite_predicted)} TFLite predictions")
    events = int(len(reference_predicted))
    if events == 0:
        return ParityResult(float("nan"), 0, 0, min_agreement, False)
    matches = np.asarray(reference_predicted) == np.asarray(lite_predicted)
    same = int(np.sum(matches))
    agreement = same / events
    eval_agreement = float(np.mean(matches[:eval_events])) if eval_events else None
    return ParityResult(
        agreement,
        events,
        events - same,
        min_agreement,
        agreement >= min_agreement,
        eval_agreement,
        eval_events,
    )

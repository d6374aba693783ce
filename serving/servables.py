"""The two runtimes a model version can be served with: SavedModel (TensorFlow) and TFLite.

A version directory ``<base>/<name>/<version>/`` holds either ``saved_model.pb`` (a
SavedModel; TF Serving's layout) or ``model.tflite`` (LiteRT, else tflite-runtime: the
on-device runtime ``ondevice.runtime.lite_runtime`` chooses). Both expose the same
exported-model contract, so clients do not care which one answers:

- ``serving_default``: ``frames`` string ``[-1, 1..K]`` (encoded PNG/JPEG; short events are
  padded with "", ``bound_frames``);
- ``decoded_frames``: ``frames`` float32 ``[-1, K, H, W, C]`` in [0, 1];
- outputs ``probabilities``, ``logits``, ``class_id``, ``class_name``, ``best_frame``.

A SavedModel serves whatever signatures it has; a TFLite model gets the two above (frames
are decoded with PIL). Every servable is warmed up at load time, so a version that loads but
cannot answer is rejected before it takes traffic: a SavedModel with TF Serving's warm-up file
(``serving.warmup``) replays its records, any other with one synthesized request per signature.
"""

from __future__ import annotations

import abc
import logging
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, saved_model_pb2

from contract import files, layout
from ondevice import frames as framecodec
from ondevice.frames import FrameDecodeError
from ondevice.tflite_model import CONTRACT_OUTPUTS, LiteEventModel, LiteModelError
from serving.signatures import DEFAULT_SIGNATURE, Signature, TensorSig
from serving.status import INTERNAL, INVALID_ARGUMENT, ServingError, invalid
from serving.tensors import MAX_TENSOR_ELEMENTS
from serving.warmup import WarmupError, read_warmup_file, replay, warmup_path

log = logging.getLogger("eventpipe.serving")

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
SERVE_TAG = "serve"
INIT_OP_SIGNATURE = "__saved_model_init_op"

MAX_TFLITE_INTERPRETERS = 8  # per TFLite version; each is single-threaded

TENSORFLOW = "tensorflow"
TFLITE = "tflite"


class LoadError(Exception):
    """A version directory could not be loaded; the message goes into the version's status."""


class Servable(abc.ABC):
    """A loaded model version: signatures and a thread-safe ``run``."""

    platform: str = ""
    runtime: str = ""  # the package and version that runs it, e.g. "ai-edge-litert 1.4.0" (logged at load)
    signatures: dict[str, Signature]
    # Whether merging requests into one call pays off (a batched graph). TFLite models from
    # trainer/lite/tflite.py take one event per invocation, so they run requests on an interpreter
    # pool instead.
    batchable: bool = True
    warmup_records: int = 0  # TF Serving warm-up records replayed at load (0: a synthesized request)

    @abc.abstractmethod
    def run(
        self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        """Run one signature on a batch; each backend (SavedModel, TFLite) implements it."""

    def validate(self, signature: Signature, inputs: dict[str, np.ndarray]) -> None:  # noqa: B027
        """Refuse inputs the runtime must not see (ServingError), before they join a batch.

        The dynamic batcher calls it in each request's own thread and then ``run_validated`` on
        the merged batch, so per-request checks run beside the model call, not serially in it.
        """

    def run_validated(
        self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        """``run`` for inputs that ``validate`` has passed (a backend may then skip its checks)."""
        return self.run(signature, inputs, outputs)

    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """What ``GetModelMetadata`` reports (the model's own SignatureDefs)."""
        return {name: sig.to_proto() for name, sig in self.signatures.items()}

    def signature(self, name: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return sig

    def close(self) -> None:  # noqa: B027  (optional hook: backends with resources override it)
        """Drop references to the runtime (in-flight calls keep their own)."""


def detect_platform(version_dir: str, prefer_tflite: bool = False) -> str:
    """Which runtime a version directory needs; LoadError if it holds no model."""
    has_saved = any(os.path.isfile(os.path.join(version_dir, f)) for f in (SAVED_MODEL_PB, SAVED_MODEL_PBTXT))
    has_tflite = os.path.isfile(os.path.join(version_dir, files.TFLITE_INT8))
    if has_tflite and (prefer_tflite or not has_saved):
        return TFLITE
    if has_saved:
        return TENSORFLOW
    raise LoadError(
        f"{version_dir} holds neither {SAVED_MODEL_PB} (SavedModel) nor {files.TFLITE_INT8} (TFLite)"
    )


def load_servable(
    version_dir: str, prefer_tflite: bool = False, max_tensor_elements: int = MAX_TENSOR_ELEMENTS
) -> Servable:
    """Load and warm up the model in ``version_dir``; LoadError says why it cannot serve."""
    platform = detect_platform(version_dir, prefer_tflite)
    servable: Servable = (
        SavedModelServable(version_dir) if platform == TENSORFLOW else TFLiteServable(version_dir)
    )
    records = warmup_path(version_dir)
    try:
        if platform == TENSORFLOW and os.path.isfile(records):
            servable.warmup_records = replay(servable, read_warmup_file(records), max_tensor_elements)
        else:
            warm_up(servable)
    except WarmupError as e:
        raise LoadError(str(e)) from e
    except ServingError as e:
        raise LoadError(f"warm-up request failed: {e.message}") from e
    return servable


# -- SavedModel ----------------------------------------------------------------------------
def _read_meta_graph(export_dir: str) -> meta_graph_pb2.MetaGraphDef:
    pb = os.path.join(export_dir, SAVED_MODEL_PB)
    saved = saved_model_pb2.SavedModel()
    try:
        if os.path.isfile(pb):
            with open(pb, "rb") as f:
                saved.ParseFromString(f.read())
        else:
            with open(os.path.join(export_dir, SAVED_MODEL_PBTXT), encoding="utf-8") as f:
                text_format.Parse(f.read(), saved)
    except Exception as e:  # noqa: BLE001  (any parse failure means an unusable export)
        raise LoadError(f"cannot parse the SavedModel in {export_dir}: {e}") from e
    for meta in saved.meta_graphs:
        if SERVE_TAG in meta.meta_info_def.tags:
            return meta
    raise LoadError(f"the SavedModel in {export_dir} has no MetaGraph tagged {SERVE_TAG!r}")


def _positional(fn: Any, aliases: Any) -> tuple[list[str] | None, Any]:
    """A restored signature function wrapped in a plain concrete function taking its inputs in
    name order: ``(names, function)``, or ``(None, fn)`` to call ``fn`` by keyword as it is
    (also when its arguments are not the SignatureDef's ``aliases``, as for a TF1 sparse input).

    A restored signature resolves each captured variable in Python on every call (a real share
    of a small model's call: docs/benchmarks.md, "Serving (make bench-serving)"); the wrapper's
    graph calls the same function with them bound once.
    """
    args, kwargs = fn.structured_input_signature
    if args or not kwargs or set(kwargs) != set(aliases):
        return None, fn
    names = sorted(kwargs)
    try:
        wrapper = tf.function(
            lambda *tensors: fn(**dict(zip(names, tensors, strict=True))),
            input_signature=[kwargs[n] for n in names],
            autograph=False,
        )
        return names, wrapper.get_concrete_function()
    except Exception as e:  # noqa: BLE001  (an unusual export still serves, through its own function)
        log.info(
            "a signature is called as restored (slower), since wrapping it failed: %s: %s",
            type(e).__name__,
            e,
        )
        return None, fn


def _tf_error_code(e: tf.errors.OpError) -> str:
    try:
        return error_codes_pb2.Code.Name(e.error_code)
    except ValueError:
        return INTERNAL


class SavedModelServable(Servable):
    """A TensorFlow SavedModel, called through its signature functions."""

    platform = TENSORFLOW
    runtime = f"tensorflow {tf.__version__}"

    def __init__(self, export_dir: str) -> None:
        self.export_dir = export_dir
        self._meta = _read_meta_graph(export_dir)
        try:
            self._loaded = tf.saved_model.load(export_dir, tags=[SERVE_TAG])
        except Exception as e:  # noqa: BLE001  (TF raises many types for a broken export)
            raise LoadError(f"tf.saved_model.load failed: {type(e).__name__}: {e}") from e
        restored = dict(self._loaded.signatures)
        self.signatures = {
            name: Signature.from_proto(name, proto)
            for name, proto in self._meta.signature_def.items()
            if name in restored
        }
        if not self.signatures:
            raise LoadError(f"the SavedModel in {export_dir} has no callable signatures")
        self.signatures = bound_frames(self.signatures, self.event_spec())
        self._functions = {
            name: _positional(restored[name], sig.inputs) for name, sig in self.signatures.items()
        }

    def signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        return dict(self._meta.signature_def)

    def validate(self, signature: Signature, inputs: dict[str, np.ndarray]) -> None:
        try:  # tf.io.decode_image allocates whatever a header declares: bound it first
            for value in inputs.values():
                if value.dtype == object:
                    for frame in value.reshape(-1):
                        framecodec.check_frame_pixels(frame)
        except framecodec.FrameDecodeError as e:
            raise ServingError(INVALID_ARGUMENT, str(e)) from None

    def run(
        self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        self.validate(signature, inputs)
        return self.run_validated(signature, inputs, outputs)

    def run_validated(
        self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        names, fn = self._functions[signature.name]
        try:
            if names is None:
                result = fn(**{k: tf.constant(v) for k, v in inputs.items()})
            else:
                result = fn(*[tf.constant(inputs[k]) for k in names])
            return {k: result[k].numpy() for k in outputs}
        except tf.errors.OpError as e:
            raise ServingError(_tf_error_code(e), e.message) from None
        except (TypeError, ValueError) as e:
            raise ServingError(INVALID_ARGUMENT, str(e)) from None

    def event_spec(self) -> layout.EventSpec | None:
        path = os.path.join(self.export_dir, "assets.extra", layout.SPEC_FILE)
        return layout.EventSpec.load(path) if os.path.isfile(path) else None

    def close(self) -> None:  # noqa: B027  (optional hook: backends with resources override it)
        self._functions = {}
        self._loaded = None


# -- TFLite --------------------------------------------------------------------------------
class TFLiteServable(Servable):
    """A ``model.tflite`` behind the contract's two signatures (frames decoded with PIL)."""

    platform = TFLITE
    batchable = False

    def __init__(self, version_dir: str) -> None:
        path = os.path.join(version_dir, files.TFLITE_INT8)
        # One single-threaded interpreter per core: multi-threaded TFLite spin-waits and collapses
        # when cores are shared, while independent interpreters run requests side by side.
        workers = max(1, min(MAX_TFLITE_INTERPRETERS, os.cpu_count() or 1))
        try:
            models = [LiteEventModel(path, num_threads=1) for _ in range(workers)]
        except LiteModelError as e:
            raise LoadError(str(e)) from e
        self.model = m = models[0]
        self.runtime = str(m.runtime)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        for model in models:
            self._pool.put(model)
        self._workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tflite") if workers > 1 else None
        out_types = {
            "probabilities": (types_pb2.DT_FLOAT, (None, m.num_classes)),
            "logits": (types_pb2.DT_FLOAT, (None, m.num_classes)),
            "class_id": (types_pb2.DT_INT64, (None,)),
            "class_name": (types_pb2.DT_STRING, (None,)),
            "best_frame": (types_pb2.DT_INT64, (None,)),
        }
        outputs = {k: TensorSig(k, out_types[k][0], out_types[k][1], f"{k}:0") for k in CONTRACT_OUTPUTS}
        self.signatures = {
            DEFAULT_SIGNATURE: Signature(
                DEFAULT_SIGNATURE,
                {
                    layout.SERVING_INPUT: TensorSig(
                        layout.SERVING_INPUT,
                        types_pb2.DT_STRING,
                        (None, None),
                        "serving_default_frames:0",
                        max_shape=(None, m.frames),
                    )
                },
                outputs,
            ),
            layout.DECODED_SIGNATURE: Signature(
                layout.DECODED_SIGNATURE,
                {
                    layout.DECODED_INPUT: TensorSig(
                        layout.DECODED_INPUT,
                        types_pb2.DT_FLOAT,
                        (None, *m.input_shape),
                        "decoded_frames_frames:0",
                    )
                },
                outputs,
            ),
        }

    def run(
        self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        (value,) = inputs.values()
        encoded = signature.name == DEFAULT_SIGNATURE
        rows = [[bytes(f) for f in row] for row in value] if encoded else value
        try:
            if len(rows) <= 1 or self._executor is None:
                result = self._on_one_interpreter(rows, encoded)
            else:
                bounds = np.linspace(0, len(rows), min(self._workers, len(rows)) + 1).astype(int)
                chunks = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
                parts = list(self._executor.map(lambda c: self._on_one_interpreter(c, encoded), chunks))
                result = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
        except FrameDecodeError as e:
            raise ServingError(INVALID_ARGUMENT, str(e)) from None
        except LiteModelError as e:
            raise ServingError(INVALID_ARGUMENT, str(e)) from None
        except (ValueError, RuntimeError) as e:
            raise ServingError(INTERNAL, f"TFLite inference failed: {e}") from None
        return {k: result[k] for k in outputs}

    def _on_one_interpreter(self, rows, encoded: bool) -> dict[str, np.ndarray]:
        model = self._pool.get()
        try:
            return model.predict_encoded(rows) if encoded else model.predict_decoded(rows)
        finally:
            self._pool.put(model)

    def event_spec(self) -> layout.EventSpec:
        m = self.model
        return layout.EventSpec(m.labels, m.frames, m.height, m.width, m.channels)


def bound_frames(signatures: dict[str, Signature], spec: layout.EventSpec | None) -> dict[str, Signature]:
    """Signatures whose encoded-frames input (``[-1, K]`` or ``[-1, -1]`` strings) takes 1..K frames.

    The server pads short events with "" before they reach the model (so batches of events with
    different frame counts merge, and exports older than the ``[-1, -1]`` signature take them too).
    """
    if spec is None:
        return signatures
    bounded = {}
    for name, sig in signatures.items():
        t = sig.inputs.get(layout.SERVING_INPUT)
        if (
            t is not None
            and t.dtype == types_pb2.DT_STRING
            and t.shape is not None
            and len(t.shape) == 2
            and t.shape[1] in (None, spec.frames)
        ):
            frames = replace(t, shape=(t.shape[0], None), max_shape=(None, spec.frames))
            sig = replace(sig, inputs={**sig.inputs, layout.SERVING_INPUT: frames})
        bounded[name] = sig
    return bounded


# -- warm-up -------------------------------------------------------------------------------
def warm_up_inputs(signature: Signature, spec: layout.EventSpec | None) -> dict[str, np.ndarray] | None:
    """A one-row request for ``signature`` built from its input specs, or None if unknowable."""
    inputs: dict[str, np.ndarray] = {}
    for alias, t in signature.inputs.items():
        if t.shape is None or not t.shape:
            return None
        dims = [
            d if d is not None else (t.max_shape or t.shape)[axis] for axis, d in enumerate(t.shape) if axis
        ]
        if any(d is None for d in dims):
            return None
        shape = (1, *dims)
        if t.dtype == types_pb2.DT_STRING:
            if spec is None or alias != layout.SERVING_INPUT or len(shape) != 2:
                return None
            frame = np.full(spec.frame_shape, 128, dtype=np.uint8)
            png = framecodec.encode_png(frame)
            arr = np.empty(shape, dtype=object)
            arr[:] = png
            inputs[alias] = arr
        else:
            inputs[alias] = np.zeros(shape, dtype=t.numpy_dtype)
    return inputs


def warm_up(servable: Any) -> None:
    """Run one request through every signature whose input can be synthesized."""
    spec = servable.event_spec()
    for sig in servable.signatures.values():
        inputs = warm_up_inputs(sig, spec)
        if inputs is None:
            continue
        out = servable.run(sig, inputs, sorted(sig.outputs))
        for alias, value in out.items():
            if value.shape[:1] != (1,):
                raise ServingError(
                    INTERNAL,
                    f"signature {sig.name!r} output {alias!r} has shape {list(value.shape)} for one row",
                )

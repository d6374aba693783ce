"""Classify events with an eventpipe ``.tflite`` file using only an on-device interpreter and numpy.

This is what a device (or the on-device runner) needs: the model file alone. Labels, the
frames layout and the input/output quantization come from the metadata embedded in the file
(``ondevice.metadata``). The interpreter is chosen here and nowhere else (``lite_runtime``):
LiteRT (``ai_edge_litert``, the successor of tflite-runtime, much faster on our int8 student:
docs/benchmarks.md, "TFLite runtimes"),
then ``tflite_runtime``, then ``tensorflow.lite`` only where TensorFlow is installed anyway.
TensorFlow is never imported unless it is that last resort.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ondevice.metadata import read_metadata

SIGNATURE = "serving_default"
# Forces one runtime by name (benchmarks measure each in its own process; a test or an app can pin one).
RUNTIME_ENV = "EVENTPIPE_TFLITE_RUNTIME"
# name -> (interpreter module, distribution), in order of preference.
RUNTIMES = {
    "ai-edge-litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow.lite.python.interpreter", "tensorflow"),
}
ON_DEVICE_RUNTIMES = ("ai-edge-litert", "tflite-runtime")
INSTALL_HINT = "pip install ai-edge-litert==1.4.0 (or tflite-runtime==2.14.0)"


class RuntimeUnavailable(ImportError):
    """No usable TFLite interpreter (or not the one asked for) can be imported."""


@dataclass(frozen=True)
class LiteRuntime:
    """The interpreter package a process runs ``.tflite`` files with: reports name it."""

    name: str
    version: str
    module: str
    interpreter: Any

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "module": self.module}

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _load(name: str) -> LiteRuntime:
    module_name, distribution = RUNTIMES[name]
    module = importlib.import_module(module_name)  # ImportError when absent or blocked
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # vendored copies without dist-info
        top = importlib.import_module(module_name.split(".")[0])
        version = str(getattr(top, "__version__", "unknown"))
    return LiteRuntime(name, version, module_name, module.Interpreter)


@functools.cache
def lite_runtime(allow_tensorflow: bool = True) -> LiteRuntime:
    """The runtime this process uses: ``$EVENTPIPE_TFLITE_RUNTIME`` if set, else the first importable.

    ``allow_tensorflow=False``: on-device interpreters only (the server and device-run must
    behave as on a device, where TensorFlow is absent).
    """
    forced = os.environ.get(RUNTIME_ENV, "").strip()
    allowed = RUNTIMES if allow_tensorflow else ON_DEVICE_RUNTIMES
    if forced:
        if forced not in allowed:
            raise RuntimeUnavailable(f"{RUNTIME_ENV}={forced!r}: expected one of {', '.join(allowed)}")
        try:
            return _load(forced)
        except ImportError as e:
            raise RuntimeUnavailable(f"{RUNTIME_ENV}={forced!r} but it cannot be imported: {e}") from e
    failures = []
    for name in allowed:
        try:
            return _load(name)
        except ImportError as e:
            failures.append(f"{name}: {e}")
    raise RuntimeUnavailable(f"no TFLite interpreter can be imported ({'; '.join(failures)}); {INSTALL_HINT}")


def interpreter_class() -> Any:
    """The chosen runtime's ``Interpreter`` (see ``lite_runtime``)."""
    return lite_runtime().interpreter


def _quantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * np.float32(scale)


class LiteEventClassifier:
    """One ``.tflite`` event model: ``[K, H, W, C]`` float frames in [0, 1] -> class, best frame."""

    def __init__(self, model: str | bytes, num_threads: int = 1, runtime: LiteRuntime | None = None) -> None:
        if isinstance(model, str):
            with open(model, "rb") as f:
                model = f.read()
        self.metadata = read_metadata(model)
        self.labels: list[str] = list(self.metadata["labels"])
        self.runtime = runtime or lite_runtime()
        self.interpreter = self.runtime.interpreter(model_content=model, num_threads=num_threads)
        # Allocate before taking the signature runner: tflite_runtime refuses to allocate while
        # a runner holds the interpreter, and its runner does not allocate by itself. The runner
        # must not outlive this method: LiteRT refuses ``invoke`` while one holds the tensors.
        self.interpreter.allocate_tensors()
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        self._input = runner.get_input_details()[self.metadata["input"]["name"]]
        outputs = runner.get_output_details()
        self._logits = outputs[self.metadata["outputs"]["logits"]]
        self._weights = outputs[self.metadata["outputs"]["frame_weights"]]
        self.input_shape = tuple(int(d) for d in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """Float frames ``[K, H, W, C]`` (or ``[1, K, H, W, C]``) in [0, 1] -> the model's input tensor."""
        frames = np.asarray(frames, dtype=np.float32).reshape(self.input_shape)
        return _quantize(frames, self._input)

    def prepare_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels ``[K, H, W, C]`` -> input, using the metadata's normalization ``(p - mean) / std``."""
        norm = self.metadata["input"]["normalization"]
        mean = np.asarray(norm["mean"], np.float32)
        std = np.asarray(norm["std"], np.float32)
        return self.prepare((np.asarray(pixels, np.float32) - mean) / std)

    def invoke(self, prepared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one prepared input; returns dequantized ``(logits [C], frame_weights [K])``."""
        self.interpreter.set_tensor(self._input["index"], prepared)
        self.interpreter.invoke()
        logits = _dequantize(self.interpreter.get_tensor(self._logits["index"]), self._logits)
        weights = _dequantize(self.interpreter.get_tensor(self._weights["index"]), self._weights)
        return logits.reshape(-1), weights.reshape(-1)

    def classify(self, frames: np.ndarray) -> dict[str, Any]:
        """The exported-model outputs for one event of float frames in [0, 1]."""
        logits, weights = self.invoke(self.prepare(frames))
        shifted = np.exp(logits - logits.max())
        class_id = int(np.argmax(logits))
        return {
            "probabilities": shifted / shifted.sum(),
            "logits": logits,
            "class_id": class_id,
            "class_name": self.labels[class_id],
            "best_frame": int(np.argmax(weights)),
        }

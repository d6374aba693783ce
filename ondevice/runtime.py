"""Classify events with an eventpipe ``.tflite`` file using only ``tflite_runtime`` and numpy.

This is what a device (or the on-device runner) needs: the model file alone. Labels, the
frames layout and the input/output quantization come from the metadata embedded in the file
(``ondevice.metadata``). TensorFlow is never imported here; ``tensorflow.lite`` is used only
when ``tflite_runtime`` is not installed (e.g. on a workstation without it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ondevice.metadata import read_metadata

SIGNATURE = "serving_default"


def interpreter_class() -> Any:
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:  # a workstation without tflite-runtime
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter


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

    def __init__(self, model: str | bytes, num_threads: int = 1) -> None:
        if isinstance(model, str):
            with open(model, "rb") as f:
                model = f.read()
        self.metadata = read_metadata(model)
        self.labels: list[str] = list(self.metadata["labels"])
        self.interpreter = interpreter_class()(model_content=model, num_threads=num_threads)
        # Allocate before taking the signature runner: tflite_runtime refuses to allocate while
        # a runner holds the interpreter, and its runner does not allocate by itself.
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

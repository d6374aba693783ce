"""Batches of encoded events through an eventpipe ``.tflite`` file, without TensorFlow.

Shared by the on-device runner and the server's TFLite backend. The per-event model call,
quantization and metadata handling are ``ondevice.runtime.LiteEventClassifier`` — the
same code the productionize parity gate runs — so what is served is what was verified.
This module adds what serving needs on top: decoding PNG/JPEG frames with PIL
(``ondevice.frames``, TensorFlow's decoding semantics), normalization from the metadata,
batches, thread safety, and the exported-model contract's output arrays.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from contract import layout
from ondevice import frames as framecodec
from ondevice.frames import MAX_FRAME_PIXELS
from ondevice.metadata import MetadataError
from ondevice.runtime import LiteEventClassifier, LiteRuntime, RuntimeUnavailable, lite_runtime

# The outputs every eventpipe servable answers with (the SavedModel signatures' names).
CONTRACT_OUTPUTS = (
    layout.OUT_PROBABILITIES,
    layout.OUT_LOGITS,
    layout.OUT_CLASS_ID,
    layout.OUT_CLASS,
    layout.OUT_BEST_FRAME,
)


class LiteModelError(ValueError):
    """The file is not an eventpipe TFLite model (unreadable, no metadata, wrong tensors)."""


def on_device_runtime() -> LiteRuntime:
    """The on-device path runs on LiteRT or ``tflite_runtime``, never TensorFlow's interpreter."""
    try:
        return lite_runtime(allow_tensorflow=False)
    except RuntimeUnavailable as e:
        raise LiteModelError(str(e)) from e


class LiteEventModel:
    """An eventpipe ``.tflite`` model: ``decode``, ``predict_decoded``, ``predict_encoded``."""

    def __init__(
        self, path: str, num_threads: int | None = None, max_frame_pixels: int = MAX_FRAME_PIXELS
    ) -> None:
        self.max_frame_pixels = max_frame_pixels  # a frame whose header declares more is refused undecoded
        self.runtime = on_device_runtime()
        if not os.path.isfile(path):
            raise LiteModelError(f"TFLite model {path!r} does not exist")
        with open(path, "rb") as f:
            content = f.read()
        self.path = path
        self.size_bytes = len(content)
        try:
            self._classifier = LiteEventClassifier(
                content, num_threads=num_threads or 1, runtime=self.runtime
            )
        except MetadataError as e:
            raise LiteModelError(
                f"{path}: {e}; convert the model with trainer/lite/tflite.py, "
                "which embeds labels and normalization"
            ) from e
        except (KeyError, ValueError, RuntimeError) as e:
            raise LiteModelError(
                f"{path}: not a usable eventpipe TFLite model: {type(e).__name__}: {e}"
            ) from e
        self.metadata = self._classifier.metadata
        inp = self.metadata["input"]
        self.frames, self.height, self.width, self.channels = (
            int(inp["frames"]),
            int(inp["height"]),
            int(inp["width"]),
            int(inp["channels"]),
        )
        if tuple(self._classifier.input_shape[1:]) != self.input_shape:
            raise LiteModelError(
                f"{path}: metadata says frames {list(self.input_shape)} but the model input is "
                f"{list(self._classifier.input_shape)}"
            )
        norm = inp.get("normalization") or {"mean": [0.0] * self.channels, "std": [255.0] * self.channels}
        self.mean = np.asarray(norm["mean"], np.float32)
        self.std = np.asarray(norm["std"], np.float32)
        self._lock = threading.Lock()

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._classifier.labels)

    @property
    def num_classes(self) -> int:
        return len(self._classifier.labels)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.height, self.width, self.channels)

    @property
    def input_dtype(self) -> np.dtype:
        return self._classifier.input_dtype

    def decode(self, events: Sequence[Sequence[bytes]]) -> np.ndarray:
        """Encoded events (PNG/JPEG bytes, "" pads) -> float32 ``[B, K, H, W, C]`` in [0, 1]."""
        return framecodec.decode_events(
            events, self.frames, self.height, self.width, self.channels, self.max_frame_pixels
        )

    def predict_decoded(self, decoded: np.ndarray) -> dict[str, np.ndarray]:
        """float32 ``[B, K, H, W, C]`` in [0, 1] -> the contract's outputs as arrays."""
        decoded = np.asarray(decoded, dtype=np.float32)
        if decoded.ndim != 5 or tuple(decoded.shape[1:]) != self.input_shape:
            raise LiteModelError(
                f"frames must have shape [B, {', '.join(map(str, self.input_shape))}], "
                f"got {list(decoded.shape)}"
            )
        batch = decoded.shape[0]
        logits = np.zeros((batch, self.num_classes), np.float32)
        weights = np.zeros((batch, self.frames), np.float32)
        pixels = decoded * np.float32(255.0)  # the metadata's normalization is in pixel units
        with self._lock:  # one interpreter: calls must not interleave
            for i in range(batch):
                logits[i], weights[i] = self._classifier.invoke(self._classifier.prepare_pixels(pixels[i]))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        class_id = np.argmax(logits, axis=-1).astype(np.int64)
        names = np.empty(batch, dtype=object)
        names[:] = [self.labels[c].encode("utf-8") for c in class_id]
        return {
            layout.OUT_PROBABILITIES: (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32),
            layout.OUT_LOGITS: logits,
            layout.OUT_CLASS_ID: class_id,
            layout.OUT_CLASS: names,
            layout.OUT_BEST_FRAME: np.argmax(weights, axis=-1).astype(np.int64),
        }

    def predict_encoded(self, events: Sequence[Sequence[bytes]]) -> dict[str, np.ndarray]:
        return self.predict_decoded(self.decode(events))

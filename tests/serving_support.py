"""Small real models and server processes for the serving tests and benchmark.

Models are tiny tf_keras event models ({"logits", "frame_weights"}) exported with
``trainer.models.export.export_saved_model`` and converted with ``trainer.productionize.lite.convert_variant``,
the pipeline's own exporter and converter. Version 1 always answers "person", version 2
"vehicle" (a large logit bias), so a test can tell which version answered.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

import serving.process
from contract.layout import EventSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = EventSpec(classes=("empty", "person", "vehicle"), frames=3, height=8, width=8, channels=3)
ANSWER = {1: "person", 2: "vehicle"}  # what each version predicts for any input


def tiny_model(spec: EventSpec, answer: str, seed: int = 0):
    """A per-frame conv + attention pooling model whose logits favour ``answer``."""
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    frames = keras.Input(spec.input_shape, name="frames")
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, padding="same", activation="relu"))(frames)
    x = keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D())(x)  # [B, K, 4]
    scores = keras.layers.Dense(1)(x)  # [B, K, 1]
    weights = keras.layers.Softmax(axis=1)(scores)
    pooled = keras.layers.Flatten()(keras.layers.Dot(axes=1)([weights, x]))  # [B, 4]
    logits = keras.layers.Dense(spec.num_classes, name="logits")(pooled)
    model = keras.Model(frames, {"logits": logits, "frame_weights": keras.layers.Flatten()(weights)})
    kernel, bias = model.get_layer("logits").get_weights()
    bias[:] = 0.0
    bias[spec.class_id(answer)] = 8.0
    model.get_layer("logits").set_weights([kernel, bias])
    return model


@functools.cache
def _root() -> str:
    root = tempfile.mkdtemp(prefix="eventpipe-serving-models-")
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def keras_model(version: int):
    return tiny_model(SPEC, ANSWER[version], seed=version)


@functools.cache
def saved_model(version: int) -> str:
    """Version ``version`` exported as the pipeline's SavedModel (built once per process)."""
    from trainer.models.export import export_saved_model

    return export_saved_model(keras_model(version), SPEC, os.path.join(_root(), f"saved_v{version}"))


@functools.cache
def tflite_model(version: int, variant: str = "int8") -> str:
    """Version ``version`` converted to TFLite with embedded metadata (built once per process)."""
    from trainer.productionize.lite import convert_variant

    rng = np.random.default_rng(0)
    representative = [rng.random((1, *SPEC.input_shape), dtype=np.float32) for _ in range(4)]
    lite = convert_variant(keras_model(version), SPEC, variant, representative=representative, try_sparse=False)
    path = os.path.join(_root(), f"lite_{variant}_v{version}.tflite")
    with open(path, "wb") as f:
        f.write(lite.content)
    return path


def push_saved_model(src: str, model_dir: str, version: int) -> str:
    """Copy a SavedModel to ``<model_dir>/<version>`` atomically (copy aside, then rename)."""
    tmp = os.path.join(model_dir, f".tmp-{version}")
    shutil.copytree(src, tmp)
    final = os.path.join(model_dir, str(version))
    os.rename(tmp, final)
    return final


def push_tflite(src: str, model_dir: str, version: int) -> str:
    tmp = os.path.join(model_dir, f".tmp-{version}")
    os.makedirs(tmp)
    shutil.copy(src, os.path.join(tmp, "model.tflite"))
    final = os.path.join(model_dir, str(version))
    os.rename(tmp, final)
    return final


def frames_png(count: int, seed: int = 0) -> list[bytes]:
    from ondevice.frames import encode_png

    rng = np.random.default_rng(seed)
    return [encode_png(rng.integers(0, 256, SPEC.frame_shape, dtype=np.uint8)) for _ in range(count)]


def png_declaring(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares ``width`` x ``height`` 8-bit RGB pixels (a decompression
    bomb's first step: decoders that trust the header allocate it all)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def b64_instance(frames: list[bytes]) -> list[dict]:
    return [{"b64": base64.b64encode(f).decode("ascii")} for f in frames]


class ServerProcess(serving.process.ServerProcess):
    """The server, already listening when constructed; ``wait_status`` polls its REST status."""

    def __init__(self, base: str, name: str, *extra: str, env: dict | None = None, timeout: float = 90.0) -> None:
        super().__init__(base, name, *extra, env=env)
        try:
            self.wait_listening(timeout)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_tail()

    def wait_status(self, name: str, predicate, timeout: float = 60.0) -> list[dict]:
        """Poll GET /v1/models/NAME until ``predicate(model_version_status)`` holds."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = get_json(f"{self.url}/v1/models/{name}")[1].get("model_version_status", [])
                if predicate(last):
                    return last
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"status never satisfied the condition; last {last}\n{self.log()}")


def available(versions: list[int]):
    """Predicate: exactly these versions are AVAILABLE."""
    return lambda statuses: sorted(int(s["version"]) for s in statuses if s["state"] == "AVAILABLE") == sorted(versions)


def request(url: str, body: bytes | None = None, method: str | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str) -> tuple[int, dict]:
    code, body = request(url)
    return code, json.loads(body)


def post_json(url: str, payload) -> tuple[int, dict]:
    code, body = request(url, json.dumps(payload).encode())
    return code, json.loads(body)

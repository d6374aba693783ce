"""SavedModel warm-up records: TF Serving's ``assets.extra/tf_serving_warmup_requests``.

The pusher writes real eval events into every pushed SavedModel as a TFRecord file of
``PredictionLog`` records (one ``PredictRequest`` per event, what a client sends), and the
server replays them on a version before it is AVAILABLE, as ``tensorflow_model_server``
does with the same file: the first real requests after a load do not pay for building and
tracing the graph. A record that fails to replay fails the load, as in TF Serving.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from contract import layout
from serving.signatures import DEFAULT_SIGNATURE
from serving.status import ServingError
from serving.tensors import array_to_proto, proto_inputs

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving refuses a warm-up file with more records than this
MAX_FILE_BYTES = 64 * 1024 * 1024  # every record is held until replayed: bound the whole file


class WarmupError(Exception):
    """The warm-up file cannot be read or one of its records does not run."""


def warmup_path(saved_model_dir: str) -> str:
    return os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)


def predict_logs(frames: np.ndarray, model_name: str) -> list[prediction_log_pb2.PredictionLog]:
    """One ``serving_default`` request per event of ``frames`` (``[N, K]`` encoded frame bytes)."""
    logs = []
    for event in np.asarray(frames, dtype=object):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        request.inputs[layout.SERVING_INPUT].CopyFrom(
            array_to_proto(np.asarray(event, dtype=object)[None, :])
        )
        logs.append(
            prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        )
    return logs


def write_warmup_file(saved_model_dir: str, logs: list[prediction_log_pb2.PredictionLog]) -> str:
    """Write ``logs`` as the SavedModel's warm-up file; returns its path."""
    if not 0 < len(logs) <= MAX_RECORDS:
        raise ValueError(f"a warm-up file holds 1..{MAX_RECORDS} records, got {len(logs)}")
    path = warmup_path(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(path: str) -> list[prediction_log_pb2.PredictionLog]:
    """The records of a warm-up file; WarmupError for a corrupt, oversized or foreign file."""
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise WarmupError(f"{path}: {size} bytes of warm-up records (limit {MAX_FILE_BYTES})")
    logs = []
    try:
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i >= MAX_RECORDS:
                raise WarmupError(f"{path}: more than {MAX_RECORDS} warm-up records (TF Serving's limit)")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(raw)
            except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends)
                raise WarmupError(f"{path}: record {i} is not a PredictionLog: {e}") from e
            logs.append(log)
    except tf.errors.OpError as e:
        raise WarmupError(f"{path}: not a readable TFRecord file: {e.message}") from e
    return logs


def replay(servable: Any, logs: list[prediction_log_pb2.PredictionLog], max_tensor_elements: int) -> int:
    """Run every record on ``servable`` (as the gRPC front end would); returns the count."""
    for i, log in enumerate(logs):
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise WarmupError(
                f"warm-up record {i} is a {kind or 'empty'} record; "
                "eventpipe models serve predict requests only"
            )
        request = log.predict_log.request
        try:
            signature = servable.signature(request.model_spec.signature_name)
            inputs = proto_inputs(request.inputs, signature, max_tensor_elements)
            signature.check_inputs(inputs)
            servable.run(signature, inputs, signature.select_outputs(list(request.output_filter)))
        except ServingError as e:
            raise WarmupError(f"warm-up record {i} failed: {e.message}") from e
    return len(logs)

"""``eventpipe serve`` driven the way a TF Serving user drives ``tensorflow_model_server``: a
``--model_config_file`` with two models, ``--batching_parameters_file``,
``--monitoring_config_file``, warm-up records, and ``HandleReloadConfigRequest``; answered
through the real ``tensorflow_serving`` stubs and REST."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from fixtures import serving_support as ss

pytestmark = pytest.mark.e2e

METRICS = "/metrics/eventpipe"
WARMUP_EVENTS = 5


def _events(n: int, seed: int = 0) -> np.ndarray:
    frames = np.empty((n, ss.SPEC.frames), dtype=object)
    for i in range(n):
        frames[i] = ss.frames_png(ss.SPEC.frames, seed=seed + i)
    return frames


def _config_text(student_dir, teacher_dir) -> str:
    return f"""
model_config_list {{
  config {{
    name: "student"
    base_path: "{student_dir}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "teacher"
    base_path: "{teacher_dir}"
    model_platform: "tensorflow"
  }}
}}
"""


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """student (versions 1 and 2, labelled) and teacher (version 1, pushed with warm-up records)."""
    from components.pusher.push import push_saved_model
    from serving.warmup import predict_logs

    root = tmp_path_factory.mktemp("tfs")
    student_dir, teacher_dir = root / "serving" / "student", root / "serving" / "teacher"
    student_dir.mkdir(parents=True)
    ss.push_saved_model(ss.saved_model(1), str(student_dir), 1)
    ss.push_saved_model(ss.saved_model(2), str(student_dir), 2)
    pushed = push_saved_model(
        ss.saved_model(1), str(root / "serving"), "teacher", predict_logs(_events(WARMUP_EVENTS), "teacher")
    )
    assert pushed["version"] == 1 and pushed["warmup_requests"] == WARMUP_EVENTS
    config = root / "models.config"
    config.write_text(_config_text(student_dir, teacher_dir))
    (root / "batching.txt").write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 50000 }\nnum_batch_threads { value: 2 }\n"
    )
    (root / "monitoring.txt").write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
    server = ss.ServerProcess(
        None, None, "--model_config_file", str(config), "--enable_batching",
        "--batching_parameters_file", str(root / "batching.txt"),
        "--monitoring_config_file", str(root / "monitoring.txt"), "--tensorflow_intra_op_parallelism", "1",
    )  # fmt: skip
    try:
        server.wait_status("student", ss.available([1, 2]))
        server.wait_status("teacher", ss.available([1]))
        yield server, root
    finally:
        server.stop()


def _rest_predict(server, path: str, frames) -> dict:
    body = json.dumps({"instances": [{"frames": ss.b64_instance(list(frames))}]}).encode()
    request = urllib.request.Request(f"{server.url}/v1/models/{path}:predict", body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_both_models_answer_rest_and_grpc_by_name(two_models):
    server, _ = two_models
    event = _events(1, seed=7)[0]
    assert _rest_predict(server, "student/labels/stable", event)["predictions"][0]["class_name"] == "person"
    assert _rest_predict(server, "student/labels/canary", event)["predictions"][0]["class_name"] == "vehicle"
    assert (
        _rest_predict(server, "student", event)["predictions"][0]["class_name"] == "vehicle"
    )  # latest of 1, 2
    assert _rest_predict(server, "teacher", event)["predictions"][0]["class_name"] == "person"

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for name, label, answer in [("student", "canary", b"vehicle"), ("teacher", "", b"person")]:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            if label:
                request.model_spec.version_label = label
            request.inputs["frames"].CopyFrom(tf.make_tensor_proto(np.array([list(event)], dtype=object)))
            response = stub.Predict(request, timeout=30)
            assert response.model_spec.name == name
            assert tf.make_ndarray(response.outputs["class_name"]).tolist() == [answer]
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "student"}), timeout=30
        )
        assert sorted(s.version for s in status.model_version_status) == [1, 2]
        with pytest.raises(grpc.RpcError) as err:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "nobody"
            stub.Predict(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_warmup_records_are_prediction_logs_and_are_replayed_before_available(two_models):
    server, root = two_models
    path = root / "serving" / "teacher" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    logs = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        logs.append(prediction_log_pb2.PredictionLog.FromString(raw))
    assert len(logs) == WARMUP_EVENTS
    request = logs[0].predict_log.request
    assert request.model_spec.name == "teacher" and request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["frames"]).shape == (1, ss.SPEC.frames)
    assert re.search(
        rf"teacher version 1 available \(tensorflow on .*, {WARMUP_EVENTS} warm-up records replayed\)",
        server.log(),
    )
    assert re.search(
        r"student version 2 available \(tensorflow on .*, 0 warm-up records replayed\)", server.log()
    )


def _batch_histogram(server) -> tuple[float, float, float]:
    """(calls with at most 4 rows, calls, rows) of student version 1's serving_default so far."""
    with urllib.request.urlopen(f"{server.url}{METRICS}", timeout=30) as r:
        text = r.read().decode()
    labels = r'model="student",signature="serving_default",version="1"'

    def value(pattern: str) -> float:
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    return (
        value(rf'eventpipe_serving_batch_size_bucket\{{le="4.0",{labels}\}} (\S+)'),
        value(rf"eventpipe_serving_batch_size_count\{{{labels}\}} (\S+)"),
        value(rf"eventpipe_serving_batch_size_sum\{{{labels}\}} (\S+)"),
    )


def test_tensorflow_parallelism_flags_reach_the_server(two_models):
    server, _ = two_models
    assert "TensorFlow thread pools: intra_op 1, inter_op 0" in server.log()


def _burst(server, event, clients: int) -> None:
    """``clients`` REST predicts released together."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients)

    def call() -> None:
        try:
            barrier.wait(timeout=30)
            _rest_predict(server, "student/versions/1", event)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_batching_parameters_file_takes_effect(two_models):
    """max_batch_size 4 from the file: concurrent requests merge, never past 4 rows.

    Whether requests overlap is up to the scheduler (on a busy machine a burst can arrive one
    by one, and a lone request is never held back), so up to five bursts may be sent until one
    merges; the size limit must hold in every one.
    """
    server, _ = two_models
    event = _events(1, seed=3)[0]
    merged = False
    for _ in range(5):
        small_before, calls_before, rows_before = _batch_histogram(server)
        _burst(server, event, 12)
        small, calls, rows = _batch_histogram(server)
        assert rows - rows_before == 12
        assert small - small_before == calls - calls_before, "a batch larger than the file's max_batch_size 4"
        if calls - calls_before < 12:
            merged = True
            break
    assert merged, "five bursts of 12 concurrent requests and nothing was merged"
    with pytest.raises(urllib.error.HTTPError) as err:  # the file moved Prometheus off the default path
        urllib.request.urlopen(f"{server.url}/monitoring/prometheus/metrics", timeout=30)
    assert err.value.code == 404


def test_reload_config_request_replaces_the_served_models(two_models):
    server, root = two_models
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name="student", base_path=str(root / "serving" / "student"))
    entry.model_platform = "tensorflow"
    with grpc.insecure_channel(server.grpc_target) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
        server.wait_status("student", ss.available([2]))  # policy now latest: version 1 unloads
        with pytest.raises(grpc.RpcError) as err:
            models.GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "teacher"}), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        bad = model_server_config_pb2.ModelServerConfig()
        bad.model_config_list.config.add(name="student")  # no base_path
        with pytest.raises(grpc.RpcError) as err:
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), timeout=30)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "base_path is required" in err.value.details()
        )
    assert _rest_predict(server, "student", _events(1)[0])["predictions"][0]["class_name"] == "vehicle"


def test_a_corrupt_warmup_file_fails_the_load_as_in_tf_serving(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    version = ss.push_saved_model(ss.saved_model(1), str(model_dir), 1)
    extra = tmp_path / "m" / "1" / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "tf_serving_warmup_requests").write_bytes(b"\x01" * 40)
    assert version
    server = ss.ServerProcess(str(model_dir), "m")
    try:
        status = server.wait_status("m", lambda statuses: bool(statuses) and statuses[0]["state"] == "END")
        message = status[0]["status"]["error_message"]
        assert "tf_serving_warmup_requests" in message and "TFRecord" in message
    finally:
        server.stop()

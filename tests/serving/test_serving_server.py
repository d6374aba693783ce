"""``eventpipe serve`` as a real subprocess on loopback: TF Serving's REST and gRPC APIs, errors,
batching, metrics, and version changes under load (zero failed requests)."""

from __future__ import annotations

import base64
import collections
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from fixtures import serving_support as ss

pytestmark = pytest.mark.e2e

NAME = "events"


@pytest.fixture(scope="module")
def static_server(tmp_path_factory):
    """Versions 1 and 2 both served (policy all), labels stable=1 canary=2, batching on."""
    base = tmp_path_factory.mktemp("static-base")
    model_dir = base / NAME
    model_dir.mkdir()
    ss.push_saved_model(ss.saved_model(1), str(model_dir), 1)
    ss.push_saved_model(ss.saved_model(2), str(model_dir), 2)
    (model_dir / "labels.json").write_text(json.dumps({"stable": 1, "canary": 2}))
    server = ss.ServerProcess(
        str(model_dir),
        NAME,
        "--version-policy",
        "all",
        "--enable_batching",
        "--max-batch-size",
        "8",
        "--batch-timeout-ms",
        "20",
        "--max-body-bytes",
        "200000",
        "--read-timeout-seconds",
        "2",
        "--max-connections",
        "16",
    )
    try:
        server.wait_status(NAME, ss.available([1, 2]))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def saved_model_answers():
    """The in-process SavedModel (version 2) on a fixed event: what the server must return."""
    frames = ss.frames_png(3, seed=7)
    loaded = tf.saved_model.load(ss.saved_model(2))
    out = loaded.signatures["serving_default"](frames=tf.constant([frames]))
    return frames, {k: v.numpy() for k, v in out.items()}


def _predict_url(server, suffix: str = "") -> str:
    return f"{server.url}/v1/models/{NAME}{suffix}:predict"


# -- REST: status and metadata ----------------------------------------------------------------
def test_status_as_tf_serving_reports_it(static_server):
    code, body = ss.get_json(f"{static_server.url}/v1/models/{NAME}")
    assert code == 200
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    code, body = ss.get_json(f"{static_server.url}/v1/models/{NAME}/versions/1")
    assert code == 200 and [s["version"] for s in body["model_version_status"]] == ["1"]
    code, body = ss.get_json(f"{static_server.url}/v1/models/{NAME}/labels/canary")
    assert code == 200 and [s["version"] for s in body["model_version_status"]] == ["2"]


def test_metadata_lists_the_exported_signatures(static_server):
    code, body = ss.get_json(f"{static_server.url}/v1/models/{NAME}/metadata")
    assert code == 200
    assert body["model_spec"] == {"name": NAME, "signature_name": "", "version": "2"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "decoded_frames"} <= set(sigs)
    frames = sigs["serving_default"]["inputs"]["frames"]
    assert frames["dtype"] == "DT_STRING"
    assert [d["size"] for d in frames["tensor_shape"]["dim"]] == ["-1", "-1"]  # 1..K frames
    assert set(sigs["serving_default"]["outputs"]) == {
        "probabilities",
        "logits",
        "class_id",
        "class_name",
        "best_frame",
    }
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    code, body = ss.get_json(f"{static_server.url}/v1/models/{NAME}/versions/1/metadata")
    assert code == 200 and body["model_spec"]["version"] == "1"


# -- REST: predict ----------------------------------------------------------------------------
def test_row_form_with_b64_frames_matches_the_in_process_model(static_server, saved_model_answers):
    frames, want = saved_model_answers
    code, body = ss.post_json(_predict_url(static_server), {"instances": [ss.b64_instance(frames)] * 2})
    assert code == 200 and len(body["predictions"]) == 2
    row = body["predictions"][0]
    assert row["class_name"] == "vehicle" and row["class_id"] == 2
    np.testing.assert_allclose(row["probabilities"], want["probabilities"][0], rtol=1e-6)
    np.testing.assert_allclose(row["logits"], want["logits"][0], rtol=1e-6)
    assert row["best_frame"] == int(want["best_frame"][0])


def test_column_form_versions_and_labels(static_server, saved_model_answers):
    frames, want = saved_model_answers
    code, body = ss.post_json(_predict_url(static_server), {"inputs": {"frames": [ss.b64_instance(frames)]}})
    assert code == 200 and set(body) == {"outputs"}
    assert body["outputs"]["class_name"] == ["vehicle"]
    np.testing.assert_allclose(body["outputs"]["probabilities"], want["probabilities"], rtol=1e-6)
    # Single input: the column value may also be given bare.
    code, bare = ss.post_json(_predict_url(static_server), {"inputs": [ss.b64_instance(frames)]})
    assert code == 200 and bare == body
    for suffix, answer in [
        ("/versions/1", "person"),
        ("/versions/2", "vehicle"),
        ("/labels/stable", "person"),
        ("/labels/canary", "vehicle"),
    ]:
        code, body = ss.post_json(
            _predict_url(static_server, suffix), {"instances": [ss.b64_instance(frames)]}
        )
        assert code == 200 and body["predictions"][0]["class_name"] == answer, suffix


def test_events_of_one_to_k_frames_are_padded_as_ingest_pads_them(static_server):
    """An event of n < K frames answers as the same event padded with "" (its last frame repeated),
    over REST and gRPC, through the batcher; the exported graph alone (what tensorflow_model_server
    runs) does the same; more than K frames is a 400 naming the bound."""
    frames = ss.frames_png(3, seed=11)
    loaded = tf.saved_model.load(ss.saved_model(2))
    for n in (1, 2):
        padded = frames[:n] + [b""] * (3 - n)
        want = loaded.signatures["serving_default"](frames=tf.constant([padded]))["probabilities"].numpy()
        repeated = frames[:n] + [frames[n - 1]] * (3 - n)
        np.testing.assert_allclose(
            loaded.signatures["serving_default"](frames=tf.constant([repeated]))["probabilities"].numpy(),
            want,
            rtol=1e-6,
        )
        short = loaded.signatures["serving_default"](frames=tf.constant([frames[:n]]))[
            "probabilities"
        ].numpy()
        np.testing.assert_allclose(short, want, rtol=1e-6)
        code, body = ss.post_json(
            _predict_url(static_server), {"instances": [ss.b64_instance(frames[:n])] * 2}
        )
        assert code == 200, body
        np.testing.assert_allclose(body["predictions"][1]["probabilities"], want[0], rtol=1e-6)
        with grpc.insecure_channel(static_server.grpc_target) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                _predict_request(frames[:n]), timeout=30
            )
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), want, rtol=1e-6)
    code, body = ss.post_json(
        _predict_url(static_server), {"instances": [ss.b64_instance(frames + frames[:1])]}
    )
    assert code == 400 and "has shape [1,4] but the signature expects [-1,1..3]" in body["error"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 3 frames"):
        loaded.signatures["serving_default"](frames=tf.constant([frames + frames[:1]]))


def _readme_lines(prefix: str) -> list[str]:
    with open(os.path.join(ss.REPO, "README.md"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip().startswith(prefix)]


def test_the_readmes_serving_example_runs_as_written(tmp_path):
    """The README's `curl ... :predict` line, unchanged but for the port, on a model of K = 3
    frames: it sends two, as a client of a camera that sent two would."""
    (curl,) = [line for line in _readme_lines("curl ") if ":predict" in line]
    model_dir = tmp_path / "eventpipe"
    model_dir.mkdir()
    ss.push_saved_model(ss.saved_model(1), str(model_dir), 1)
    for i, frame in enumerate(ss.frames_png(2, seed=5)):
        (tmp_path / f"f{i}.png").write_bytes(frame)
    server = ss.ServerProcess(str(model_dir), "eventpipe")
    try:
        server.wait_status("eventpipe", ss.available([1]))
        command = curl.replace("localhost:8501", f"127.0.0.1:{server.rest_port}")
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["predictions"]
    assert row["class_name"] == "person" and 0 <= row["best_frame"] < ss.SPEC.frames


def test_a_tensorflow_model_server_command_line_starts_the_server(tmp_path):
    """Flags from TF Serving deployments (the issue's four among them): the server answers, and each
    flag without an effect here says so in one log line."""
    model_dir = tmp_path / "eventpipe"
    model_dir.mkdir()
    ss.push_saved_model(ss.saved_model(1), str(model_dir), 1)
    flags = ["--rest_api_timeout_in_ms=30000", "--enable_model_warmup=true", "--grpc_max_threads=8",
             "--allow_version_labels_for_unavailable_models",
             "--grpc_channel_arguments=grpc.max_connection_age_ms=60000",
             "--tensorflow_session_parallelism=1", "--file_system_poll_wait_seconds=1"]  # fmt: skip
    server = ss.ServerProcess(str(model_dir), "eventpipe", *flags)
    try:
        server.wait_status("eventpipe", ss.available([1]))
        code, body = ss.post_json(
            f"{server.url}/v1/models/eventpipe:predict", {"instances": [ss.b64_instance(ss.frames_png(3))]}
        )
        assert code == 200 and body["predictions"][0]["class_name"] == "person"
        log = server.log()
    finally:
        server.stop()
    for flag in (
        "rest_api_timeout_in_ms",
        "enable_model_warmup",
        "allow_version_labels_for_unavailable_models",
    ):
        assert f"--{flag}=" in log and "has no effect here" in log, flag
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", "--model_base_path", str(model_dir),
         "--ssl_config_file=x"],
        capture_output=True, text=True, timeout=120, cwd=ss.REPO,
    )  # fmt: skip
    assert refused.returncode != 0 and "terminate TLS in front of it" in refused.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serving_images_entrypoint_runs_like_tensorflow_serving(tmp_path):
    """serving/container/entrypoint.sh without Docker: TF Serving's defaults (MODEL_NAME under
    MODEL_BASE_PATH, 8500/8501 on every interface), then a real server from it."""
    entrypoint = os.path.join(ss.REPO, "serving", "container", "entrypoint.sh")
    assert os.access(entrypoint, os.X_OK)
    shown = subprocess.run([entrypoint, "--enable_batching"], env={**os.environ, "EVENTPIPE": "echo"},
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert shown.stdout.split() == ["serve", "--host", "0.0.0.0", "--port=8500", "--rest_api_port=8501",
                                    "--model_name=model", "--model_base_path=/models/model",
                                    "--enable_batching"]  # fmt: skip
    (tmp_path / "eventpipe").mkdir()
    ss.push_saved_model(ss.saved_model(1), str(tmp_path / "eventpipe"), 1)
    rest, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "EVENTPIPE": f"{sys.executable} -m pipeline.cli", "MODEL_NAME": "eventpipe",
           "MODEL_BASE_PATH": str(tmp_path)}  # fmt: skip
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([entrypoint, f"--port={grpc_port}", f"--rest_api_port={rest}"], env=env,
                                   cwd=ss.REPO, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = ss.get_json(f"http://127.0.0.1:{rest}/v1/models/eventpipe")[1]
                if ss.available([1])(status.get("model_version_status", [])):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        assert status and ss.available([1])(status["model_version_status"]), (
            tmp_path / "server.log"
        ).read_text()
        code, body = ss.post_json(f"http://127.0.0.1:{rest}/v1/models/eventpipe:predict",
                                  {"instances": [ss.b64_instance(ss.frames_png(3))]})  # fmt: skip
        assert code == 200 and body["predictions"][0]["class_name"] == "person"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "0.0.0.0" in (tmp_path / "server.log").read_text()


def test_decoded_frames_signature(static_server):
    rng = np.random.default_rng(3)
    decoded = rng.random((2, *ss.SPEC.input_shape)).round(3).tolist()
    code, body = ss.post_json(
        _predict_url(static_server, "/versions/1"), {"signature_name": "decoded_frames", "instances": decoded}
    )
    assert code == 200 and [p["class_name"] for p in body["predictions"]] == ["person", "person"]


@pytest.mark.parametrize(
    "suffix, payload, status, message",
    [
        ("", b"{not json", 400, "JSON Parse error"),
        ("", b'{"signature_name": "serving_default"}', 400, "Missing 'inputs' or 'instances' key"),
        (
            "",
            {"signature_name": "nope", "instances": [["a", "b", "c"]]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("", {"instances": [[{"b64": "%%%"}, "", ""]]}, 400, "Unable to base64 decode"),
        ("", {"instances": [["not a png", "", ""]]}, 400, ""),
        ("", {"instances": [["a", "b", "c", "d"]]}, 400, "shape"),  # more frames than K
        ("", {"instances": [[1, 2, 3]]}, 400, "is not of expected type: string"),
        ("", {"instances": [["a", "b", "c"]], "inputs": [["a", "b", "c"]]}, 400, "only one of"),
        (
            "/versions/7",
            {"instances": [["a", "b", "c"]]},
            404,
            "Servable not found for request: Specific(events, 7)",
        ),
        ("/labels/nope", {"instances": [["a", "b", "c"]]}, 400, "Unrecognized servable version label: nope"),
    ],
)
def test_predict_errors(static_server, suffix, payload, status, message):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    code, raw = ss.request(_predict_url(static_server, suffix), body)
    reply = json.loads(raw)
    assert code == status and set(reply) == {"error"}, reply
    assert message in reply["error"]


def test_routing_errors_and_body_limit(static_server):
    url = static_server.url
    code, body = ss.request(f"{url}/v1/models/unknown:predict", b'{"instances": [1]}')
    assert code == 404 and "Servable not found for request: Latest(unknown)" in json.loads(body)["error"]
    code, body = ss.get_json(f"{url}/v1/models/unknown")
    assert code == 404 and "Could not find any versions of model unknown" in body["error"]
    code, body = ss.get_json(f"{url}/v1/models/{NAME}/versions/9")
    assert code == 404 and "Could not find version 9" in body["error"]
    code, body = ss.get_json(f"{url}/v1/models/{NAME}/labels/nope")
    assert code == 400 and "Unrecognized servable version label" in body["error"]
    code, body = ss.get_json(f"{url}/v1/models")
    assert code == 400 and body["error"] == "Missing model name in request."
    code, body = ss.request(f"{url}/v1/models/{NAME}", b"{}", method="PUT")
    assert code == 400 and "Malformed request: PUT" in json.loads(body)["error"]
    code, body = ss.request(f"{url}/v1/models/{NAME}:classify", b'{"examples": []}')
    assert code == 400 and "predict signatures only" in json.loads(body)["error"]
    code, _ = ss.request(f"{url}/nowhere")
    assert code == 404
    big = json.dumps({"instances": [["x" * 300_000, "", ""]]}).encode()
    code, body = ss.request(_predict_url(static_server), big)
    assert code == 413 and "exceeds the limit of 200000 bytes" in json.loads(body)["error"]
    # The server is still healthy after refusing it.
    assert ss.get_json(f"{url}/v1/models/{NAME}")[0] == 200


def test_keep_alive_connection_serves_many_requests(static_server):
    frames = ss.frames_png(3)
    body = json.dumps({"instances": [ss.b64_instance(frames)]})
    conn = http.client.HTTPConnection("127.0.0.1", static_server.rest_port, timeout=10)
    for _ in range(20):
        conn.request("POST", f"/v1/models/{NAME}:predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert (
            response.status == 200
            and json.loads(response.read())["predictions"][0]["class_name"] == "vehicle"
        )
    conn.close()


def _raw_exchange(port: int, data: bytes, wait: float = 6.0) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh socket; what came back, and whether the server closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
            return received, True
        except TimeoutError:
            return received, False


def test_hostile_rest_clients_get_an_answer_and_cannot_hold_the_server(static_server):
    port, path = static_server.rest_port, f"/v1/models/{NAME}:predict"
    # A chunk size that is not a number: 400, and the connection closes instead of parsing the
    # rest of the body as the next request.
    got, closed = _raw_exchange(port, (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        f"GET /v1/models/{NAME} HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode())  # fmt: skip
    assert got.startswith(b"HTTP/1.1 400") and b"chunk size" in got and closed
    assert got.count(b"HTTP/1.1") == 1, "the body's bytes were answered as a second request"
    # A client that stalls mid-body: 408 after the read timeout (2 s here), connection closed.
    started = time.monotonic()
    got, closed = _raw_exchange(
        port, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    assert got.startswith(b"HTTP/1.1 408") and closed and time.monotonic() - started < 5.5
    # One that connects and sends nothing is closed too, without an answer.
    got, closed = _raw_exchange(port, b"")
    assert got == b"" and closed
    # A body shorter than its Content-Length followed by a half-close: 400, not a hang or a 500.
    with socket.create_connection(("127.0.0.1", port), timeout=6) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{{}}".encode())
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    # JSON nested past the parser's recursion limit: 400 naming the nesting.
    code, body = ss.request(_predict_url(static_server), b"[" * 100_000)
    assert code == 400 and "nesting deeper than" in json.loads(body)["error"]
    # --max-connections 16: the 17th concurrent connection is answered 503 at once and closed.
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
    try:
        time.sleep(0.3)  # let the server accept them all
        got, closed = _raw_exchange(port, f"GET /v1/models/{NAME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 503") and b"max_connections=16" in got and closed
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert ss.get_json(f"{static_server.url}/v1/models/{NAME}")[0] == 200  # and healthy afterwards


# -- gRPC ---------------------------------------------------------------------------------------
def _predict_request(frames: list[bytes], **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.get("name", NAME)
    request.model_spec.signature_name = spec.get("signature", "serving_default")
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["frames"].CopyFrom(tf.make_tensor_proto([frames]))
    return request


def test_grpc_prediction_service(static_server, saved_model_answers):
    frames, want = saved_model_answers
    with grpc.insecure_channel(static_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(_predict_request(frames), timeout=30)
        assert response.model_spec.name == NAME and response.model_spec.version.value == 2
        assert response.model_spec.signature_name == "serving_default"
        out = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        np.testing.assert_allclose(out["probabilities"], want["probabilities"], rtol=1e-6)
        assert out["class_name"].tolist() == [b"vehicle"] and out["class_id"].dtype == np.int64
        assert stub.Predict(_predict_request(frames, version=1), timeout=30).model_spec.version.value == 1
        by_label = stub.Predict(_predict_request(frames, label="stable"), timeout=30)
        assert tf.make_ndarray(by_label.outputs["class_name"]).tolist() == [b"person"]
        filtered = _predict_request(frames)
        filtered.output_filter.append("class_id")
        assert list(stub.Predict(filtered, timeout=30).outputs) == ["class_id"]

        meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
        meta_request.model_spec.name = NAME
        meta_request.metadata_field.append("signature_def")
        meta = stub.GetModelMetadata(meta_request, timeout=30)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(sig_map)
        assert sig_map.signature_def["serving_default"].inputs["frames"].dtype == tf.string.as_datatype_enum

        status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = NAME
        status = status_stub.GetModelStatus(status_request, timeout=30)
        assert sorted(s.version for s in status.model_version_status) == [1, 2]
        assert all(
            s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in status.model_version_status
        )


def test_grpc_errors_carry_tf_serving_codes(static_server):
    frames = ss.frames_png(3)
    with grpc.insecure_channel(static_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        cases = [
            (_predict_request(frames, name="unknown"), grpc.StatusCode.NOT_FOUND, "Servable not found"),
            (_predict_request(frames, version=9), grpc.StatusCode.NOT_FOUND, "Specific(events, 9)"),
            (_predict_request(frames, label="nope"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized"),
            (
                _predict_request(frames, signature="nope"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "not found in signature def",
            ),
            (_predict_request([b"junk", b"", b""]), grpc.StatusCode.INVALID_ARGUMENT, ""),
        ]
        wrong_dtype = _predict_request(frames)
        wrong_dtype.inputs["frames"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 3), np.float32)))
        cases.append((wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "expects DT_STRING"))
        extra = _predict_request(frames)
        extra.inputs["other"].CopyFrom(tf.make_tensor_proto([1]))
        cases.append((extra, grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {other}"))
        bad_filter = _predict_request(frames)
        bad_filter.output_filter.append("nope")
        cases.append((bad_filter, grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found"))
        for request, code, message in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(request, timeout=30)
            assert e.value.code() == code and message in e.value.details(), (code, e.value.details())
        empty_fields = get_model_metadata_pb2.GetModelMetadataRequest()
        empty_fields.model_spec.name = NAME
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelMetadata(empty_fields, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_frame_declaring_too_many_pixels_is_a_400_not_an_allocation(static_server):
    """The SavedModel decodes with tf.io.decode_image, which allocates what the header says."""
    frames = ss.frames_png(3)
    peak_before = _peak_rss_bytes(static_server.proc.pid)
    bomb = [ss.png_declaring(13000, 13000), *frames[1:]]
    code, body = ss.post_json(_predict_url(static_server), {"instances": [ss.b64_instance(bomb)]})
    assert code == 400 and "data.max_frame_pixels" in body["error"], body
    with grpc.insecure_channel(static_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(_predict_request(bomb), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "13000x13000" in e.value.details()
    assert _peak_rss_bytes(static_server.proc.pid) - peak_before < 100 * 1024 * 1024


def _peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_grpc_tensors_that_declare_huge_shapes_are_refused_before_allocation(static_server):
    """A TensorProto may carry one value for a declared shape (the last value repeats): a 43-byte
    request declaring [1, 2^25] strings once cost the server 525 MB. Now the declared shape is
    checked against the signature and serving.max_tensor_elements before anything is allocated."""
    frames = ss.frames_png(3)
    peak_before = _peak_rss_bytes(static_server.proc.pid)
    with grpc.insecure_channel(static_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        cases = []
        misfit = _predict_request(frames)  # rank and frame count bounded by the model: [-1, 1..3]
        misfit.inputs["frames"].Clear()
        misfit.inputs["frames"].dtype = tf.string.as_datatype_enum
        misfit.inputs["frames"].tensor_shape.dim.add().size = 1
        misfit.inputs["frames"].tensor_shape.dim.add().size = 1 << 25
        misfit.inputs["frames"].string_val.append(b"x")
        assert misfit.ByteSize() < 100
        cases.append((misfit, "has shape [1,33554432] but the signature expects [-1,1..3]"))
        huge_batch = _predict_request(frames)  # fits the signature ([-1, 3]) but not the ceiling
        del huge_batch.inputs["frames"].tensor_shape.dim[:]
        huge_batch.inputs["frames"].tensor_shape.dim.add().size = 1 << 40
        huge_batch.inputs["frames"].tensor_shape.dim.add().size = 3
        cases.append((huge_batch, "serving.max_tensor_elements"))
        negative = _predict_request(frames)
        negative.inputs["frames"].tensor_shape.dim[0].size = -5
        cases.append((negative, "negative dimension"))
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), (
                e.value.details()
            )
        assert stub.Predict(_predict_request(frames), timeout=30).outputs  # still answers
    assert _peak_rss_bytes(static_server.proc.pid) - peak_before < 100 * 1024 * 1024


def test_declared_elements_limit_is_exact():
    from serving.status import ServingError
    from serving.tensors import declared_elements, proto_to_array

    proto = tf.make_tensor_proto(np.zeros((4, 5), np.float32))
    assert declared_elements(proto, max_elements=20) == [4, 5]
    with pytest.raises(ServingError, match="more than 19 elements"):
        declared_elements(proto, max_elements=19)
    one_value = tf.make_tensor_proto([b"x"])
    one_value.tensor_shape.dim[0].size = 6  # one value for six: repeated, within the limit
    assert proto_to_array(one_value, max_elements=6).tolist() == [b"x"] * 6
    with pytest.raises(ServingError):
        proto_to_array(one_value, max_elements=5)


# -- batching and metrics -----------------------------------------------------------------------
def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_are_batched_and_counted(static_server):
    frames = ss.frames_png(3, seed=1)
    body = json.dumps({"instances": [ss.b64_instance(frames)]}).encode()
    before = ss.request(f"{static_server.url}/monitoring/prometheus/metrics")[1].decode()
    results: list[int] = []
    barrier = threading.Barrier(8)

    def client() -> None:
        barrier.wait()
        for _ in range(5):
            results.append(ss.request(_predict_url(static_server), body)[0])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [200] * 40
    # A request is counted just after its response is written: poll briefly for the last ones.
    for _ in range(50):
        code, raw = ss.request(f"{static_server.url}/monitoring/prometheus/metrics")
        text = raw.decode()
        ok = _metric(text, "eventpipe_serving_requests_total", api="rest", method="predict", code="OK")
        if (
            ok - _metric(before, "eventpipe_serving_requests_total", api="rest", method="predict", code="OK")
            >= 40
        ):
            break
        time.sleep(0.1)
    assert code == 200 and "# TYPE eventpipe_serving_request_latency_seconds histogram" in text
    assert (
        ok - _metric(before, "eventpipe_serving_requests_total", api="rest", method="predict", code="OK")
        >= 40
    )
    calls = _metric(text, "eventpipe_serving_batch_requests_count") - _metric(
        before, "eventpipe_serving_batch_requests_count"
    )
    merged = _metric(text, "eventpipe_serving_batch_requests_sum") - _metric(
        before, "eventpipe_serving_batch_requests_sum"
    )
    assert merged >= 40 and calls < merged, f"40 concurrent requests ran in {calls} calls: no batching"
    assert _metric(text, "eventpipe_serving_model_version_available", model=NAME, version="1") == 1
    assert _metric(text, "eventpipe_serving_model_version_available", model=NAME, version="2") == 1
    assert _metric(text, "eventpipe_serving_requests_total", api="rest", code="NOT_FOUND") >= 1
    assert _metric(text, "eventpipe_serving_requests_total", model=NAME, method="predict", code="OK") >= 40
    assert 'model="unknown"' not in text and 'model_name="unknown"' not in text  # unknown names: no series
    # TF Serving's own series, names and labels, for dashboards built on tensorflow_model_server.
    tfs_ok = _metric(text, ":tensorflow:serving:request_count", model_name=NAME, status="OK")
    assert tfs_ok - _metric(before, ":tensorflow:serving:request_count", model_name=NAME, status="OK") >= 40
    rest_predict = {"model_name": NAME, "API": "Predict", "entrypoint": "REST"}
    assert _metric(text, ":tensorflow:serving:request_latency_count", **rest_predict) >= 40
    assert _metric(text, ":tensorflow:serving:request_latency_bucket", le="+Inf", **rest_predict) >= 40
    assert _metric(text, ":tensorflow:cc:saved_model:load_attempt_count", status="success") >= 2
    families = {
        f.name: f for f in text_string_to_metric_families(text)
    }  # the scrape parses as Prometheus text
    assert families[":tensorflow:serving:request_count"].type == "counter"
    assert families[":tensorflow:serving:request_latency"].type == "histogram"


# -- versions appearing under load ------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """Policy latest, starting from an empty model directory."""
    base = tmp_path_factory.mktemp("live-base")
    (base / NAME).mkdir()
    server = ss.ServerProcess(str(base / NAME), NAME, "--max-batch-size", "8", "--batch-timeout-ms", "2")
    try:
        yield server, str(base / NAME)
    finally:
        server.stop()


def test_no_version_yet_is_503_for_predict_and_404_for_status(live_server):
    server, _ = live_server
    code, body = ss.post_json(_predict_url(server), {"instances": [["a", "b", "c"]]})
    assert code == 503 and "no version of model events is available" in body["error"]
    code, body = ss.get_json(f"{server.url}/v1/models/{NAME}")
    assert code == 404 and "Could not find any versions" in body["error"]


def test_new_version_under_load_fails_no_request_and_corrupt_version_keeps_old(live_server):
    server, model_dir = live_server
    ss.push_saved_model(ss.saved_model(1), model_dir, 1)
    server.wait_status(NAME, ss.available([1]))
    frames = ss.frames_png(3, seed=2)
    body = json.dumps({"instances": [ss.b64_instance(frames)]})
    grpc_request = _predict_request(frames)
    log: list[tuple[float, str, str]] = []  # (time, api, answer or error)
    stop = threading.Event()

    def rest_client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        while not stop.is_set():
            conn.request("POST", f"/v1/models/{NAME}:predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            answer = (
                payload["predictions"][0]["class_name"]
                if response.status == 200
                else f"HTTP {response.status}"
            )
            log.append((time.monotonic(), "rest", answer))

    def grpc_client() -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    out = stub.Predict(grpc_request, timeout=30)
                    answer = tf.make_ndarray(out.outputs["class_name"])[0].decode()
                except grpc.RpcError as e:
                    answer = f"gRPC {e.code()}"
                log.append((time.monotonic(), "grpc", answer))

    clients = [threading.Thread(target=rest_client) for _ in range(3)] + [
        threading.Thread(target=grpc_client) for _ in range(3)
    ]
    for t in clients:
        t.start()
    time.sleep(1.0)
    pushed_at = time.monotonic()
    ss.push_saved_model(ss.saved_model(2), model_dir, 2)
    server.wait_status(NAME, lambda s: any(x["version"] == "1" and x["state"] == "END" for x in s))
    swapped_at = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for t in clients:
        t.join(timeout=60)

    answers = [a for _, _, a in log]
    failures = [a for a in answers if a not in ("person", "vehicle")]
    assert not failures, f"{len(failures)} failed requests during the swap: {failures[:5]}"
    assert len(log) >= 30, f"only {len(log)} requests in the load test"
    before = [a for t, _, a in log if t < pushed_at]
    after = [a for t, _, a in log if t > swapped_at + 0.2]
    assert before and set(before) == {"person"}
    assert after and set(after) == {"vehicle"}, "answers did not switch to version 2"
    assert {api for _, api, _ in log} == {"rest", "grpc"}

    # A corrupt version 3: reported in status, version 2 keeps serving.
    corrupt = os.path.join(model_dir, ".tmp-3")
    os.makedirs(corrupt)
    with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel")
    os.rename(corrupt, os.path.join(model_dir, "3"))
    statuses = server.wait_status(NAME, lambda s: any(x["version"] == "3" and x["state"] == "END" for x in s))
    v3 = next(x for x in statuses if x["version"] == "3")
    assert v3["status"]["error_code"] != "OK" and "SavedModel" in v3["status"]["error_message"]
    assert next(x for x in statuses if x["version"] == "2")["state"] == "AVAILABLE"
    code, answer = ss.post_json(_predict_url(server), {"instances": [ss.b64_instance(frames)]})
    assert code == 200 and answer["predictions"][0]["class_name"] == "vehicle"
    code, body = ss.get_json(f"{server.url}/v1/models/{NAME}/versions/3")
    assert code == 200 and body["model_version_status"][0]["state"] == "END"

    # Repairing version 3 in place (a valid SavedModel of the "person" model) retries the load.
    version3 = os.path.join(model_dir, "3")
    os.remove(os.path.join(version3, "saved_model.pb"))
    shutil.copytree(ss.saved_model(1), version3, dirs_exist_ok=True)
    server.wait_status(NAME, ss.available([3]))
    code, answer = ss.post_json(_predict_url(server), {"instances": [ss.b64_instance(frames)]})
    assert code == 200 and answer["predictions"][0]["class_name"] == "person"


# -- bounded fuzzing: client errors are 4xx / INVALID_ARGUMENT, never 5xx, never a memory spike ----
FUZZ_REQUESTS, FUZZ_SECONDS = 250, 60


def _mutations(rng: random.Random, valid: bytes) -> bytes:
    """One hostile or broken body, derived from a valid one or made up."""
    pick = rng.randrange(12)
    if pick == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))  # random bytes
    if pick == 1:
        return valid[: rng.randrange(len(valid))]  # truncated
    if pick == 2:
        out = bytearray(valid)
        for _ in range(rng.randrange(1, 20)):
            out[rng.randrange(len(out))] = rng.randrange(256)  # flipped bytes
        return bytes(out)
    if pick == 3:
        return b"[" * rng.randrange(500, 5000) + b"]" * rng.randrange(0, 10)  # deep nesting
    if pick == 4:  # huge and odd numbers where floats or strings belong
        number = rng.choice([b"1" + b"0" * 400, b"1e400", b"-1e400", b"NaN", b"Infinity", b"1" * 5000, b"-0"])
        return b'{"instances": [[[' + number + b"]]]}"
    if pick == 5:  # wrong types in every position
        value = rng.choice(
            ["null", "true", '"x"', "{}", "[]", '{"b64": 1}', '{"b64": "%%%"}', "[[1, [2]]]", "1.5"]
        )
        return (rng.choice(['{"instances": %s}', '{"inputs": %s}', '{"instances": [%s]}',
                            '{"inputs": {"frames": %s}}', '{"signature_name": %s, "instances": []}'])
                .replace("%s", value).encode())  # fmt: skip
    if pick == 6:  # ragged and oversized shapes within the body limit
        return json.dumps({"instances": [[0.5] * rng.randrange(1, 3000), [0.5]]}).encode()
    if pick == 7:  # valid JSON of the wrong structure
        return json.dumps(
            rng.choice([[], {}, "x", 1, {"instances": [], "inputs": []}, {"instances": [{"frames": None}]}])
        ).encode()
    if pick == 8:  # b64 that is no image, or an image of the wrong size
        frame = rng.choice([base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(50)).decode(), "////", ""])
        return json.dumps({"instances": [{"frames": [{"b64": frame}] * rng.randrange(0, 6)}]}).encode()
    if pick == 9:
        return valid.replace(b"instances", rng.choice([b"instance", b"inputs", b"Instances", b"\xff\xfe"]))
    if pick == 10:  # not UTF-8 inside strings
        return b'{"instances": ["\xff\xfe\xfa"]}'
    return valid  # some valid requests in between: the server keeps answering them


def test_rest_fuzz_gets_4xx_never_5xx_and_memory_stays_flat(static_server):
    rng = random.Random(0)
    valid = json.dumps({"instances": [ss.b64_instance(ss.frames_png(3))]}).encode()
    pid = static_server.proc.pid
    peak_before = _peak_rss_bytes(pid)
    deadline, statuses = time.monotonic() + FUZZ_SECONDS, collections.Counter()
    paths = [_predict_url(static_server), _predict_url(static_server, "/versions/2"),
             f"{static_server.url}/v1/models/{NAME}/metadata"]  # fmt: skip
    for i in range(FUZZ_REQUESTS):
        if time.monotonic() > deadline:
            break
        body = _mutations(rng, valid)
        code, answer = ss.request(rng.choice(paths), body)
        statuses[code] += 1
        assert code < 500, f"request {i} ({body[:120]!r}) got {code}: {answer[:300]!r}"
    assert statuses[200] > 0 and sum(statuses.values()) >= 50, statuses
    assert ss.get_json(f"{static_server.url}/v1/models/{NAME}")[0] == 200
    assert _peak_rss_bytes(pid) - peak_before < 100 * 1024 * 1024, "fuzzing grew the server by 100 MB or more"


def test_grpc_fuzz_gets_invalid_argument_never_internal(static_server):
    rng = random.Random(1)
    frames = ss.frames_png(3)
    pid = static_server.proc.pid
    peak_before = _peak_rss_bytes(pid)
    deadline, codes = time.monotonic() + FUZZ_SECONDS, collections.Counter()
    dtypes = [types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_INT64, types_pb2.DT_HALF,
              types_pb2.DT_BOOL, types_pb2.DT_INVALID, 999]  # fmt: skip
    with grpc.insecure_channel(static_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(FUZZ_REQUESTS):
            if time.monotonic() > deadline:
                break
            request = _predict_request(frames)
            proto = request.inputs["frames"]
            pick = rng.randrange(7)
            if pick == 0:
                proto.dtype = rng.choice(dtypes)
            elif pick == 1:
                del proto.tensor_shape.dim[:]
                for _ in range(rng.randrange(0, 6)):
                    proto.tensor_shape.dim.add().size = rng.choice([-5, -1, 0, 1, 3, 7, 2**20, 2**40, 2**62])
            elif pick == 2:
                del proto.string_val[rng.randrange(len(proto.string_val)) :]
            elif pick == 3:
                proto.tensor_content = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            elif pick == 4:
                proto.float_val.extend([rng.uniform(-1e30, 1e30) for _ in range(rng.randrange(1, 20))])
            elif pick == 5:
                proto.tensor_shape.unknown_rank = True
            # pick 6: the valid request
            try:
                stub.Predict(request, timeout=30)
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1
                assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
                    f"request {i} (pick {pick}) got {e.code()}: {e.details()}"
                )
    assert codes["OK"] > 0 and sum(codes.values()) >= 50, codes
    assert _peak_rss_bytes(pid) - peak_before < 100 * 1024 * 1024, "fuzzing grew the server by 100 MB or more"

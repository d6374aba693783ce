"""TFLite serving and the on-device runner: a served ``model.tflite`` answers like the Keras model,
and ``eventpipe device-run`` works in a process where importing TensorFlow fails, on LiteRT or,
without it, on tflite-runtime (and says which)."""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from contract import layout
from fixtures import serving_support as ss
from ondevice import frames as framecodec

pytestmark = pytest.mark.e2e

NAME = "lite"


@pytest.fixture(scope="module")
def lite_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("lite-base")
    (base / NAME).mkdir()
    ss.push_tflite(ss.tflite_model(1, "int8"), str(base / NAME), 1)
    server = ss.ServerProcess(str(base / NAME), NAME, "--max-batch-size", "4")
    try:
        server.wait_status(NAME, ss.available([1]))
        yield server
    finally:
        server.stop()


def _keras_probabilities(events: list[list[bytes]]) -> np.ndarray:
    decoded = layout.decode_frames(tf.constant(events), ss.SPEC)
    logits = ss.keras_model(1)(decoded, training=False)["logits"]
    return tf.nn.softmax(logits).numpy()


def test_tflite_version_serves_the_contract_over_rest(lite_server):
    events = [ss.frames_png(3, seed=s) for s in range(3)]
    code, body = ss.post_json(
        f"{lite_server.url}/v1/models/{NAME}:predict", {"instances": [ss.b64_instance(e) for e in events]}
    )
    assert code == 200 and len(body["predictions"]) == 3
    want = _keras_probabilities(events)
    for row, probs in zip(body["predictions"], want, strict=True):
        assert row["class_name"] == "person" and row["class_id"] == 1
        np.testing.assert_allclose(row["probabilities"], probs, atol=0.02)  # int8 vs float
        assert 0 <= row["best_frame"] < ss.SPEC.frames
    decoded = framecodec.decode_events(events, *ss.SPEC.input_shape)
    code, cols = ss.post_json(
        f"{lite_server.url}/v1/models/{NAME}:predict",
        {"signature_name": "decoded_frames", "inputs": decoded.tolist()},
    )
    assert code == 200 and cols["outputs"]["class_name"] == ["person"] * 3
    np.testing.assert_allclose(
        cols["outputs"]["probabilities"], [r["probabilities"] for r in body["predictions"]], atol=1e-6
    )
    code, meta = ss.get_json(f"{lite_server.url}/v1/models/{NAME}/metadata")
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "decoded_frames"}
    assert sigs["serving_default"]["inputs"]["frames"]["dtype"] == "DT_STRING"
    code, body = ss.post_json(
        f"{lite_server.url}/v1/models/{NAME}:predict", {"instances": [["junk", "", ""]]}
    )
    assert code == 400 and "cannot decode frame" in body["error"]
    # Events of 1..K frames, padded as ingest pads them ("": the last frame repeated).
    short = events[0][:2]
    code, body = ss.post_json(
        f"{lite_server.url}/v1/models/{NAME}:predict", {"instances": [ss.b64_instance(short)]}
    )
    padded = ss.post_json(
        f"{lite_server.url}/v1/models/{NAME}:predict", {"instances": [ss.b64_instance(short + short[-1:])]}
    )[1]
    assert code == 200 and body == padded
    code, body = ss.post_json(
        f"{lite_server.url}/v1/models/{NAME}:predict", {"instances": [ss.b64_instance(events[0] + short)]}
    )
    assert code == 400 and "signature expects [-1,1..3]" in body["error"]


def test_tflite_version_over_grpc(lite_server):
    events = [ss.frames_png(3, seed=9)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.inputs["frames"].CopyFrom(tf.make_tensor_proto(events))
    with grpc.insecure_channel(lite_server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert response.model_spec.version.value == 1
    assert tf.make_ndarray(response.outputs["class_name"]).tolist() == [b"person"]
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), _keras_probabilities(events), atol=0.02
    )


# -- on-device runner --------------------------------------------------------------------------
BLOCK_ENV = "EVENTPIPE_TEST_BLOCKED_MODULES"
# Loaded by every Python started with the blocker directory first on PYTHONPATH: imports of the
# listed top-level packages fail, as on a device where they are not installed.
SITECUSTOMIZE = """
import importlib.abc, os, sys

BLOCKED = tuple(name for name in os.environ.get("EVENTPIPE_TEST_BLOCKED_MODULES", "").split(",") if name)


class _NotOnThisDevice(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not available on this device")
        return None


sys.meta_path.insert(0, _NotOnThisDevice())
"""


@pytest.fixture()
def device_env(tmp_path):
    """``device_env(*modules)``: an environment whose Python cannot import TensorFlow nor ``modules``."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def make(*blocked: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), ss.REPO]),
               BLOCK_ENV: ",".join(("tensorflow", *blocked))}  # fmt: skip
        env.pop("EVENTPIPE_TFLITE_RUNTIME", None)
        for module in ("tensorflow", *blocked):
            probe = subprocess.run(
                [sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True
            )
            assert probe.returncode != 0 and "not available on this device" in probe.stderr, module
        return env

    return make


def _manifest(directory) -> str:
    """Four events: frames as files relative to the manifest, one inline, one short event."""
    frames_dir = directory / "frames"
    frames_dir.mkdir(parents=True)
    lines = []
    for i in range(4):
        paths = []
        for j, data in enumerate(ss.frames_png(3 if i != 3 else 2, seed=10 + i)):
            (frames_dir / f"e{i}-{j}.png").write_bytes(data)
            paths.append(f"frames/e{i}-{j}.png")
        record = {
            "event_id": f"cam01-{i:06d}",
            "device_id": "cam01",
            "timestamp": "2026-01-05T12:00:00Z",
            "label": "person" if i % 2 == 0 else "vehicle",
            "frames": paths,
        }
        if i == 1:
            record["frames"][0] = {"b64": base64.b64encode((frames_dir / "e1-0.png").read_bytes()).decode()}
        lines.append(json.dumps(record))
    path = directory / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(directory)


@pytest.mark.parametrize(
    ("blocked", "runtime"),
    [((), "ai-edge-litert 1.4.0"), (("ai_edge_litert",), "tflite-runtime 2.14.0"),
     (("tflite_runtime",), "ai-edge-litert 1.4.0")],
)  # fmt: skip
def test_device_run_without_tensorflow(tmp_path, device_env, blocked, runtime):
    data = _manifest(tmp_path / "events")
    out = tmp_path / "predictions.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "device-run",
            "--model",
            ss.tflite_model(1, "int8"),
            "--data",
            data,
            "--out",
            str(out),
        ],
        env=device_env(*blocked),
        cwd=ss.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"labels ['empty', 'person', 'vehicle'], runtime {runtime}" in result.stdout
    assert "cam01-000000: person" in result.stdout and "label=vehicle WRONG" in result.stdout
    assert (
        "4 events classified (0 skipped), accuracy 0.500 on the 4 labelled events of --data" in result.stdout
    )
    assert "events the model was trained on count too" in result.stdout and f"with {runtime}" in result.stdout
    assert "inference p50" in result.stdout and "p99" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["event_id"] for r in rows] == [f"cam01-{i:06d}" for i in range(4)]
    assert {r["runtime"] for r in rows} == {runtime}
    events = [ss.frames_png(3 if i != 3 else 2, seed=10 + i) for i in range(4)]
    want = _keras_probabilities([e + [b""] * (3 - len(e)) for e in events])
    np.testing.assert_allclose([r["probabilities"] for r in rows], want, atol=0.02)


def test_device_run_names_the_runtimes_to_install_when_none_is_there(tmp_path, device_env):
    data = _manifest(tmp_path / "events")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "device-run",
            "--model",
            ss.tflite_model(1, "int8"),
            "--data",
            data,
        ],
        env=device_env("ai_edge_litert", "tflite_runtime"),
        cwd=ss.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        "no TFLite interpreter can be imported" in result.stderr
        and "pip install ai-edge-litert" in result.stderr
    )


def test_device_run_explains_missing_metadata(tmp_path, device_env):
    with open(ss.tflite_model(1, "int8"), "rb") as f:
        content = f.read()
    stripped = tmp_path / "no-metadata.tflite"
    stripped.write_bytes(content.replace(b"TFLITE_METADATA", b"OTHERS_METADATA"))
    data = _manifest(tmp_path / "events")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "device-run", "--model", str(stripped), "--data", data],
        env=device_env(),
        cwd=ss.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no TFLITE_METADATA entry" in result.stderr and "trainer/lite/tflite.py" in result.stderr


def test_device_run_reads_an_image_folder_tree_and_takes_the_config(tmp_path, device_env):
    """The same tree ingest reads (<label>/<event_id>/<frame>.png, <label>/<name>.png), without
    TensorFlow; entries outside the layout are counted with their reasons; --set bounds the decode;
    TFRecords are refused with what to pass instead."""
    tree = tmp_path / "tree"
    for label, seed in (("person", 1), ("vehicle", 2)):
        event = tree / label / f"ev{seed}"
        event.mkdir(parents=True)
        for j, data in enumerate(ss.frames_png(3, seed=seed)):
            (event / f"{j}.png").write_bytes(data)
    (tree / "person" / "single.png").write_bytes(ss.frames_png(1, seed=3)[0])
    (tree / "person" / "notes.txt").write_text("not an image")
    base = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "device-run",
        "--model",
        ss.tflite_model(1, "int8"),
        "--data",
    ]
    run = functools.partial(
        subprocess.run, env=device_env(), cwd=ss.REPO, capture_output=True, text=True, timeout=120
    )
    result = run([*base, str(tree)])
    assert result.returncode == 0, result.stderr
    assert "ignored 1 entries of the folder tree: 1 not an image" in result.stdout
    assert (
        "ev1: person" in result.stdout
        and "single: person" in result.stdout
        and "ev2: person" in result.stdout
    )
    assert "3 events classified (0 skipped), accuracy 0.667 on the 3 labelled events" in result.stdout
    bounded = run([*base, str(tree), "--set", "data.max_frame_pixels=16"])  # 8x8 frames declare 64 pixels
    assert bounded.returncode == 2 and "no event under" in bounded.stderr, bounded.stdout + bounded.stderr
    assert "skipped" in bounded.stdout and "data.max_frame_pixels" in bounded.stdout
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "events.tfrecord.gz").write_bytes(b"")
    refused = run([*base, str(tmp_path / "records")])
    assert (
        refused.returncode == 2
        and "holds TFRecords" in refused.stderr
        and "image-folder tree" in refused.stderr
    )

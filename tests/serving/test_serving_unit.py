"""Serving building blocks in-process: JSON/TensorProto codecs, PIL decoding vs TensorFlow's,
version policy and labels, path validation, dynamic batching."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from contract import layout
from contract.errors import UserError
from ondevice import frames as framecodec
from serving.batching import Batcher, InFlight
from serving.signatures import Signature, TensorSig
from serving.status import ServingError

pytestmark = pytest.mark.unit


def _sig(**inputs) -> Signature:
    from tensorflow.core.framework import types_pb2

    dtypes = {
        "string": types_pb2.DT_STRING,
        "float": types_pb2.DT_FLOAT,
        "int64": types_pb2.DT_INT64,
        "int32": types_pb2.DT_INT32,
        "bool": types_pb2.DT_BOOL,
    }
    ins = {name: TensorSig(name, dtypes[kind], shape) for name, (kind, shape) in inputs.items()}
    return Signature("serving_default", ins, {"y": TensorSig("y", dtypes["float"], (None,))})


# -- JSON requests ----------------------------------------------------------------------------
def test_row_and_column_forms_give_the_same_tensors():
    from serving.tensors import COLUMN, ROW, request_inputs

    sig = _sig(frames=("string", (None, 2)))
    b64 = {"b64": base64.b64encode(b"\x89PNG\x00").decode()}
    rows, form = request_inputs({"instances": [[b64, "plain"], [b64, b64]]}, sig)
    assert form == ROW and rows["frames"].shape == (2, 2)
    assert rows["frames"][0, 0] == b"\x89PNG\x00" and rows["frames"][0, 1] == b"plain"
    cols, form = request_inputs({"inputs": [[b64, "plain"], [b64, b64]]}, sig)
    assert form == COLUMN and (cols["frames"] == rows["frames"]).all()
    named, _ = request_inputs({"inputs": {"frames": [[b64, "plain"], [b64, b64]]}}, sig)
    assert (named["frames"] == rows["frames"]).all()
    objects, _ = request_inputs({"instances": [{"frames": [b64, "plain"]}, {"frames": [b64, b64]}]}, sig)
    assert (objects["frames"] == rows["frames"]).all()


def test_json_tensors_over_the_element_ceiling_are_refused():
    from serving.tensors import request_inputs

    sig = _sig(x=("float", (None, None)))
    arrays, _ = request_inputs({"inputs": [[0.5] * 10]}, sig, max_elements=10)
    assert arrays["x"].shape == (1, 10)
    with pytest.raises(
        ServingError, match=r"input 'x' has 11 elements, more than .* 10 \(serving.max_tensor_elements\)"
    ):
        request_inputs({"inputs": [[0.5] * 11]}, sig, max_elements=10)


def test_multiple_inputs_need_named_objects():
    from serving.tensors import request_inputs

    sig = _sig(a=("float", (None, 2)), b=("int64", (None,)))
    arrays, _ = request_inputs({"instances": [{"a": [1, 2.5], "b": 3}, {"a": [0, 1], "b": -1}]}, sig)
    assert arrays["a"].dtype == np.float32 and arrays["a"].tolist() == [[1, 2.5], [0, 1]]
    assert arrays["b"].dtype == np.int64 and arrays["b"].tolist() == [3, -1]
    with pytest.raises(ServingError, match="plain list"):
        request_inputs({"instances": [[1, 2]]}, sig)
    with pytest.raises(ServingError, match="keys must be equal to: a,b"):
        request_inputs({"instances": [{"a": [1, 2]}]}, sig)
    with pytest.raises(ServingError, match="Missing named input: b"):
        request_inputs({"inputs": {"a": [[1, 2]]}}, sig)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({}, "Missing 'inputs' or 'instances' key"),
        (
            {
                "instances": [],
            },
            "No values in 'instances' array",
        ),
        ({"instances": {"x": 1}}, "to be an list/array"),
        ({"instances": [[1]], "inputs": [[1]]}, "only one of 'inputs' or 'instances'"),
        ({"instances": [["1", "2"]]}, "is not of expected type: float"),
        ({"instances": [[True, False]]}, "is not of expected type: float"),
        ({"instances": [[1, 2], [3]]}, "Expecting shape"),
        ({"inputs": [[1, 2], [3]]}, "ragged"),
        ({"inputs": [[1e300, 1]]}, "without loss of precision"),
        ({"inputs": [[16777217, 1]]}, "without loss of precision"),
    ],
)
def test_bad_float_requests_are_invalid_argument(doc, message):
    from serving.tensors import request_inputs

    with pytest.raises(ServingError, match=message) as e:
        request_inputs(doc, _sig(x=("float", (None, 2))))
    assert e.value.code == "INVALID_ARGUMENT" and e.value.http_status == 400


def test_integer_string_and_bool_type_rules():
    from serving.tensors import request_inputs

    with pytest.raises(ServingError, match="not of expected type: int64"):
        request_inputs({"inputs": [1.5]}, _sig(x=("int64", (None,))))
    with pytest.raises(ServingError, match="not of expected type: int32"):
        request_inputs({"inputs": [2**40]}, _sig(x=("int32", (None,))))
    with pytest.raises(ServingError, match="not of expected type: string"):
        request_inputs({"inputs": [1]}, _sig(x=("string", (None,))))
    with pytest.raises(ServingError, match="Unable to base64 decode"):
        request_inputs({"inputs": [{"b64": "not base64!"}]}, _sig(x=("string", (None,))))
    with pytest.raises(ServingError, match="not formatted correctly for base64"):
        request_inputs({"inputs": [[{"b64": "AA==", "x": 1}]]}, _sig(x=("string", (None, 1))))
    arrays, _ = request_inputs({"inputs": [True, False]}, _sig(x=("bool", (None,))))
    assert arrays["x"].tolist() == [True, False]


def test_parse_errors_and_signature_name_type():
    from serving.tensors import parse_predict_body

    for body, message in [
        (b"", "The document is empty"),
        (b"{not json", "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
        (b'{"signature_name": 3, "instances": [1]}', "'signature_name' key must be a string value"),
    ]:
        with pytest.raises(ServingError, match=message):
            parse_predict_body(body)


def test_response_json_follows_tf_serving_encoding():
    from serving.tensors import COLUMN, ROW, response_json

    outputs = {
        "probabilities": np.array([[0.2, 0.8], [np.nan, np.inf]], np.float32),
        "class_name": np.array([b"person", b"vehicle"], object),
        "thumb_bytes": np.array([b"\x00\xff", b"ok"], object),
        "class_id": np.array([1, 0], np.int64),
    }
    text = response_json(outputs, ROW).decode()
    assert '"probabilities":[0.2,0.8]' in text  # shortest float32 text, not 0.20000000298...
    assert "[NaN,Infinity]" in text
    rows = json.loads(text)["predictions"]
    assert rows[0]["class_name"] == "person" and rows[1]["class_id"] == 0
    assert rows[0]["thumb_bytes"] == {"b64": base64.b64encode(b"\x00\xff").decode()}
    single = json.loads(response_json({"class_id": np.array([3, 4], np.int64)}, ROW))
    assert single == {"predictions": [3, 4]}
    cols = json.loads(response_json({"class_id": np.array([3, 4], np.int64)}, COLUMN))
    assert cols == {"outputs": [3, 4]}
    assert json.loads(
        response_json({"a": np.array([1.0], np.float32), "b": np.array([2], np.int64)}, COLUMN)
    ) == {"outputs": {"a": [1.0], "b": [2]}}


def test_tensor_proto_round_trip_matches_tensorflow():
    import tensorflow as tf

    from serving.tensors import array_to_proto, proto_to_array

    for value in [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[1, -2]], dtype=np.int64),
        np.array([True, False]),
        np.array([[b"a", b""], [b"\x00\xff", b"ccc"]], dtype=object),
    ]:
        proto = array_to_proto(value)
        assert (tf.make_ndarray(proto) == value).all()
        assert (proto_to_array(tf.make_tensor_proto(value)) == value).all()
        assert proto_to_array(tf.make_tensor_proto(value)).shape == value.shape
    # Typed value lists, as other clients send them.
    assert proto_to_array(tf.make_tensor_proto([1.5, 2.5], dtype=tf.float32)).tolist() == [1.5, 2.5]


# -- frames: PIL decoding must match contract.layout.decode_frames ------------------------------
def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("channels, source_size", [(3, 8), (3, 11), (1, 8), (1, 5)])
def test_pil_decoding_matches_tensorflow(channels, source_size):
    import tensorflow as tf

    rng = np.random.default_rng(channels * 100 + source_size)
    spec = layout.EventSpec(("a", "b"), frames=4, height=8, width=8, channels=channels)
    rgb = [_png(rng.integers(0, 256, (source_size, source_size, 3), dtype=np.uint8)) for _ in range(2)]
    gray = _png(rng.integers(0, 256, (source_size, source_size), dtype=np.uint8))
    events = [[rgb[0], gray, rgb[1], b""], [rgb[1], b"", b"", b""]]
    want = layout.decode_frames(tf.constant(events), spec).numpy()
    got = framecodec.decode_events(events, spec.frames, spec.height, spec.width, spec.channels)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_frames_over_the_pixel_limit_are_refused_from_their_header():
    """What device-run and the TFLite servable decode with: the header is checked before decoding."""
    from fixtures import serving_support as ss
    from ondevice.frames import MAX_FRAME_PIXELS, FrameDecodeError, check_frame_pixels, decode_image

    bomb = ss.png_declaring(13000, 13000)
    assert len(bomb) < 100 and 13000 * 13000 > MAX_FRAME_PIXELS
    for check in (lambda: decode_image(bomb, 3), lambda: check_frame_pixels(bomb)):
        with pytest.raises(FrameDecodeError, match="13000x13000 = 169000000 pixels.*data.max_frame_pixels"):
            check()
    frame = ss.frames_png(1)[0]
    assert decode_image(frame, 3, max_pixels=16 * 16).shape[-1] == 3  # the test frames are 16x16 or less
    with pytest.raises(FrameDecodeError, match="pixel limit"):
        decode_image(frame, 3, max_pixels=10)
    # PNG headers are read directly, other formats through PIL: both refuse the same way.
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(jpeg, format="JPEG")
    for data, size in ((frame, "x"), (jpeg.getvalue(), "5x4 = 20 pixels")):
        check_frame_pixels(data, max_pixels=16 * 16)
        with pytest.raises(FrameDecodeError, match=f"{size}.*over the 10-pixel limit"):
            check_frame_pixels(data, max_pixels=10)
    check_frame_pixels(b"")  # padding entries and non-images are left to the decoder's own errors
    check_frame_pixels(b"not an image")


def test_undecodable_frame_is_a_clear_error():
    with pytest.raises(framecodec.FrameDecodeError, match="cannot decode frame"):
        framecodec.decode_event([b"not an image"], 1, 4, 4, 3)
    with pytest.raises(framecodec.FrameDecodeError, match="padding may only follow"):
        framecodec.decode_event([b"", b"", _png(np.zeros((4, 4, 3), np.uint8))], 3, 4, 4, 3)


# -- versions, labels, paths -----------------------------------------------------------------
def test_version_policy_and_scan(tmp_path):
    from serving.versions import VersionPolicy, scan_versions

    for name in ["1", "2", "10", ".tmp-11", "labels.json", "0", "x3"]:
        (tmp_path / name).mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "12")  # a version that escapes the model directory is ignored
    found = scan_versions(str(tmp_path))
    assert sorted(found) == [1, 2, 10]
    assert VersionPolicy.parse("latest").aspired(sorted(found)) == {10}
    assert VersionPolicy.parse("all").aspired(sorted(found)) == {1, 2, 10}
    assert VersionPolicy.parse("specific:2,7").aspired(sorted(found)) == {2}
    for bad in ["newest", "specific:", "specific:0", "specific:a"]:
        with pytest.raises(UserError):
            VersionPolicy.parse(bad)


def test_labels_file_and_model_name_validation(tmp_path):
    from serving.versions import LabelsError, read_labels, validate_model_name

    path = tmp_path / "labels.json"
    assert read_labels(str(path)) == {}
    path.write_text('{"stable": 1, "canary": 2}')
    assert read_labels(str(path)) == {"stable": 1, "canary": 2}
    for bad in ['["stable"]', '{"stable": "1"}', '{"stable": 0}', '{"1x": 1}', "{oops"]:
        path.write_text(bad)
        with pytest.raises(LabelsError):
            read_labels(str(path))
    for bad in ["..", "../etc", "a/b", "", ".hidden"]:
        with pytest.raises(UserError):
            validate_model_name(bad)
    assert validate_model_name("events-v1.2") == "events-v1.2"


def test_a_base_path_one_level_too_high_is_an_error_that_names_the_right_one(tmp_path):
    """TF Serving's --model_base_path holds the versions; the directory above it is a mistake."""
    from serving.versions import check_base_path

    (tmp_path / "eventpipe" / "1").mkdir(parents=True)
    with pytest.raises(UserError, match=f"pass --model_base_path {tmp_path / 'eventpipe'}"):
        check_base_path(str(tmp_path), "eventpipe")
    assert check_base_path(str(tmp_path / "eventpipe"), "eventpipe") == str(tmp_path / "eventpipe")
    assert check_base_path(str(tmp_path), "other") == str(tmp_path)  # empty for now: versions may come
    with pytest.raises(UserError, match="is not a directory"):
        check_base_path(str(tmp_path / "missing"), "eventpipe")


def test_latest_policy_keeps_the_n_newest_versions():
    from serving.versions import VersionPolicy

    assert VersionPolicy("latest", count=2).aspired([1, 3, 7]) == {3, 7}
    assert VersionPolicy("latest").aspired([1, 3, 7]) == {7}
    assert str(VersionPolicy("latest", count=2)) == "latest:2"


# -- dynamic batching ------------------------------------------------------------------------
def test_batcher_merges_concurrent_requests_and_isolates_failures():
    calls: list[int] = []

    def run(arrays):
        x = arrays["x"]
        calls.append(x.shape[0])
        if (x < 0).any():
            raise ValueError("negative input")
        time.sleep(0.01)
        return {"y": x * 2}

    in_flight = InFlight()
    batcher = Batcher(run, max_batch_size=8, timeout_s=0.05, in_flight=in_flight)

    def burst(values: list[int]) -> dict[int, object]:
        results: dict[int, object] = {}
        everyone_inside = threading.Barrier(len(values))

        def client(i: int) -> None:
            with in_flight:
                everyone_inside.wait()  # all requests are in flight before the first is submitted
                try:
                    results[i] = batcher.submit({"x": np.array([[i, i]], np.float32)}, 1)["y"].tolist()
                except ValueError as e:
                    results[i] = str(e)

        threads = [threading.Thread(target=client, args=(v,)) for v in values]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        return results

    results = burst(list(range(8)))
    assert results == {i: [[2 * i, 2 * i]] for i in range(8)}
    assert max(calls) > 1 and len(calls) < 8, f"8 concurrent requests were not merged: {calls}"
    calls.clear()
    results = burst([1, 2, -5, 3])
    assert results == {1: [[2, 2]], 2: [[4, 4]], -5: "negative input", 3: [[6, 6]]}
    assert max(calls) > 1, f"no merged attempt in {calls}"  # merged call failed, then each ran alone
    batcher.close()


def test_lone_request_does_not_wait_for_the_timeout():
    in_flight = InFlight()
    batcher = Batcher(lambda a: {"y": a["x"]}, max_batch_size=16, timeout_s=2.0, in_flight=in_flight)
    started = time.perf_counter()
    with in_flight:
        batcher.submit({"x": np.zeros((1, 2))}, 1)
    assert time.perf_counter() - started < 0.5
    batcher.close()


def test_lone_request_runs_in_its_own_thread():
    """No worker hand-off: with nothing queued or in flight, the caller's thread calls the model."""
    in_flight = InFlight()
    threads: list[threading.Thread] = []

    def run(arrays):
        threads.append(threading.current_thread())
        return {"y": arrays["x"] + 1}

    batcher = Batcher(run, max_batch_size=16, timeout_s=5.0, in_flight=in_flight)
    started = time.perf_counter()
    for _ in range(3):
        with in_flight:
            assert batcher.submit({"x": np.zeros((1, 2))}, 1)["y"].tolist() == [[1.0, 1.0]]
    assert time.perf_counter() - started < 1.0  # three requests, each far under the 5 s timeout
    assert threads == [threading.current_thread()] * 3
    batcher.close()


def test_a_lone_request_that_fails_raises_and_frees_the_batcher():
    def run(arrays):
        if (arrays["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": arrays["x"] * 2}

    in_flight = InFlight()
    batcher = Batcher(run, max_batch_size=16, timeout_s=5.0, in_flight=in_flight)
    with in_flight, pytest.raises(ValueError, match="negative input"):
        batcher.submit({"x": -np.ones((1, 2))}, 1)
    started = time.perf_counter()
    with in_flight:
        assert batcher.submit({"x": np.ones((1, 2))}, 1)["y"].tolist() == [[2.0, 2.0]]
    assert time.perf_counter() - started < 1.0  # not stuck behind a lead that was never handed on
    batcher.close()


def test_merged_batches_split_uneven_requests_in_order_and_keep_one_call_at_a_time():
    """Requests of 1-3 rows queued behind a running call: each gets exactly its own rows back."""
    in_flight = InFlight()
    sizes: list[int] = []
    running = threading.Semaphore(1)
    gate = threading.Event()

    def run(arrays):
        assert running.acquire(blocking=False), "two model calls at once"
        try:
            sizes.append(arrays["x"].shape[0])
            gate.wait(5)  # the first call blocks until every other request is queued
            return {"y": arrays["x"] * 10, "n": arrays["x"][:, 0].astype(np.int64)}
        finally:
            running.release()

    batcher = Batcher(run, max_batch_size=8, timeout_s=5.0, in_flight=in_flight)
    rows = {i: 1 + i % 3 for i in range(9)}  # 18 rows: at least three calls of <= 8 rows
    results: dict[int, object] = {}

    def client(i: int) -> None:
        with in_flight:
            x = np.full((rows[i], 2), i, np.float32)
            results[i] = batcher.submit({"x": x}, rows[i])

    first = threading.Thread(target=client, args=(0,))
    first.start()
    while not sizes:
        time.sleep(0.001)
    others = [threading.Thread(target=client, args=(i,)) for i in range(1, 9)]
    for t in others:
        t.start()
    while len(batcher._pending) < 8:  # all queued behind the blocked call
        time.sleep(0.001)
    gate.set()
    released = time.perf_counter()
    for t in [first, *others]:
        t.join(timeout=10)
    # The last batch goes once the earlier requests have left, not after the 5 s timeout.
    assert time.perf_counter() - released < 2.5
    for i, n in rows.items():
        assert results[i]["y"].tolist() == [[10.0 * i] * 2] * n
        assert results[i]["n"].tolist() == [i] * n
    assert sizes[0] == 1 and max(sizes[1:]) > 3 and all(s <= 8 for s in sizes), sizes
    assert sum(sizes) == sum(rows.values())
    batcher.close()


def test_batch_threads_run_batches_side_by_side_and_free_their_slots():
    """threads=2: two model calls at once (a lone call does not hold back the next request);
    queued requests are promoted as calls end, and every slot is free afterwards."""
    in_flight = InFlight()
    both_running = threading.Barrier(2, timeout=5)
    gate = threading.Event()
    lock = threading.Lock()
    active, peak, sizes = [0], [0], []

    def run(arrays):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            sizes.append(arrays["x"].shape[0])
            first_two = len(sizes) <= 2
        try:
            if first_two:
                both_running.wait()  # BrokenBarrierError unless a second call runs beside this one
                gate.wait(5)
            return {"y": arrays["x"] + 1}
        finally:
            with lock:
                active[0] -= 1

    batcher = Batcher(run, max_batch_size=3, timeout_s=5.0, in_flight=in_flight, threads=2)
    results: dict[int, object] = {}

    def client(i: int) -> None:
        with in_flight:
            results[i] = batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1)["y"].tolist()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    threads[0].start()
    deadline = time.monotonic() + 5
    while not sizes and time.monotonic() < deadline:  # the first request is in its model call
        time.sleep(0.001)
    threads[1].start()
    while peak[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert peak[0] == 2, "the second request did not run beside the first"
    queued = [threading.Thread(target=client, args=(i,)) for i in range(2, 8)]
    for t in queued:
        t.start()
    while len(batcher._pending) < 6 and time.monotonic() < deadline:  # both slots busy: the rest queue
        time.sleep(0.001)
    gate.set()
    for t in threads + queued:
        t.join(timeout=10)
    assert results == {i: [[i + 1.0, i + 1.0]] for i in range(8)}
    assert peak[0] == 2 and all(s <= 3 for s in sizes) and sum(sizes) == 8, (peak, sizes)
    assert len(sizes) < 8, f"queued requests were not merged: {sizes}"
    started = time.perf_counter()
    batcher.close()  # returns at once: no slot is left taken
    assert time.perf_counter() - started < 1.0


def test_a_free_slot_does_not_split_an_open_batch():
    """threads=2: requests that arrive while a leader waits for them join its batch; they do not
    take the free slot and leave the leader waiting out its timeout."""
    in_flight = InFlight()
    calls: list[int] = []
    batcher = Batcher(
        lambda a: calls.append(a["x"].shape[0]) or {"y": a["x"]}, max_batch_size=8, timeout_s=5.0,
        in_flight=in_flight, threads=2,
    )  # fmt: skip
    everyone_inside = threading.Barrier(4)
    done: list[float] = []

    def client() -> None:
        with in_flight:
            everyone_inside.wait(5)  # all four are in flight before the first submits
            batcher.submit({"x": np.zeros((1, 2))}, 1)
        done.append(time.perf_counter())

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(done) == 4 and max(done) - started < 2.0, "a leader waited out its 5 s timeout"
    assert calls == [4], f"four requests in flight together were not one call: {calls}"
    batcher.close()


def test_close_drains_queued_requests_then_runs_directly():
    in_flight = InFlight()
    gate = threading.Event()
    calls: list[int] = []

    def run(arrays):
        calls.append(arrays["x"].shape[0])
        gate.wait(5)
        return {"y": arrays["x"]}

    batcher = Batcher(run, max_batch_size=4, timeout_s=0.01, in_flight=in_flight)
    done: list[bool] = []

    def client() -> None:
        with in_flight:
            batcher.submit({"x": np.zeros((1, 1))}, 1)
            done.append(True)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    while len(batcher._pending) < 2:
        time.sleep(0.001)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # waits for the queued requests
    gate.set()
    closer.join(timeout=10)
    for t in threads:
        t.join(timeout=10)
    assert done == [True] * 3 and calls == [1, 2]
    assert batcher.submit({"x": np.zeros((2, 1))}, 2)["y"].shape == (2, 1)  # closed: direct call


def test_version_directory_platform(tmp_path):
    from serving.servables import TENSORFLOW, TFLITE, LoadError, detect_platform

    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert detect_platform(str(tmp_path)) == TENSORFLOW
    (tmp_path / "model.tflite").write_bytes(b"")
    assert detect_platform(str(tmp_path)) == TENSORFLOW
    assert detect_platform(str(tmp_path), prefer_tflite=True) == TFLITE
    (tmp_path / "saved_model.pb").unlink()
    assert detect_platform(str(tmp_path)) == TFLITE
    (tmp_path / "model.tflite").unlink()
    with pytest.raises(LoadError, match="neither saved_model.pb"):
        detect_platform(str(tmp_path))


def test_cli_rejects_bad_serving_arguments_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "m").mkdir()
    cases = [
        (
            ["serve", "--model-base-path", str(tmp_path / "missing"), "--model-name", "m"],
            "is not a directory",
        ),
        (["serve", "--model-base-path", str(tmp_path), "--model-name", "../m"], "is not allowed"),
        (
            [
                "serve",
                "--model_base_path",
                str(tmp_path / "m"),
                "--model_name",
                "m",
                "--version-policy",
                "newest",
            ],
            "--version-policy must be",
        ),
        (
            ["serve", "--model_base_path", str(tmp_path), "--model_name", "m"],
            f"pass --model_base_path {tmp_path / 'm'}",
        ),
        (
            [
                "serve",
                "--model_base_path",
                str(tmp_path / "m"),
                "--model_name",
                "m",
                "--tensorflow_intra_op_parallelism",
                "-1",
            ],
            "--tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism must be >= 0",
        ),
        (["serve", "--model_config_file", str(tmp_path / "none.config")], "--model_config_file"),
        (["device-run", "--model", str(tmp_path / "none.tflite"), "--data", str(tmp_path)], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_one_runtime_chooser_prefers_litert_and_can_be_pinned(monkeypatch):
    """LiteRT when installed; ``EVENTPIPE_TFLITE_RUNTIME`` pins one; a wrong pin is an error,
    not a fallback."""
    from ondevice import runtime

    def choose(value: str | None, **kwargs):
        if value is None:
            monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
        else:
            monkeypatch.setenv(runtime.RUNTIME_ENV, value)
        runtime.lite_runtime.cache_clear()
        return runtime.lite_runtime(**kwargs)

    try:
        chosen = choose(None)
        assert (chosen.name, chosen.version, chosen.module) == (
            "ai-edge-litert",
            "1.4.0",
            "ai_edge_litert.interpreter",
        )
        assert str(chosen) == "ai-edge-litert 1.4.0" and runtime.interpreter_class() is chosen.interpreter
        pinned = choose("tflite-runtime")
        assert pinned.describe() == {
            "name": "tflite-runtime",
            "version": "2.14.0",
            "module": "tflite_runtime.interpreter",
        }
        with pytest.raises(
            runtime.RuntimeUnavailable, match="expected one of ai-edge-litert, tflite-runtime$"
        ):
            choose("tensorflow", allow_tensorflow=False)  # the on-device path never runs on tf.lite
        with pytest.raises(runtime.RuntimeUnavailable, match="'litert'"):
            choose("litert")
    finally:
        monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
        runtime.lite_runtime.cache_clear()


def test_saved_model_signatures_answer_as_the_restored_functions_do():
    """The servable calls each signature through a positional wrapper (restored signatures
    resolve every captured variable in Python per call); the answers must not change, and an
    export the wrapper cannot trace is still called as restored."""
    import tensorflow as tf

    from fixtures.serving_support import SPEC, frames_png, saved_model
    from serving.servables import SavedModelServable, _positional

    path = saved_model(2)
    servable = SavedModelServable(path)
    loaded = tf.saved_model.load(path)  # owns the variables the signatures use
    restored = loaded.signatures
    events = np.empty((2, SPEC.frames), dtype=object)
    events[0, :], events[1, :] = frames_png(SPEC.frames, seed=1), frames_png(SPEC.frames, seed=2)
    decoded = layout.decode_frames(tf.constant(events), SPEC).numpy()
    for name, value in (("serving_default", events), (layout.DECODED_SIGNATURE, decoded)):
        signature = servable.signature(name)
        assert _positional(restored[name], signature.inputs)[0] == ["frames"]  # wrapped, not the fallback
        outputs = sorted(signature.outputs)
        got = servable.run(signature, {"frames": value}, outputs)
        want = restored[name](frames=tf.constant(value))
        for key in outputs:
            assert got[key].dtype == want[key].numpy().dtype, key
            np.testing.assert_array_equal(got[key], want[key].numpy())
    assert got[layout.OUT_CLASS].tolist() == [b"vehicle", b"vehicle"]
    # arguments that are not the SignatureDef's inputs (a TF1 sparse input's parts): as restored
    assert _positional(restored["serving_default"], {"frames_indices": None}) == (
        None,
        restored["serving_default"],
    )

    class Untraceable:
        structured_input_signature = ((), {"frames": tf.TensorSpec([None], tf.string)})

        def __call__(self, **kwargs):
            raise TypeError("cannot be called inside a graph")

    fn = Untraceable()
    assert _positional(fn, {"frames": None}) == (None, fn)


# Every flag `tensorflow_model_server --help` lists (TF Serving 2.16), held here, apart from the
# module's own list, so that neither can shrink without a test failing.
TF_SERVING_216_FLAGS = """
port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms rest_api_enable_cors_support
enable_batching allow_version_labels_for_unavailable_models batching_parameters_file
enable_per_model_batching_parameters model_config_file model_config_file_poll_wait_seconds model_name
model_base_path num_load_threads num_unload_threads max_num_load_retries load_retry_interval_micros
file_system_poll_wait_seconds flush_filesystem_caches tensorflow_session_parallelism
tensorflow_session_config_file tensorflow_intra_op_parallelism tensorflow_inter_op_parallelism
use_alts_credentials ssl_config_file platform_config_file per_process_gpu_memory_fraction saved_model_tags
grpc_channel_arguments grpc_max_threads enable_model_warmup num_request_iterations_for_warmup version
monitoring_config_file remove_unused_fields_from_bundle_metagraph prefer_tflite_model num_tflite_pools
num_tflite_interpreters_per_pool enable_signature_method_name_check xla_cpu_compilation_enabled
enable_profiler thread_pool_factory_config_file
""".split()
SAMPLE_VALUES = {"BOOL": "true", "N": "2", "X": "0.5", "VALUE": "x"}


def test_every_tensorflow_model_server_flag_is_accepted():
    from pipeline.cli import build_parser
    from serving import tfs_flags

    assert set(tfs_flags.TF_SERVING_FLAGS) == set(TF_SERVING_216_FLAGS)
    parser = build_parser()
    (serve,) = [a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "serve"]
    options = {opt: action for action in serve[1]._actions for opt in action.option_strings}
    values = {"port": "8500", "rest_api_port": "8501", "model_name": "m", "model_base_path": "/m"}
    for flag in TF_SERVING_216_FLAGS:
        action = options.get(f"--{flag}")
        assert action is not None, f"--{flag} is not accepted"
        value = values.get(flag) or SAMPLE_VALUES.get(action.metavar or "", "1")
        args = ["serve", f"--{flag}"] if action.nargs == 0 else ["serve", f"--{flag}={value}"]
        parser.parse_args(args)  # no SystemExit: the flag and a value of its type parse
    args = parser.parse_args(
        ["serve", "--enable_profiler=false", "--rest_api_timeout_in_ms=100", "--enable_model_warmup"]
    )
    lines = tfs_flags.no_effect_lines(args)
    assert len(lines) == 3 and all("has no effect here" in line for line in lines)
    assert lines[0].startswith("--rest_api_timeout_in_ms=100 ")
    assert (
        tfs_flags.refusals(parser.parse_args(["serve", "--ssl_config_file=", "--use_alts_credentials=false"]))
        == []
    )
    refused = tfs_flags.refusals(parser.parse_args(["serve", "--ssl_config_file=tls.config"]))
    assert len(refused) == 1 and "terminate TLS" in refused[0]


def test_grpc_channel_arguments_parse_as_tf_serving_reads_them():
    from serving.grpc_service import channel_options

    assert channel_options("grpc.max_connection_age_ms=2000, grpc.primary_user_agent=x") == [
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.primary_user_agent", "x"),
    ]
    assert channel_options("") == []
    with pytest.raises(UserError, match="not key=value"):
        channel_options("grpc.max_connection_age_ms")


def test_tf_serving_series_render_as_prometheus_reads_them():
    from prometheus_client.parser import text_string_to_metric_families

    from serving.metrics import TFS_LATENCY_BOUNDS_US, TfServingSeries

    series = TfServingSeries()
    for seconds in (0.000005, 0.0001, 0.0001, 2.0):
        series.observe('m"1\\\n', "Predict", "REST", "OK", seconds)
    series._count[("big", "OK")] = 1_234_567  # counts past a million keep every digit
    series.observe_load("/models/m/1", ok=True)
    text = series.render()
    assert ':tensorflow:serving:request_count{model_name="big",status="OK"} 1234567' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families[":tensorflow:serving:request_latency"].samples
    buckets = [s.value for s in samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 4  # cumulative, +Inf = count
    assert len(buckets) == len(TFS_LATENCY_BOUNDS_US) + 1
    assert {s.labels["model_name"] for s in samples} == {'m"1\\\n'}  # escaped and read back whole
    total = [s.value for s in samples if s.name.endswith("_sum")][0]
    assert total == pytest.approx(2_000_205.0)
    assert families[":tensorflow:cc:saved_model:load_attempt_count"].samples[0].labels["status"] == "success"


def test_short_events_are_padded_to_the_bound_within_the_element_limit():
    from tensorflow.core.framework import types_pb2

    from serving.servables import bound_frames

    spec = layout.EventSpec(("a", "b"), 3, 8, 8, 3)
    legacy = Signature("serving_default", {"frames": TensorSig("frames", types_pb2.DT_STRING, (None, 3))}, {})
    (bounded,) = bound_frames({"serving_default": legacy}, spec).values()  # an export from before [-1, -1]
    frames = bounded.inputs["frames"]
    assert (
        frames.shape == (None, None) and frames.max_shape == (None, 3) and frames.shape_text() == "[-1,1..3]"
    )
    short = np.array([[b"f0", b"f1"]], dtype=object)
    assert bounded.check_inputs({"frames": short}) == 1
    assert bounded.padded_inputs({"frames": short}, 100)["frames"].tolist() == [[b"f0", b"f1", b""]]
    with pytest.raises(ServingError, match="1..3"):
        bounded.check_inputs({"frames": np.array([[b"x"] * 4], dtype=object)})
    with pytest.raises(ServingError, match="1..3"):
        bounded.check_inputs({"frames": np.empty((1, 0), dtype=object)})
    many = np.full((40, 1), b"f", dtype=object)  # 40 elements sent, 120 once padded
    with pytest.raises(ServingError, match="padded to shape \\[40, 3\\] holds more than 100 elements"):
        bounded.padded_inputs({"frames": many}, 100)


def test_session_parallelism_is_read_as_tf_serving_reads_it():
    from pipeline.cli import build_parser
    from serving.cli import serve_command

    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=4"]
    )
    with pytest.raises(UserError, match="cannot be given with"):
        serve_command(args)


def test_a_taken_grpc_port_is_a_clear_error_and_frees_the_rest_port(tmp_path):
    """REST binds first; when the gRPC port is taken the server must say so and give the REST
    port back at once (stopping a REST server whose loop never ran used to wait forever)."""
    import socket

    from contract.config import ServingConfig
    from serving.server import ModelServer

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    options = ServingConfig(model_name="m", host="127.0.0.1", rest_port=0, grpc_port=taken.getsockname()[1])
    outcome: dict = {}

    def build() -> None:
        try:
            ModelServer(options, str(tmp_path)).stop()
            outcome["error"] = None
        except UserError as e:
            outcome["error"] = str(e)

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(timeout=30)
    taken.close()
    assert not worker.is_alive(), "ModelServer hung after failing to bind its gRPC port"
    assert outcome["error"] and "cannot listen for gRPC" in outcome["error"]

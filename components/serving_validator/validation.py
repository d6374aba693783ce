"""Serving validation: the candidate loads in OUR server and answers real clients like in-process.

Steps (every one bounded by a timeout, the server always stopped):

1. push the candidate SavedModel as version 1 of a fresh temporary model base path (the same
   ``components.pusher.push`` code the Pusher uses, so the pushed layout is what gets validated);
2. start ``python -m pipeline.cli serve`` on free loopback ports (``serving.rest_port=0``,
   ``serving.grpc_port=0``, ``--port-file``) in a subprocess;
3. wait until REST status reports version 1 ``AVAILABLE`` (or ``END`` with the load error);
4. check ``/metadata`` lists the contract's ``serving_default`` signature;
5. send N eval events (read with ``contract.layout``) as REST row-form requests (one event
   each, ``{"b64": ...}`` frames), one REST column-form request and one gRPC ``Predict``
   through ``PredictionServiceStub``;
6. compare every answer with the SavedModel run in this process (probabilities within
   ``tolerance``; class name, class id and best frame equal), and check the contract itself
   (probabilities ``[N, C]`` summing to 1, class names from the model's EventSpec, class =
   argmax), since a model that is wrong the same way in both places must not pass either.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from components.pusher.push import push_saved_model
from contract import layout
from contract.layout import EventSpec
from serving.process import ServerProcess
from serving.warmup import predict_logs
from trainer.models.export import load_spec

VERSION = 1
MAX_REPORTED_MISMATCHES = 20
REQUEST_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 4000
COMPARED = (layout.OUT_PROBABILITIES, layout.OUT_CLASS, layout.OUT_CLASS_ID, layout.OUT_BEST_FRAME)


# -- events and the in-process reference ------------------------------------------------------
def in_process_outputs(model_dir: str, frames: np.ndarray) -> dict[str, np.ndarray]:
    """The contract outputs of ``serving_default`` called in this process."""

    loaded = tf.saved_model.load(model_dir)
    out = loaded.signatures["serving_default"](**{layout.SERVING_INPUT: tf.constant(frames, tf.string)})
    return {k: v.numpy() for k, v in out.items()}


def contract_problems(outputs: dict[str, np.ndarray], spec: EventSpec, rows: int) -> list[str]:
    """What is wrong with a model's outputs for ``rows`` events, against the exported-model contract."""
    problems = []
    missing = [k for k in COMPARED if k not in outputs]
    if missing:
        return [f"serving_default lacks the contract outputs {missing} (has {sorted(outputs)})"]
    probs = np.asarray(outputs[layout.OUT_PROBABILITIES])
    if probs.shape != (rows, spec.num_classes):
        problems.append(
            f"probabilities have shape {list(probs.shape)}, expected [{rows}, {spec.num_classes}]"
        )
        return problems
    sums = probs.sum(axis=1)
    if not np.all(np.isfinite(probs)) or np.any(np.abs(sums - 1.0) > 1e-3):
        problems.append(
            f"probabilities are not a distribution per event (row sums {np.round(sums, 4).tolist()})"
        )
    names = [_text(v) for v in np.asarray(outputs[layout.OUT_CLASS]).reshape(-1)]
    ids = np.asarray(outputs[layout.OUT_CLASS_ID]).reshape(-1)
    best = np.asarray(outputs[layout.OUT_BEST_FRAME]).reshape(-1)
    if len(names) != rows or len(ids) != rows or len(best) != rows:
        problems.append(
            f"class_name/class_id/best_frame have {len(names)}/{len(ids)}/{len(best)} rows, expected {rows}"
        )
        return problems
    unknown = sorted({n for n in names if n not in spec.classes})
    if unknown:
        problems.append(f"class names {unknown} are not in the model's classes {list(spec.classes)}")
    argmax = probs.argmax(axis=1)
    if np.any(ids != argmax):
        problems.append("class_id is not the argmax of probabilities")
    if not unknown and any(spec.class_id(n) != i for n, i in zip(names, ids, strict=True)):
        problems.append("class_name does not name class_id")
    if np.any((best < 0) | (best >= spec.frames)):
        problems.append(f"best_frame outside [0, {spec.frames})")
    return problems


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def compare(
    reference: dict[str, np.ndarray],
    answer: dict[str, Any],
    rows: slice,
    tolerance: float,
    via: str,
    ids: list[str],
) -> list[dict[str, Any]]:
    """Mismatches between a server answer and the in-process outputs for events ``rows``."""
    out = []
    expected_probs = reference[layout.OUT_PROBABILITIES][rows]
    try:
        got_probs = np.asarray(answer[layout.OUT_PROBABILITIES], dtype=np.float64).reshape(
            expected_probs.shape
        )
    except (KeyError, ValueError, TypeError) as e:
        return [{"via": via, "events": ids[rows], "problem": f"probabilities unusable: {e}"}]
    diff = np.abs(got_probs - expected_probs).max(axis=1)
    fields = [(layout.OUT_CLASS, _text), (layout.OUT_CLASS_ID, int), (layout.OUT_BEST_FRAME, int)]
    columns = {}
    for name, conv in fields:
        try:
            columns[name] = [conv(v) for v in np.asarray(answer[name], dtype=object).reshape(-1)]
        except (KeyError, ValueError, TypeError) as e:
            return [{"via": via, "events": ids[rows], "problem": f"{name} unusable: {e}"}]
    for i, row in enumerate(range(*rows.indices(len(ids)))):
        problems = []
        if diff[i] > tolerance:
            problems.append(f"probabilities differ by {diff[i]:.3g} > {tolerance:g}")
        for name, conv in fields:
            expected = conv(reference[name][row])
            got = columns[name][i] if i < len(columns[name]) else None
            if got != expected:
                problems.append(f"{name} {got!r} != in-process {expected!r}")
        if problems:
            out.append({"via": via, "event_id": ids[row], "problem": "; ".join(problems)})
    return out


# -- the server subprocess -------------------------------------------------------------------
def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, {"error": raw.decode("utf-8", errors="replace")[:500]}


def wait_available(server: ServerProcess, model_name: str, deadline: float) -> dict[str, Any]:
    """Poll REST status until version 1 is AVAILABLE or ended; the last status seen."""
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return {
                "state": "EXITED",
                "error_message": f"the server exited with code {server.proc.returncode}",
            }
        try:
            code, body = _http(f"{server.url}/v1/models/{model_name}/versions/{VERSION}")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = {"state": "UNREACHABLE", "error_message": str(e)}
        else:
            for status in body.get("model_version_status", []) if code == 200 else []:
                last = {
                    "state": status.get("state"),
                    "error_message": status.get("status", {}).get("error_message", ""),
                }
                if last["state"] in ("AVAILABLE", "END"):
                    return last
            if code != 200:
                last = {"state": f"HTTP {code}", "error_message": body.get("error", "")}
        time.sleep(0.1)
    return {**last, "timed_out": True}


def _b64_rows(frames: np.ndarray) -> list[list[dict[str, str]]]:
    return [[{"b64": base64.b64encode(bytes(f)).decode("ascii")} for f in event] for event in frames]


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p99": round(float(np.percentile(arr, 99)), 3),
            "max": round(float(arr.max()), 3), "count": len(values)}  # fmt: skip


def _check_metadata(server: ServerProcess, model_name: str) -> list[str]:
    code, body = _http(f"{server.url}/v1/models/{model_name}/metadata")
    if code != 200:
        return [f"GET metadata answered {code}: {body.get('error', '')}"]
    defs = body.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    sig = defs.get("serving_default")
    if sig is None:
        return [f"no serving_default signature in the server's metadata (has {sorted(defs)})"]
    inputs = sig.get("inputs", {})
    if layout.SERVING_INPUT not in inputs or inputs[layout.SERVING_INPUT].get("dtype") != "DT_STRING":
        return [f"serving_default does not take {layout.SERVING_INPUT!r} as DT_STRING (inputs {inputs})"]
    return []


def _rest_requests(server, model_name, frames, ids, reference, tolerance, report) -> None:
    url = f"{server.url}/v1/models/{model_name}/versions/{VERSION}:predict"
    rows = _b64_rows(frames)
    for i, row in enumerate(rows):
        started = time.perf_counter()
        code, body = _http(url, {"signature_name": "serving_default", "instances": [row]})
        report["latency_ms"]["rest_row"].append((time.perf_counter() - started) * 1000)
        report["requests"]["rest_row"] += 1
        if code != 200:
            report["errors"].append(f"REST row predict for {ids[i]} answered {code}: {body.get('error', '')}")
            continue
        prediction = body.get("predictions", [{}])[0]
        answer = {k: [v] for k, v in prediction.items()} if isinstance(prediction, dict) else {}
        report["mismatches"] += compare(reference, answer, slice(i, i + 1), tolerance, "rest_row", ids)
    started = time.perf_counter()
    code, body = _http(url, {"signature_name": "serving_default", "inputs": {layout.SERVING_INPUT: rows}})
    report["latency_ms"]["rest_column"].append((time.perf_counter() - started) * 1000)
    report["requests"]["rest_column"] += 1
    if code != 200:
        report["errors"].append(f"REST column predict answered {code}: {body.get('error', '')}")
    else:
        outputs = body.get("outputs", {})
        report["mismatches"] += compare(reference, outputs if isinstance(outputs, dict) else {},
                                        slice(0, len(ids)), tolerance, "rest_column", ids)  # fmt: skip


def _grpc_request(server, model_name, frames, ids, reference, tolerance, report) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.model_spec.version.value = VERSION
    request.inputs[layout.SERVING_INPUT].CopyFrom(tf.make_tensor_proto(frames.tolist(), dtype=tf.string))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        started = time.perf_counter()
        try:
            response = stub.Predict(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.RpcError as e:
            report["errors"].append(f"gRPC Predict failed: {e.code().name}: {e.details()}")
            return
        finally:
            report["latency_ms"]["grpc"].append((time.perf_counter() - started) * 1000)
            report["requests"]["grpc"] += 1
    if response.model_spec.version.value != VERSION:
        report["errors"].append(
            f"gRPC Predict answered from version {response.model_spec.version.value}, not {VERSION}"
        )
    answer = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    report["mismatches"] += compare(reference, answer, slice(0, len(ids)), tolerance, "grpc", ids)


def _serve_and_compare(
    server: ServerProcess,
    model_name: str,
    frames: np.ndarray,
    ids: list[str],
    reference: dict[str, np.ndarray] | None,
    tolerance: float,
    started: float,
    deadline: float,
    report: dict[str, Any],
) -> None:
    """Wait for the version to load, then check metadata and send the requests (into ``report``)."""
    problems = report["problems"]
    try:
        server.wait_listening(max(0.0, deadline - time.monotonic()))
    except (RuntimeError, TimeoutError) as e:
        problems.append(str(e).splitlines()[0].rstrip(":"))  # the log goes to server_log_tail
        return
    report["status"] = state = wait_available(server, model_name, deadline)
    report["load_seconds"] = round(time.monotonic() - started, 2)
    if state.get("state") != "AVAILABLE":
        why = "timed out" if state.get("timed_out") else f"state {state.get('state')}"
        problems.append(f"version {VERSION} never became AVAILABLE ({why}): {state.get('error_message', '')}")
        return
    try:
        problems += _check_metadata(server, model_name)
        if reference is not None and not problems:
            _rest_requests(server, model_name, frames, ids, reference, tolerance, report)
            _grpc_request(server, model_name, frames, ids, reference, tolerance, report)
    except (urllib.error.URLError, OSError) as e:  # the server died or hung mid-way
        report["errors"].append(f"request failed: {type(e).__name__}: {e}")


@dataclass(frozen=True)
class _Trial:
    """One validation run's candidate, events and clock, handed as one to its phases."""

    model_dir: str
    model_name: str
    frames: np.ndarray
    ids: list[str]
    spec: EventSpec  # the model's own, else the examples'
    tolerance: float
    started: float
    deadline: float


def validate_in_server(
    model_dir: str,
    examples_uri: str,
    *,
    model_name: str,
    num_events: int,
    tolerance: float,
    timeout_s: float,
) -> dict[str, Any]:
    """Serve ``model_dir`` in a real server process and check its answers; the validation report.

    ``report["blessed"]`` is True only if the model loaded, the metadata lists the contract
    signature, every request succeeded, no answer differs from in-process and the outputs
    meet the contract. ``report["problems"]`` says why not, one line each.
    """

    started = time.monotonic()
    report = _new_report(model_dir, examples_uri, model_name)
    spec, model_spec = _load_specs(model_dir, examples_uri, report["problems"])
    frames, ids = layout.read_encoded_events(examples_uri, spec, num_events)
    report["events"] = len(ids)
    trial = _Trial(
        model_dir, model_name, frames, ids, model_spec or spec, tolerance, started, started + timeout_s
    )
    _push_and_serve(trial, report)
    return _conclude(report, started)


def _new_report(model_dir: str, examples_uri: str, model_name: str) -> dict[str, Any]:
    return {
        "model_dir": model_dir,
        "examples": examples_uri,
        "model_name": model_name,
        "requests": {"rest_row": 0, "rest_column": 0, "grpc": 0},
        "latency_ms": {"rest_row": [], "rest_column": [], "grpc": []},
        "mismatches": [],
        "errors": [],
        "problems": [],
    }


def _load_specs(model_dir: str, examples_uri: str, problems: list[str]) -> tuple[EventSpec, EventSpec | None]:
    """The examples' spec and the model's (None when unreadable): a model exported for other
    data is a problem, not an error."""
    spec = EventSpec.load(examples_uri)
    try:
        model_spec = load_spec(model_dir)
    except (OSError, ValueError, KeyError) as e:
        model_spec = None
        problems.append(f"the model has no readable assets.extra/{layout.SPEC_FILE}: {e}")
    if model_spec is not None and model_spec != spec:
        problems.append(
            f"the model was exported for {model_spec.to_dict()}, the examples are {spec.to_dict()}"
        )
    return spec, model_spec


def _push_and_serve(trial: _Trial, report: dict[str, Any]) -> None:
    """Push, start the server, check in-process, then (unless that failed) the server's answers;
    the server is always stopped and the scratch base removed."""
    problems: list[str] = report["problems"]
    workdir = tempfile.mkdtemp(prefix="eventpipe-serving-validation-")
    server = None
    try:
        # Version 1 of a fresh base, with the warm-up records the Pusher writes: the server replays them.
        push_saved_model(
            trial.model_dir,
            os.path.join(workdir, "base"),
            trial.model_name,
            predict_logs(trial.frames, trial.model_name),
        )
        server = ServerProcess(
            os.path.join(workdir, "base", trial.model_name), trial.model_name, workdir=workdir
        )
        # The reference runs here while the server process starts and loads.
        reference = _in_process_reference(trial, problems)
        if reference is not None and problems:
            # It runs but answers wrongly (or is for other data): refused without waiting for the server.
            report["serving_skipped"] = "the in-process checks already failed"
        else:
            _serve_and_compare(
                server, trial.model_name, trial.frames, trial.ids, reference, trial.tolerance,
                trial.started, trial.deadline, report,
            )  # fmt: skip
    finally:
        if server is not None:
            report["server_exit_code"] = server.stop()
            if problems or report["errors"] or report["mismatches"]:
                report["server_log_tail"] = server.log_tail(LOG_TAIL_CHARS)
        shutil.rmtree(workdir, ignore_errors=True)


def _in_process_reference(trial: _Trial, problems: list[str]) -> dict[str, np.ndarray] | None:
    """The outputs to compare the server's with (None if the model does not run here), checked
    against the contract: a model wrong the same way in both places must not pass."""
    try:
        reference = in_process_outputs(trial.model_dir, trial.frames)
    except Exception as e:  # noqa: BLE001  (any failure to run is a validation verdict, reported)
        problems.append(f"the model does not run in-process: {type(e).__name__}: {str(e)[:300]}")
        return None
    problems += [f"in-process outputs: {p}" for p in contract_problems(reference, trial.spec, len(trial.ids))]
    return reference


def _conclude(report: dict[str, Any], started: float) -> dict[str, Any]:
    """Fold errors and mismatches into the problems, summarize the latencies; bless when none."""
    problems: list[str] = report["problems"]
    problems += report["errors"]
    if report["mismatches"]:
        problems.append(f"{len(report['mismatches'])} answers differ from the in-process model")
    report["mismatch_count"] = len(report["mismatches"])
    report["mismatches"] = report["mismatches"][:MAX_REPORTED_MISMATCHES]
    report["latency_ms"] = {k: _percentiles(v) for k, v in report["latency_ms"].items()}
    report["requests"]["total"] = sum(report["requests"].values())
    report["blessed"] = not problems
    report["seconds"] = round(time.monotonic() - started, 2)
    return report

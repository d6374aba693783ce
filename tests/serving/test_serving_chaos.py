"""Chaos test for ``eventpipe serve``: pushes, corrupt pushes and a SIGKILL under steady load.

A model server owes every request one of two things: the answer of a complete version, or a
refusal a client can act on (an HTTP error status with an error body, a gRPC status code, a
refused connection while it is down). This test holds ``eventpipe serve`` to that over REST and
gRPC at once while the pusher's real atomic push publishes new versions, two corrupt versions
arrive, and the process is SIGKILLed and started again on the same base path and ports. Each
tiny model answers its own version number from a variable, so an answer from a half-loaded,
corrupt or unloaded version cannot pass for a right one.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import random
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.pusher import push
from fixtures import serving_support as ss

pytestmark = pytest.mark.e2e

NAME = "chaos"
GOOD, TRUNCATED_GRAPH, BAD_CHECKSUM, LAST_GOOD = (1, 2), 3, 4, 5  # versions in push order
HALF_PUSHED = 6  # staged by a pusher that dies before its rename: never a version
CLIENTS_PER_API = 2
RATE_PER_CLIENT = 25.0  # requests/s per client thread: ~100/s in all, light on 2 shared cores
REQUEST_TIMEOUT_S = 10.0
RESTART_BOUND_S = 30.0  # SIGKILL to the first right answer on both APIs; generous for a loaded CI host
# RSS growth allowed between two samples of one server process: across the first server's
# version changes (two loads and two refused loads cost a few MiB) and over the restarted
# server's steady load alone. The summary prints the leak per request each bound would catch.
RSS_CHURN_TOLERANCE_MIB = 12
RSS_STEADY_TOLERANCE_MIB = 4
STEADY_S = 5.0
# The restart time measured is the server's, not a client's reconnect backoff (gRPC's default
# backoff grows far beyond the bound): these clients retry a lost connection at least every 0.5 s.
GRPC_CLIENT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# The only ways a request may fail, and only while the server is down or not yet loaded: its
# connection cut by the kill, refused while nothing listens, or 503 / UNAVAILABLE until a
# version has loaded.
ALLOWED_FAILURES = {"rest": {"reset", "refused", "HTTP 503"}, "grpc": {"UNAVAILABLE"}}


def _version_model(token: int, path: str) -> str:
    """A SavedModel whose ``serving_default`` maps ``x`` [-1, 1] float32 to ``version`` (``token``,
    read from a variable, one per row, int64) and ``echo`` (2x, the row's own input)."""

    class Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = tf.Variable(token, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"version": tf.fill(tf.shape(x)[:1], self.token), "echo": x[:, 0] * 2.0}

    model = Model()
    tf.saved_model.save(model, path, signatures={"serving_default": model.serve})
    return path


def _truncated_graph(good: str, path: str) -> str:
    """A copy of ``good`` whose saved_model.pb lost its second half (a copy cut short)."""
    shutil.copytree(good, path)
    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "rb") as f:
        data = f.read()
    with open(pb, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _bad_checksum(good: str, token: int, path: str) -> str:
    """A copy of ``good`` (answering ``token``) whose variable now holds 77: same size, bytes that
    no longer match the checkpoint's checksum. Served, it would answer 77."""
    shutil.copytree(good, path)
    data_file = os.path.join(path, "variables", "variables.data-00000-of-00001")
    with open(data_file, "rb") as f:
        data = f.read()
    old, new = struct.pack("<q", token), struct.pack("<q", 77)
    assert data.count(old) == 1, "the token's bytes must be unique in the checkpoint"
    with open(data_file, "wb") as f:
        f.write(data.replace(old, new))
    return path


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class Outcome:
    """One request: ``result`` is "ok" or how it failed; ``wrong`` says why an answer was wrong."""

    client: str
    api: str
    started: float
    ended: float
    result: str
    version: int | None = None  # the version an answer came from (its output)
    spec_version: int | None = None  # gRPC: the version the response's model_spec names
    detail: str = ""
    wrong: str = ""


def _check_answer(version: object, echo: object, x: float) -> str:
    """Why an answer's outputs are not a model's answer to ``x`` ("" when they are)."""
    if not isinstance(version, int) or isinstance(version, bool):
        return f"version output {version!r} is not an integer"
    if (
        not isinstance(echo, (int, float))
        or isinstance(echo, bool)
        or abs(echo - 2 * x) > 1e-3 * max(1.0, abs(x))
    ):
        return f"echo {echo!r} for x={x}"
    return ""


class RestClient:
    """One keep-alive connection at a time; a connection that failed is replaced on the next call."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def __call__(self, x: float) -> dict:
        """The ``Outcome`` fields of one predict request for ``x``."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            body = json.dumps({"instances": [[x]]})
            self.conn.request(
                "POST", f"/v1/models/{NAME}:predict", body, {"Content-Type": "application/json"}
            )
            response = self.conn.getresponse()
            return self._fields(response.status, response.read(), x)
        except ConnectionRefusedError:
            fields = {"result": "refused"}
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
            fields = {"result": "reset", "detail": type(e).__name__}
        except (OSError, http.client.HTTPException) as e:
            fields = {"result": type(e).__name__, "detail": str(e)}
        self.close()
        return fields

    @staticmethod
    def _fields(status: int, raw: bytes, x: float) -> dict:
        try:
            payload = json.loads(raw)
        except ValueError:
            return {"result": f"HTTP {status}", "wrong": f"body is not JSON: {raw[:200]!r}"}
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else None
            unclear = "" if isinstance(error, str) and error else f"no error message: {payload!r}"
            return {"result": f"HTTP {status}", "detail": str(error)[:200], "wrong": unclear}
        try:
            (row,) = payload["predictions"]
            version, echo = row["version"], row["echo"]
        except (KeyError, TypeError, ValueError):
            return {"result": "ok", "wrong": f"unexpected answer {payload!r}"}
        wrong = _check_answer(version, echo, x)
        return {"result": "ok", "version": None if wrong else version, "wrong": wrong}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class GrpcClient:
    """One channel, which reconnects by itself."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_CLIENT_OPTIONS)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def __call__(self, x: float) -> dict:
        """The ``Outcome`` fields of one Predict for ``x``."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = NAME
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
        try:
            response = self.stub.Predict(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.RpcError as e:
            details = e.details() or ""
            return {
                "result": e.code().name,
                "detail": details[:200],
                "wrong": "" if details else "no message",
            }
        try:
            (version,) = tf.make_ndarray(response.outputs["version"]).tolist()
            (echo,) = tf.make_ndarray(response.outputs["echo"]).tolist()
        except (KeyError, ValueError) as e:
            return {"result": "ok", "wrong": f"unexpected answer: {e}"}
        spec_version = response.model_spec.version.value
        wrong = _check_answer(version, echo, x)
        if not wrong and spec_version != version:
            wrong = f"model_spec names version {spec_version}, the output is version {version}"
        return {
            "result": "ok",
            "version": None if wrong else version,
            "spec_version": spec_version,
            "wrong": wrong,
        }

    def close(self) -> None:
        self.channel.close()


class Load:
    """Paced client threads on both APIs, each recording every request's ``Outcome``."""

    def __init__(self, rest_port: int, grpc_port: int) -> None:
        self.rest_port, self.grpc_port = rest_port, grpc_port
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(api, i), name=f"{api}-{i}", daemon=True)
            for api in ("rest", "grpc")
            for i in range(CLIENTS_PER_API)
        ]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2 * REQUEST_TIMEOUT_S)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _run(self, api: str, index: int) -> None:
        client = f"{api}-{index}"
        rng = random.Random(client)
        call = RestClient(self.rest_port) if api == "rest" else GrpcClient(self.grpc_port)
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                x = round(rng.uniform(-100, 100), 3)
                started = time.monotonic()
                fields = call(x)
                outcome = Outcome(client, api, started, time.monotonic(), **fields)
                with self._lock:
                    self.outcomes.append(outcome)
                next_at = max(next_at + 1 / RATE_PER_CLIENT, time.monotonic())
                self._stop.wait(next_at - time.monotonic())
        finally:
            call.close()


def _between(outcomes: list[Outcome], start: float, end: float) -> int:
    return max(1, sum(start <= o.started and o.ended <= end for o in outcomes))


def _grpc_status(port: int, version: int) -> get_model_status_pb2.ModelVersionStatus:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = NAME
        request.model_spec.version.value = version
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    (status,) = response.model_version_status
    return status


def _refused(server: ss.ServerProcess, version: int, path: str, reason: str) -> dict:
    """Wait until ``version`` failed to load; check both status APIs report it readably."""
    statuses = server.wait_status(
        NAME, lambda s: any(x["version"] == str(version) and x["state"] == "END" for x in s)
    )
    by_version = {int(x["version"]): x for x in statuses}
    refused = by_version[version]["status"]
    assert refused["error_code"] not in ("", "OK"), by_version
    message = refused["error_message"]
    assert path in message and reason in message and "\n" not in message, message
    serving = [v for v, x in by_version.items() if x["state"] == "AVAILABLE"]
    assert serving == [max(GOOD)], f"the previous good version must keep serving: {by_version}"
    status = _grpc_status(server.grpc_port, version)
    assert status.state == get_model_status_pb2.ModelVersionStatus.END
    assert status.status.error_code == error_codes_pb2.Code.Value(refused["error_code"])
    assert status.status.error_message == message
    return refused


@dataclass
class _Run:
    """What the phases of one chaos run leave for the cleanup and the checks."""

    base: str
    sources: dict[int, str]
    pushed_at: dict[int, float] = field(default_factory=dict)  # good version -> when its push began
    marks: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    refusals: list[dict] = field(default_factory=list)
    first_ok: dict[str, float] = field(default_factory=dict)  # api -> first right answer after the kill
    statuses: list[dict] = field(default_factory=list)  # the restarted server's, at the end
    restarted: ss.ServerProcess | None = None
    staged: push.Staged | None = None

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base, NAME)

    def publish(self, version: int) -> None:
        """Push ``version`` as the Pusher does; a good version cannot serve before its push began."""
        started = time.monotonic()
        summary = push.push_saved_model(self.sources[version], self.base, NAME)
        assert summary["version"] == version, summary  # each model answers the version it is pushed as
        if version not in (TRUNCATED_GRAPH, BAD_CHECKSUM):
            self.pushed_at[version] = started


def _sources(tmp_path) -> dict[int, str]:
    """The model to push as each version, corrupt ones included."""
    sources = {v: _version_model(v, str(tmp_path / f"src-{v}")) for v in (*GOOD, LAST_GOOD, HALF_PUSHED)}
    sources[TRUNCATED_GRAPH] = _truncated_graph(sources[GOOD[0]], str(tmp_path / "src-truncated"))
    sources[BAD_CHECKSUM] = _bad_checksum(
        _version_model(BAD_CHECKSUM, str(tmp_path / "src-4-good")), BAD_CHECKSUM, str(tmp_path / "src-4")
    )
    return sources


def _start_load(server: ss.ServerProcess, load: Load, run: _Run) -> None:
    server.wait_status(NAME, ss.available([GOOD[0]]))
    load.start()
    time.sleep(2.0)  # warm-up: connections open, the server's allocator at its working size
    run.rss["start"] = _rss_mib(server.proc.pid)
    run.marks["rss_start"] = time.monotonic()


def _push_next_good(server: ss.ServerProcess, run: _Run) -> None:
    run.publish(GOOD[1])
    server.wait_status(NAME, ss.available([GOOD[1]]))
    run.marks["swapped"] = time.monotonic()
    time.sleep(1.0)


def _push_corrupt(server: ss.ServerProcess, run: _Run) -> None:
    """Both corrupt versions are refused, readably, while the previous good one serves on."""
    run.publish(TRUNCATED_GRAPH)
    run.refusals.append(_refused(server, TRUNCATED_GRAPH, os.path.join(run.model_dir, "3"), "SavedModel"))
    run.publish(BAD_CHECKSUM)
    run.refusals.append(
        _refused(server, BAD_CHECKSUM, os.path.join(run.model_dir, "4"), "Checksum does not match")
    )
    time.sleep(1.0)


def _push_last_and_half(server: ss.ServerProcess, run: _Run) -> None:
    """The last good version, then a push that dies before its rename (never a version)."""
    run.marks["last_push"] = time.monotonic()
    run.publish(LAST_GOOD)
    server.wait_status(NAME, ss.available([LAST_GOOD]))
    run.marks["swapped_last"] = time.monotonic()
    time.sleep(1.5)
    # A pusher that dies between staging and its rename leaves a hidden directory and a claim.
    run.staged = push.stage_saved_model(run.sources[HALF_PUSHED], run.base, NAME)
    assert run.staged.version == HALF_PUSHED and os.path.isdir(run.staged.tmp)
    run.rss["end"] = _rss_mib(server.proc.pid)


def _kill_and_restart(server: ss.ServerProcess, load: Load, run: _Run) -> None:
    """SIGKILL, then a new server on the same base path and ports, until both APIs answer right."""
    run.marks["kill"] = time.monotonic()
    server.proc.kill()
    assert server.proc.wait(timeout=30) == -9
    server.stop()
    run.restarted = ss.ServerProcess(
        run.model_dir, NAME, "--port", str(load.grpc_port), "--rest_api_port", str(load.rest_port)
    )
    run.marks["listening"] = time.monotonic()
    deadline = run.marks["kill"] + 2 * RESTART_BOUND_S
    while len(run.first_ok) < 2 and time.monotonic() < deadline:
        for o in load.snapshot():
            if o.result == "ok" and o.started > run.marks["kill"] and o.api not in run.first_ok:
                run.first_ok[o.api] = o.ended
        time.sleep(0.05)
    assert len(run.first_ok) == 2, (
        f"no right answer after the restart on {run.first_ok}:\n{run.restarted.log()}"
    )


def _steady_after_restart(run: _Run) -> None:
    """The restarted server's RSS over steady load alone, and its version statuses."""
    time.sleep(1.0)
    run.rss["restart_start"] = _rss_mib(run.restarted.proc.pid)
    run.marks["rss_restart_start"] = time.monotonic()
    time.sleep(STEADY_S)
    run.rss["restart_end"] = _rss_mib(run.restarted.proc.pid)
    run.marks["rss_restart_end"] = time.monotonic()
    run.statuses = ss.get_json(f"{run.restarted.url}/v1/models/{NAME}")[1]["model_version_status"]


def _shut_down(load: Load, server: ss.ServerProcess, run: _Run) -> None:
    load.stop()
    server.stop()
    if run.restarted is not None:
        run.restarted.stop()
    if run.staged is not None:
        run.staged.discard()


def test_pushes_corrupt_versions_and_sigkill_under_load(tmp_path):
    test_started = time.monotonic()
    run = _Run(str(tmp_path / "serving"), _sources(tmp_path))
    run.publish(GOOD[0])
    server = ss.ServerProcess(run.model_dir, NAME)
    load = Load(server.rest_port, server.grpc_port)
    try:
        _start_load(server, load, run)
        _push_next_good(server, run)
        _push_corrupt(server, run)
        _push_last_and_half(server, run)
        _kill_and_restart(server, load, run)
        _steady_after_restart(run)
    finally:
        _shut_down(load, server, run)

    outcomes = load.snapshot()
    counts = collections.Counter(f"{o.api} {o.result}" for o in outcomes)
    restart_s = max(run.first_ok.values()) - run.marks["kill"]
    sampled = _rss_samples(outcomes, run)
    _print_summary(outcomes, counts, restart_s, sampled, run, test_started)
    _check_answers(outcomes, run)
    _check_failures(outcomes, run)
    _check_restart(run, restart_s, counts)
    _check_memory(sampled)


def _rss_samples(outcomes: list[Outcome], run: _Run) -> dict[str, tuple[float, float, int, int]]:
    """Per server: RSS at the start and end of its sampled span, the requests in it, the bound."""
    return {
        "first server": (
            run.rss["start"],
            run.rss["end"],
            _between(outcomes, run.marks["rss_start"], run.marks["kill"]),
            RSS_CHURN_TOLERANCE_MIB,
        ),
        "restarted": (
            run.rss["restart_start"],
            run.rss["restart_end"],
            _between(outcomes, run.marks["rss_restart_start"], run.marks["rss_restart_end"]),
            RSS_STEADY_TOLERANCE_MIB,
        ),
    }


def _print_summary(
    outcomes: list[Outcome],
    counts: collections.Counter,
    restart_s: float,
    sampled: dict[str, tuple[float, float, int, int]],
    run: _Run,
    test_started: float,
) -> None:
    marks, first_ok = run.marks, run.first_ok
    print(
        f"\nserve chaos: {len(outcomes)} requests in {time.monotonic() - test_started:.1f} s: "
        + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        + f"; SIGKILL to first right answer {restart_s:.2f} s (REST "
        f"{first_ok['rest'] - marks['kill']:.2f}, gRPC {first_ok['grpc'] - marks['kill']:.2f}; "
        "listening after "
        f"{marks['listening'] - marks['kill']:.2f}); RSS: "
        + ", ".join(
            f"{what} {a:.1f} -> {b:.1f} MiB over {n} requests (catches {bound * 1024 / n:.0f} KiB/request)"
            for what, (a, b, n, bound) in sampled.items()
        )
    )
    for refused in run.refusals:
        print(f"  refused: {refused['error_code']}: {refused['error_message']}")


def _check_answers(outcomes: list[Outcome], run: _Run) -> None:
    """Every answer is right: from a complete good version, and the one the response names."""
    marks = run.marks
    wrong = [o for o in outcomes if o.wrong]
    assert not wrong, f"{len(wrong)} wrong answers or unclear errors, e.g. {wrong[:3]}"
    ok = [o for o in outcomes if o.result == "ok"]
    served = collections.Counter(o.version for o in ok)
    assert set(served) == {*GOOD, LAST_GOOD}, f"versions answered: {served}"
    early = [o for o in ok if o.ended < run.pushed_at[o.version]]
    assert not early, f"answers from versions whose push had not begun: {early[:3]}"
    # Each client's answers move forward only: none from an unloaded version after a newer one.
    for client in {o.client for o in outcomes}:
        versions = [o.version for o in ok if o.client == client]
        assert versions == sorted(versions), f"{client} went back to an older version: {versions}"
    # The corrupt versions are refused while the previous good one serves on, without a failure.
    between = [o for o in outcomes if marks["swapped"] < o.started and o.ended < marks["last_push"]]
    assert between and {o.version for o in between} == {GOOD[1]}, collections.Counter(
        (o.result, o.version) for o in between
    )
    assert {o.version for o in ok if o.started > marks["swapped_last"]} == {LAST_GOOD}


def _check_failures(outcomes: list[Outcome], run: _Run) -> None:
    """Requests fail only while the server is down or loading, each with a clear status: none
    before the kill, none on a client after its first right answer from the restarted server."""
    kill = run.marks["kill"]
    ok = [o for o in outcomes if o.result == "ok"]
    failed = [o for o in outcomes if o.result != "ok"]
    assert not [o for o in failed if o.ended < kill], f"failures before the kill: {failed[:3]}"
    for client in {o.client for o in outcomes}:
        recovered = min((o.started for o in ok if o.client == client and o.started > kill), default=0)
        assert recovered, f"{client} got no answer from the restarted server"
        late = [o for o in failed if o.client == client and o.started > recovered]
        assert not late, f"{client} failed after its first answer from the restarted server: {late[:3]}"
    unclear = [o for o in failed if o.result not in ALLOWED_FAILURES[o.api]]
    assert not unclear, f"failures without a clear status: {unclear[:3]}"


def _check_restart(run: _Run, restart_s: float, counts: collections.Counter) -> None:
    """The restarted server serves the last complete version; the half-pushed one does not exist."""
    statuses = run.statuses
    assert [(s["version"], s["state"]) for s in statuses] == [(str(LAST_GOOD), "AVAILABLE")], statuses
    assert restart_s <= RESTART_BOUND_S, f"{restart_s:.1f} s from SIGKILL to the first right answer"
    assert min(counts[f"{api} ok"] for api in ("rest", "grpc")) >= 200, counts


def _check_memory(sampled: dict[str, tuple[float, float, int, int]]) -> None:
    """Versions loaded, refused and unloaded, thousands of requests: RSS stays flat."""
    for what, (start, end, requests, bound) in sampled.items():
        assert end - start <= bound, f"{what}: RSS {start:.1f} -> {end:.1f} MiB over {requests} requests"

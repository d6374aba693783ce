"""Serving overhead and throughput: REST and gRPC vs the in-process model call.

The model is the pipeline's student (``trainer.models.student.build_student``, untrained
weights; latency does not depend on them) at the simulator's default geometry, exported with
``trainer.models.export`` (SavedModel) and ``trainer.lite.tflite`` (int8 TFLite). Each backend is served
by ``eventpipe serve`` in a subprocess on loopback.

Measured per backend:
- latency: one event per request, sequential, keep-alive: in-process ``servable.run`` (the
  same code the server calls), REST (``http.client``) and gRPC (``PredictionService/Predict``
  with a serialized ``PredictRequest``, what a stub sends), each client in its own clean
  process, p50/p99 in alternating rounds so background load hits all alike; added ms and
  ratio at p50 vs in-process;
- the floor: the same clients against an echo server built on the server's own libraries
  (stdlib ``http.server``, sync grpcio, same options) that answers the real server's response
  bytes at no cost: what those libraries, the transport and the clients cost before any
  serving work;
- throughput (requests/s) at 1/4/16 concurrent clients over REST and gRPC, with dynamic
  batching off (``--enable_batching=false``) and on (``--enable_batching --max-batch-size 16
  --batch-timeout-ms 2``),
  and the machine's idle CPU while it ran; clients are threads in up to 4 worker processes
  that import neither TensorFlow nor eventpipe. TFLite versions never batch (batch-1 models;
  an interpreter pool instead), so their two rows differ only by noise;
- batching's ceiling: the model call's process CPU per row alone over that at the requests per
  call batching reached (and at full batches). Where the unbatched server already keeps the
  CPU busy (see its idle column), batching cannot raise throughput by more than that ratio at
  those batch sizes, even with a front end that costs nothing.

Both servers run at once and every figure alternates between them (latency in 12 rounds,
throughput in ``--rounds`` rounds, off first in odd rounds and on first in even ones), so a
change in the machine's load hits both sides alike: measured one after the other, drift alone
made batching look 20-35% slower at one client in two runs on 2026-11-30 while side-by-side
rounds showed parity. Batching's on/off ratios are medians of the per-round ratios, printed
with the rounds.

Client and server share the machine's cores: on a small, busy machine the numbers include
that contention (the machine's load average is printed with the results).

    .venv/bin/python benchmarks/bench_serving.py                  # ~8 minutes
    .venv/bin/python benchmarks/bench_serving.py --duration 1 --requests 100 --backends tflite
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from contract import tfenv  # noqa: E402,F401

# The measured stack (TensorFlow, TFX, the pipeline's modules) is imported inside the functions
# that run in a measurement's own process, so the orchestrating process stays small and its
# start-up is not counted in any figure.

NAME = "bench"


def build_models(workdir: str, frames: int, size: int, channels: int) -> dict[str, str]:
    """The student exported as SavedModel and int8 TFLite, each in a model base path."""
    import numpy as np

    from contract.config import StudentConfig
    from contract.layout import EventSpec
    from trainer.lite.tflite import convert_variant
    from trainer.models.export import export_saved_model
    from trainer.models.student import build_student

    spec = EventSpec(("empty", "person", "vehicle", "animal"), frames, size, size, channels)
    model = build_student(spec, StudentConfig())
    bases = {}
    saved_base = os.path.join(workdir, "savedmodel")
    export_saved_model(model, spec, os.path.join(saved_base, NAME, "1"))
    bases["savedmodel"] = saved_base
    rng = np.random.default_rng(0)
    representative = [rng.random((1, *spec.input_shape), dtype=np.float32) for _ in range(16)]
    lite = convert_variant(model, spec, "int8", representative=representative, try_sparse=False)
    lite_dir = os.path.join(workdir, "tflite", NAME, "1")
    os.makedirs(lite_dir)
    with open(os.path.join(lite_dir, "model.tflite"), "wb") as f:
        f.write(lite.content)
    bases["tflite"] = os.path.join(workdir, "tflite")
    return {"spec": spec, **bases}


def event_frames(spec) -> list[bytes]:
    import numpy as np

    from ondevice.frames import encode_png

    rng = np.random.default_rng(1)
    return [encode_png(rng.integers(0, 256, spec.frame_shape, dtype=np.uint8)) for _ in range(spec.frames)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.sort(np.asarray(seconds) * 1000.0)
    cut = len(ms) // 20  # the trimmed mean drops the fastest and slowest 5%: spikes, not waits
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "trimmed_mean_ms": float(ms[cut : len(ms) - cut].mean()),
    }


class InProcessBaseline:
    """The model call alone, in a separate fresh process (like the server's), driven over a pipe.

    Measurements alternate between this baseline and the server in short rounds, so load from
    other processes on a shared machine hits both sides alike.
    """

    def __init__(self, base: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--in-process", base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("in-process baseline failed to start")

    def measure(self, requests: int) -> list[float]:
        self.proc.stdin.write(f"{requests}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cpu_ms_per_row(self, sizes: list[int], calls: int = 100) -> dict[int, float]:
        """The model call's CPU cost per row at each batch size (``calls`` calls each, in rounds)."""
        self.proc.stdin.write(f"cpu {calls} {' '.join(map(str, sizes))}\n")
        self.proc.stdin.flush()
        return {int(k): v for k, v in json.loads(self.proc.stdout.readline()).items()}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _baseline_worker(base: str) -> None:
    from contract.config import ServingConfig
    from serving.servables import load_servable
    from serving.server import configure_tensorflow

    configure_tensorflow(ServingConfig())  # the server's TensorFlow threads
    servable = load_servable(os.path.join(base, NAME, "1"))
    signature = servable.signature("serving_default")
    frames = event_frames(servable.event_spec())
    batch = _event_batch(frames, 1)
    outputs = sorted(signature.outputs)
    for _ in range(20):
        servable.run(signature, {"frames": batch}, outputs)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.startswith("cpu "):  # "cpu CALLS SIZE..." -> {size: process CPU ms per row}
            calls, *sizes = (int(x) for x in line.split()[1:])
            print(json.dumps(_cpu_ms_per_row(servable, signature, frames, outputs, sizes, calls)), flush=True)
            continue
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            servable.run(signature, {"frames": batch}, outputs)
            times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)


def _event_batch(frames: list[bytes], rows: int):
    """``rows`` copies of one event's encoded frames, as the server's ``[rows, K]`` object array."""
    import numpy as np

    batch = np.empty((rows, len(frames)), dtype=object)
    for i in range(rows):
        batch[i, :] = frames
    return batch


CPU_ROUNDS = 10


def _cpu_ms_per_row(
    servable, signature, frames: list[bytes], outputs: list[str], sizes: list[int], calls: int
) -> dict[int, float]:
    """Process CPU time (every TensorFlow thread included) per row of a model call of each size:
    the median over CPU_ROUNDS rounds that alternate the sizes, ``calls`` calls per size in all."""
    import statistics

    batches = {rows: _event_batch(frames, rows) for rows in sizes}
    for batch in batches.values():
        for _ in range(5):
            servable.run(signature, {"frames": batch}, outputs)
    per_round = max(1, calls // CPU_ROUNDS)
    samples: dict[int, list[float]] = {rows: [] for rows in sizes}
    for _ in range(CPU_ROUNDS):
        for rows, batch in batches.items():
            start = time.process_time()
            for _ in range(per_round):
                servable.run(signature, {"frames": batch}, outputs)
            samples[rows].append((time.process_time() - start) * 1000.0 / (per_round * rows))
    return {rows: statistics.median(values) for rows, values in samples.items()}


def grpc_request_bytes(frames: list[bytes]) -> bytes:
    """A serialized PredictRequest for one event (clients send it without importing TensorFlow)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.inputs["frames"].CopyFrom(tf.make_tensor_proto([frames]))
    return request.SerializeToString()


ROUNDS = 12


CLIENT_PROCESSES = 4


def throughput(
    api: str, target: str, payload: bytes, clients: int, duration: float, scratch: str
) -> dict[str, float]:
    """Requests/s with ``clients`` concurrent clients sending back-to-back for ``duration`` seconds.

    Clients run as threads spread over up to CLIENT_PROCESSES worker processes that import
    neither TensorFlow nor this package (gRPC requests go out pre-serialized), so the client
    side's GIL does not cap what the server can show.
    """
    path = os.path.join(scratch, f"payload-{api}")
    with open(path, "wb") as f:
        f.write(payload)
    procs = min(clients, CLIENT_PROCESSES)
    threads = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start_at = time.time() + 2.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_WORKER, api, target, str(n), str(start_at), str(duration), path],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in threads
    ]
    time.sleep(max(0.0, start_at - time.time()))
    idle_before = _cpu_idle()
    time.sleep(duration)
    idle_after = _cpu_idle()
    reports = [json.loads(w.communicate(timeout=duration + 120)[0]) for w in workers]
    errors = sum(r["errors"] for r in reports)
    if errors:
        first = next(r["first_error"] for r in reports if r["errors"])
        raise RuntimeError(f"{errors} failed requests, e.g. {first}")
    total = sum(r["count"] for r in reports)
    idle = None
    if idle_before and idle_after and idle_after[1] > idle_before[1]:
        idle = (idle_after[0] - idle_before[0]) / (idle_after[1] - idle_before[1])
    return {"requests_per_s": total / duration, "requests": total, "cpu_idle": idle}


def _cpu_idle() -> tuple[int, int] | None:
    """The machine's (idle, total) CPU ticks so far (Linux /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return ticks[3] + ticks[4], sum(ticks)


# A stand-alone client process: stdlib http.client or grpcio with raw bytes, N threads.
CLIENT_WORKER = r"""
import json, sys, threading, time
api, target, nthreads, start_at, duration, path = sys.argv[1:7]
nthreads, start_at, duration = int(nthreads), float(start_at), float(duration)
payload = open(path, "rb").read()
counts, errors = [0] * nthreads, []

def make_call():
    if api == "rest":
        import http.client
        host, port = target.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        path_ = "/v1/models/bench:predict"
        def call():
            conn.request("POST", path_, payload, {"Content-Type": "application/json"})
            r = conn.getresponse(); body = r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
        return call
    import grpc
    channel = grpc.insecure_channel(target)
    method = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    return lambda: method(payload, timeout=60)

def loop(i):
    call = make_call()
    call()
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    while time.time() < end:
        try:
            call(); counts[i] += 1
        except Exception as e:
            errors.append(str(e)[:200]); return

if nthreads == 0:  # latency mode: each stdin line N -> N sequential calls, their durations
    call = make_call()
    for _ in range(20):
        call()
    print("ready", flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)
    sys.exit(0)
threads = [threading.Thread(target=loop, args=(i,)) for i in range(nthreads)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"count": sum(counts), "errors": len(errors), "first_error": errors[0] if errors else ""}))
"""


# The protocol floor: stdlib HTTP/1.1 and grpcio servers whose handler costs nothing and answers
# the real server's own response bytes (same keep-alive, TCP_NODELAY and thread-per-connection
# HTTP server, same sync grpcio server and options), so their round trip is what the transport,
# the two libraries and the client cost before any serving work.
ECHO_SERVER = r"""
import json, socket, sys, threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import grpc
rest_reply, grpc_reply = (open(p, "rb").read() for p in sys.argv[1:3])

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def log_message(self, *args):
        pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(rest_reply) + rest_reply
        )

http = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
http.daemon_threads = True
threading.Thread(target=http.serve_forever, daemon=True).start()
server = grpc.server(ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
handler = grpc.unary_unary_rpc_method_handler(lambda request, context: grpc_reply)
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": handler}),)
)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(json.dumps({"rest": http.server_address[1], "grpc": port}), flush=True)
sys.stdin.read()
"""


class EchoServer:
    """ECHO_SERVER in its own process, answering ``rest_reply`` / ``grpc_reply`` to every predict."""

    def __init__(self, rest_reply: bytes, grpc_reply: bytes, scratch: str) -> None:
        paths = [os.path.join(scratch, f"echo-{api}") for api in ("rest", "grpc")]
        for path, reply in zip(paths, (rest_reply, grpc_reply), strict=True):
            with open(path, "wb") as f:
                f.write(reply)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, *paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the echo server failed to start (exit status {self.proc.wait(timeout=30)})")
        ports = json.loads(line)
        self.rest_target, self.grpc_target = f"127.0.0.1:{ports['rest']}", f"127.0.0.1:{ports['grpc']}"

    close = InProcessBaseline.close


def real_replies(rest_target: str, body: bytes, grpc_target: str, grpc_payload: bytes) -> tuple[bytes, bytes]:
    """The server's own REST and gRPC predict responses, for the echo server to answer."""
    import grpc

    host, port = rest_target.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", f"/v1/models/{NAME}:predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    rest_reply = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(
            f"the server answered the echo's model request with HTTP {response.status}: {rest_reply[:200]!r}"
        )
    with grpc.insecure_channel(grpc_target) as channel:
        grpc_reply = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(
            grpc_payload, timeout=60
        )
    return rest_reply, grpc_reply


class LatencyClient:
    """One sequential keep-alive client in its own clean process, driven over a pipe."""

    def __init__(self, api: str, target: str, payload: bytes, scratch: str) -> None:
        path = os.path.join(scratch, f"latency-{api}")
        with open(path, "wb") as f:
            f.write(payload)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_WORKER, api, target, "0", "0", "0", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{api} latency client failed to start")

    measure = InProcessBaseline.measure
    close = InProcessBaseline.close


def batch_stats(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/monitoring/prometheus/metrics")
    text = conn.getresponse().read().decode()
    values = {"eventpipe_serving_batch_requests_sum": 0.0, "eventpipe_serving_batch_requests_count": 0.0}
    for line in text.splitlines():
        for name in values:
            if line.startswith(name + "{"):
                values[name] += float(line.rsplit(" ", 1)[1])
    return values


MAX_BATCH = 16
MODES = {"no_batching": ["--enable_batching=false"],
         "batching": ["--enable_batching", "--max-batch-size", str(MAX_BATCH),
                      "--batch-timeout-ms", "2"]}  # fmt: skip


def bench_backend(name: str, base: str, frames: list[bytes], args: argparse.Namespace) -> dict:
    """Both servers (batching off and on) run at once and every figure alternates between them
    in rounds, so drift in the machine's load hits both alike; ratios are medians of per-round
    ratios."""
    import statistics

    from fixtures.serving_support import ServerProcess, available, b64_instance

    body = json.dumps({"instances": [b64_instance(frames)]}).encode()
    grpc_payload = grpc_request_bytes(frames)
    scratch = os.path.join(os.path.dirname(base), f"clients-{name}")  # inside the bench workdir
    os.makedirs(scratch, exist_ok=True)
    servers: dict[str, ServerProcess] = {}
    helpers: list[EchoServer | InProcessBaseline] = []  # closed however the bench ends
    try:
        for mode, flags in MODES.items():
            servers[mode] = ServerProcess(os.path.join(base, NAME), NAME, *flags)
        for server in servers.values():
            server.wait_status(NAME, available([1]), timeout=120)

        def target(mode: str, api: str) -> tuple[str, bytes]:
            server = servers[mode]
            if api == "rest":
                return f"127.0.0.1:{server.rest_port}", body
            return server.grpc_target, grpc_payload

        print(
            f"[{name}] latency, in-process, both servers and the echo floor, {ROUNDS} alternating rounds ...",
            flush=True,
        )
        echo = EchoServer(
            *real_replies(*target("no_batching", "rest"), *target("no_batching", "grpc")), scratch
        )
        helpers.append(echo)
        baseline = InProcessBaseline(base)
        helpers.append(baseline)
        clients = {"in_process": baseline}
        for mode in MODES:
            for api in ("rest", "grpc"):
                clients[f"{mode}/{api}"] = LatencyClient(api, *target(mode, api), scratch)
        clients["floor/rest"] = LatencyClient("rest", echo.rest_target, body, scratch)
        clients["floor/grpc"] = LatencyClient("grpc", echo.grpc_target, grpc_payload, scratch)
        samples: dict[str, list[float]] = {key: [] for key in clients}
        per_round = max(1, args.requests // ROUNDS)
        for _ in range(ROUNDS):
            for key, client in clients.items():
                samples[key] += client.measure(per_round)
        for client in clients.values():
            if client is not baseline:
                client.close()
        result: dict = {"backend": name, "in_process": percentiles(samples["in_process"])}
        result["floor"] = {f"{api}_latency": percentiles(samples[f"floor/{api}"]) for api in ("rest", "grpc")}
        for mode in MODES:
            result[mode] = {
                f"{api}_latency": percentiles(samples[f"{mode}/{api}"]) for api in ("rest", "grpc")
            }
            result[mode]["throughput"] = {}
        for api in ("rest", "grpc"):
            for n in args.clients:
                rates: dict[str, list[float]] = {mode: [] for mode in MODES}
                idle: dict[str, list[float]] = {mode: [] for mode in MODES}
                merged_per_call: list[float] = []
                for r in range(args.rounds):
                    print(
                        f"[{name}] {api} throughput, {n} clients, round {r + 1}/{args.rounds} ...", flush=True
                    )
                    for mode in list(MODES)[:: 1 if r % 2 == 0 else -1]:  # off first, then on first
                        before = batch_stats(servers[mode].rest_port)
                        point = throughput(api, *target(mode, api), n, args.duration, scratch)
                        after = batch_stats(servers[mode].rest_port)
                        rates[mode].append(point["requests_per_s"])
                        idle[mode].append(point["cpu_idle"])
                        if mode == "batching":
                            calls = (
                                after["eventpipe_serving_batch_requests_count"]
                                - before["eventpipe_serving_batch_requests_count"]
                            )
                            merged = (
                                after["eventpipe_serving_batch_requests_sum"]
                                - before["eventpipe_serving_batch_requests_sum"]
                            )
                            merged_per_call.append(merged / calls if calls else 1.0)
                for mode in MODES:
                    result[mode]["throughput"][f"{api}_{n}"] = {
                        "requests_per_s": statistics.median(rates[mode]),
                        "rounds": rates[mode],
                        "requests_per_model_call": statistics.mean(merged_per_call)
                        if mode == "batching"
                        else 1.0,
                        "cpu_idle": statistics.median(idle[mode]) if None not in idle[mode] else None,
                    }
                ratios = [on / off for on, off in zip(rates["batching"], rates["no_batching"], strict=True)]
                result[f"{api}_batching_ratio_{n}_clients"] = statistics.median(ratios)
                result[f"{api}_batching_ratio_{n}_clients_rounds"] = ratios
        if name != "tflite":
            # Batching's ceiling: how much less CPU a row costs in a merged call than alone, at
            # the rows per call this server reached and at full batches. Where the unbatched
            # server already keeps the CPU busy, throughput cannot rise by more than that.
            top = max(args.clients)
            merged = {
                api: result["batching"]["throughput"][f"{api}_{top}"]["requests_per_model_call"]
                for api in ("rest", "grpc")
            }
            reached = {api: max(1, int(m + 0.5)) for api, m in merged.items()}
            sizes = sorted({1, MAX_BATCH, *reached.values()})
            print(f"[{name}] model CPU per row at {sizes} rows per call ...", flush=True)
            cpu = baseline.cpu_ms_per_row(sizes)
            result["model_cpu_ms_per_row"] = cpu
            result["batching_ceiling_full_batches"] = cpu[1] / cpu[MAX_BATCH]
            for api, rows in reached.items():
                result[f"{api}_batching_ceiling_{top}_clients"] = cpu[1] / cpu[rows]
    finally:
        for helper in helpers:
            helper.close()
        for server in servers.values():
            server.stop()
    base_p50 = result["in_process"]["p50_ms"]
    for api in ("rest", "grpc"):
        p50 = result["no_batching"][f"{api}_latency"]["p50_ms"]
        result[f"{api}_added_ms_p50"] = p50 - base_p50
        result[f"{api}_ratio_p50"] = p50 / base_p50
        result[f"{api}_floor_ms_p50"] = result["floor"][f"{api}_latency"]["p50_ms"]
        # One sequential client's request rate is one over its mean latency: batching on over off.
        result[f"{api}_lone_ratio"] = (
            result["no_batching"][f"{api}_latency"]["trimmed_mean_ms"]
            / result["batching"][f"{api}_latency"]["trimmed_mean_ms"]
        )
    return result


def print_table(results: list[dict], clients: list[int]) -> None:
    print("\nlatency, one event per request (ms)        p50      p99   added@p50  ratio@p50")
    for r in results:
        b = r["in_process"]
        print(f"  {r['backend']:<10} in-process               {b['p50_ms']:7.2f}  {b['p99_ms']:7.2f}")
        for api in ("rest", "grpc"):
            lat = r["no_batching"][f"{api}_latency"]
            print(
                f"  {r['backend']:<10} {api.upper():<5} (no batching)       "
                f"{lat['p50_ms']:7.2f}  {lat['p99_ms']:7.2f}"
                f"   {r[f'{api}_added_ms_p50']:+7.2f}    {r[f'{api}_ratio_p50']:5.2f}x"
            )
            lat = r["batching"][f"{api}_latency"]
            print(
                f"  {r['backend']:<10} {api.upper():<5} (batching on)       "
                f"{lat['p50_ms']:7.2f}  {lat['p99_ms']:7.2f}"
                f"   rate on/off {r[f'{api}_lone_ratio']:.2f}x (trimmed means)"
            )
            lat = r["floor"][f"{api}_latency"]
            print(
                f"  {r['backend']:<10} {api.upper():<5} echo (the floor)    "
                f"{lat['p50_ms']:7.2f}  {lat['p99_ms']:7.2f}"
            )
    print("  (echo: the same client against a server on the server's own HTTP and gRPC libraries whose")
    print("   handler costs nothing: the least the server can add while it is built on them)")
    print("\nthroughput (requests/s; requests per model call with batching; machine CPU idle)")
    header = "".join(f"{c:>18} clients" for c in clients)
    print(f"  {'':<10} {'':<14}{header}")
    for r in results:
        for api in ("rest", "grpc"):
            for mode in ("no_batching", "batching"):
                cells = ""
                for c in clients:
                    p = r[mode]["throughput"][f"{api}_{c}"]
                    cells += (
                        f"{p['requests_per_s']:>14.0f}"
                        + (f" ({p['requests_per_model_call']:4.1f})" if mode == "batching" else "       ")
                        + (f" {p['cpu_idle'] * 100:3.0f}%" if p["cpu_idle"] is not None else "  n/a")
                    )
                print(f"  {r['backend']:<10} {api.upper():<4} {mode:<11}{cells}")
        for api in ("rest", "grpc"):
            ratios = "  ".join(
                f"{c} clients {r[f'{api}_batching_ratio_{c}_clients']:.2f}x "
                f"({', '.join(f'{x:.2f}' for x in r[f'{api}_batching_ratio_{c}_clients_rounds'])})"
                for c in clients
            )
            print(f"  {r['backend']:<10} {api.upper():<4} batching on/off, median (rounds): {ratios}")
        if "model_cpu_ms_per_row" in r:
            costs = ", ".join(f"{n} rows {ms:.2f} ms" for n, ms in sorted(r["model_cpu_ms_per_row"].items()))
            print(
                f"  {r['backend']:<10} model call, CPU per row: {costs} "
                f"(full batches: at most {r['batching_ceiling_full_batches']:.2f}x)"
            )
    print("\ntargets (issue 12)                                   measured      target   bound here   result")
    for r in results:
        for name, value, target, bound, met in target_checks(r, clients):
            print(
                f"  {r['backend']:<10} {name:<40} {value:>9}  {target:>10}  {bound:>11}   "
                f"{'pass' if met else 'FAIL'}"
            )
    print("  (bound here: for added latency, the echo floor of the server's libraries; for batching's gain,")
    print("   the model's CPU per row alone over merged at the rows per call reached, the most batching")
    print("   can give where the unbatched server keeps the CPU busy; full batches: see the CPU line)")


def target_checks(r: dict, clients: list[int]) -> list[tuple[str, str, str, str, bool]]:
    """Issue 12's serving targets for one backend: (what, measured, target, bound here, met).

    Added latency at p50 over the in-process call, batching's throughput gain at the most
    clients, and no loss from batching at 1 client (a lone request must not wait; the
    two 1-client runs differ only by noise then, so 5% counts as no loss). One client's rate
    is one over its mean latency, so that check compares the latency rounds' means (600
    requests a side in 12 interleaved rounds, 5% trimmed at each end against spikes; a wait
    that hits more than 5% of requests still shows): on 2026-11-30 the 1-client throughput
    rounds of two identical servers (A/A) spread 0.72-1.09x, too wide to tell a 5% loss. Batching
    targets apply to batchable backends only (TFLite runs on an interpreter pool). The bound
    is what this machine allows the server as built: its libraries' echo floor, and the model's
    CPU per row at the batch sizes reached.
    """
    checks = []
    for api in ("rest", "grpc"):
        added, floor = r[f"{api}_added_ms_p50"], r[f"{api}_floor_ms_p50"]
        checks.append(
            (
                f"{api.upper()} added latency at p50",
                f"{added:+.2f} ms",
                "<= 1.00 ms",
                f">= {floor:.2f} ms",
                added <= 1.0,
            )
        )
    if r["backend"] == "tflite":
        return checks
    top = max(clients)
    for api in ("rest", "grpc"):
        gain, ceiling = r[f"{api}_batching_ratio_{top}_clients"], r[f"{api}_batching_ceiling_{top}_clients"]
        checks.append(
            (
                f"{api.upper()} batching gain at {top} clients",
                f"{gain:.2f}x",
                ">= 2.00x",
                f"<= {ceiling:.2f}x",
                gain >= 2.0,
            )
        )
    for api in ("rest", "grpc"):
        ratio = r[f"{api}_lone_ratio"]
        checks.append(
            (
                f"{api.upper()} batching at 1 client vs off",
                f"{ratio:.2f}x",
                ">= 0.95x",
                "1.00x",
                ratio >= 0.95,
            )
        )
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="savedmodel,tflite", help="savedmodel,tflite")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients for throughput (1,4,16)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per throughput point (1.0)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per throughput point (6)")
    parser.add_argument(
        "--requests", type=int, default=600, help="sequential requests per latency point (600)"
    )
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    parser.add_argument("--in-process", default="", help=argparse.SUPPRESS)  # internal: baseline worker
    args = parser.parse_args()
    if args.in_process:
        _baseline_worker(args.in_process)
        return 0
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.rounds < 1 or not args.clients or min(args.clients) < 1:
        parser.error("--rounds and every --clients entry must be >= 1")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    load_before = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        print("building the student SavedModel and int8 TFLite ...", flush=True)
        models = build_models(workdir, args.frames, args.size, args.channels)
        frames = event_frames(models["spec"])
        results = [bench_backend(b, models[b], frames, args) for b in backends]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()[0]
    print(
        f"\nmachine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} at start, "
        f"{load_after:.1f} at end"
    )
    print_table(results, args.clients)
    summary = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_start": load_before, "load_avg_1m_end": load_after},
        "geometry": {"frames": args.frames, "size": args.size, "channels": args.channels},
        "results": results,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    print("\n" + json.dumps({"bench_serving": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Beam's portable runner: ingest + validation through a Beam job server and an external SDK
worker pool on loopback, both started from the pinned ``apache_beam``.

This is the Fn API path Flink, Spark and Dataflow take (a job service receives the pipeline and
asks an environment for SDK workers), so ``--runner beam`` with ``--beam-arg=--runner=PortableRunner``
stays a tested way off one machine rather than a sentence in the README.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from contract import layout, source
from contract.config import SimulatorConfig
from simulator.writer import generate

pytestmark = pytest.mark.e2e

EVENTS = 40
CLASSES = ["empty", "person", "vehicle"]
# The two Beam-powered components up to validation: EventExampleGen and StatisticsGen (SchemaGen
# and ExampleValidator run in the orchestrator's process).
BEAM_JOBS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[1:4])} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: str, chars: int = 6000) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-chars:]


def _stop(proc: subprocess.Popen) -> None:
    """The service and every SDK worker it started (they share the session we gave it)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """A job server and an external worker pool on 127.0.0.1; their logs are printed at teardown
    (pytest shows them only when a test failed)."""
    logs = tmp_path_factory.mktemp("beam-services")
    job_port, pool_port = _free_port(), _free_port()
    # The pool starts each SDK worker as `python` from its PATH, not as its own interpreter:
    # this venv's bin comes first, the repository is on PYTHONPATH so workers import eventpipe's
    # DoFns, and Keras 2 is pinned before the workers import TensorFlow.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    pool_env = source.child_env({"PATH": path, "TF_USE_LEGACY_KERAS": "1"})
    # The job server runs the pipeline's graph, not its code: it gets no PYTHONPATH to eventpipe.
    job_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = []
    try:
        for name, module, port_flag, port, env in (
            (
                "job_server",
                "apache_beam.runners.portability.local_job_service_main",
                "--port",
                job_port,
                job_env,
            ),
            (
                "worker_pool",
                "apache_beam.runners.worker.worker_pool_main",
                "--service_port",
                pool_port,
                pool_env,
            ),
        ):
            log = str(logs / f"{name}.log")
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module, f"{port_flag}={port}"],
                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(logs), start_new_session=True,
                )  # fmt: skip
            started.append((name, proc, log))
            _wait_for_port(port, proc, log)
        yield {
            "job_endpoint": f"127.0.0.1:{job_port}",
            "worker_pool": f"127.0.0.1:{pool_port}",
            "job_log": started[0][2],
            "pool_log": started[1][2],
        }
    finally:
        for name, proc, log in started:
            _stop(proc)
            print(f"===== {name} (exit {proc.returncode}) {log}\n{_tail(log, 20000)}")


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Simulated events with frames as PNG files (workers read them), plus one malformed line."""
    root = tmp_path_factory.mktemp("events")
    cfg = SimulatorConfig(
        events=EVENTS, frames=2, size=16, classes=CLASSES, unlabelled_fraction=0.1, seed=5, shards=2
    )
    generate(str(root), cfg, workers=1, progress=False, preview=False)
    (root / "zz-broken.jsonl").write_text("{not json\n")
    return root


def _records(split_dir: str) -> int:
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(split_dir, "*.gz")))
    assert files, f"no TFRecords in {split_dir}"
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_run_through_validate_on_a_job_server_and_external_worker_pool(portable_services, events, tmp_path):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

    work = tmp_path / "work"
    args = [
        "run", "--runner", "beam", "--through", "validate", "--no-cache",
        "--data", str(events), "--workdir", str(work), "--classes", ",".join(CLASSES),
        "--beam-arg=--runner=PortableRunner",
        f"--beam-arg=--job_endpoint={portable_services['job_endpoint']}",
        "--beam-arg=--environment_type=EXTERNAL",
        f"--beam-arg=--environment_config={portable_services['worker_pool']}",
        f"--beam-arg=--setup_file={source.SETUP_FILE}",
    ]  # fmt: skip
    started = time.time()
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, env=source.child_env(),
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    print(f"eventpipe run --through validate via PortableRunner: {time.time() - started:.0f} s")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    # Every Beam-powered component was a job on the job server, run by workers from the pool.
    job_log, pool_log = (
        _tail(portable_services["job_log"], 10**7),
        _tail(portable_services["pool_log"], 10**7),
    )
    assert job_log.count("Running job 'job-") == BEAM_JOBS, job_log[-4000:]
    assert job_log.count("with state DONE.") == BEAM_JOBS, job_log[-4000:]
    assert job_log.count(f"Requesting worker at {portable_services['worker_pool']}") == BEAM_JOBS
    assert pool_log.count("Starting worker with command") == BEAM_JOBS, pool_log[-4000:]

    # What the workers wrote: every event accounted for, the broken line quarantined.
    report = json.loads((work / "report.json").read_text())
    ev = report["events"]
    assert (ev["read"], ev["accepted"], ev["rejected"]) == (EVENTS + 1, EVENTS, 1)
    assert ev["rejected_by_reason"] == {"malformed_line": 1}
    assert report["gate"]["blessed"] is True and report["anomalies"] == []
    quarantined = [
        json.loads(line)
        for f in glob.glob(os.path.join(report["quarantine"], "quarantine-*.jsonl"))
        for line in open(f)
    ]
    assert [(q["reason"], q["raw"]) for q in quarantined] == [("malformed_line", "{not json")]
    assert layout.EventSpec.load(report["examples"]).input_shape == (2, 16, 16, 3)
    counts = {split: _records(os.path.join(report["examples"], f"Split-{split}")) for split in ev["splits"]}
    assert counts == ev["splits"] and sum(counts.values()) == EVENTS and counts["train"] > 0

    # StatisticsGen's job counted the same examples; SchemaGen and ExampleValidator used them.
    outputs = work / "pipeline"
    for split, n in counts.items():
        (path,) = glob.glob(
            str(outputs / "StatisticsGen" / "statistics" / "*" / f"Split-{split}" / "FeatureStats.pb")
        )
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(open(path, "rb").read())
        assert stats.datasets[0].num_examples == n, split
        assert {f.path.step[0] for f in stats.datasets[0].features} >= {layout.FRAMES, layout.LABEL}
    (schema_path,) = glob.glob(str(outputs / "SchemaGen" / "schema" / "*" / "schema.pbtxt"))
    schema = text_format.Parse(open(schema_path).read(), schema_pb2.Schema())
    assert {f.name for f in schema.feature} >= {layout.FRAMES, layout.LABEL}
    diffs = glob.glob(str(outputs / "ExampleValidator" / "anomalies" / "*" / "Split-*" / "SchemaDiff.pb"))
    assert sorted(os.path.basename(os.path.dirname(d)) for d in diffs) == ["Split-eval", "Split-train"]

"""Run teacher training in fresh processes.

Logical devices (and a DTensor mesh) can be configured only before TensorFlow initialises
its runtime, once per process. A caller whose process already runs TensorFlow (the TFX
Trainer executor, a notebook, a test) starts ``eventpipe train`` as a child process with
the resolved config, streams its output, and reads back the train report.

``--strategy multiworker`` needs one process per worker, each with its own ``TF_CONFIG``.
When the caller's environment already has a ``TF_CONFIG`` (a cluster manager started this
process as one task of a job) the single child inherits it. Otherwise ``train`` starts
``teacher.workers`` processes on 127.0.0.1, worker 0 being the chief that writes the
checkpoints, the report and the export. ``--strategy hybrid`` with ``teacher.clients > 1``
does the same for multi-client DTensor: ``teacher.clients`` processes with a ``DTENSOR_*``
environment each, unless the caller's environment has ``DTENSOR_JOBS`` already.
"""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from contract import files, source
from contract.config import Config, client_mesh_error, parse_mesh
from contract.errors import UserError

# absl-formatted native log records ("E0000 00:00:1795353203.219221  14985 file.cc:1121] ...").
_NATIVE_LOG = re.compile(
    rb"(?:[EWIF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]|WARNING: All log messages before absl::).*"
)
LOCAL_HOST = "127.0.0.1"
DTENSOR_JOBS = "DTENSOR_JOBS"  # set: this process is one client of an existing multi-client DTensor job
Log = Callable[[str], Any]


def train(
    cfg: Config,
    examples_dir: str,
    workdir: str,
    *,
    export_dir: str | None = None,
    log: Log = print,
    progress: bool = False,
    init_backbone: str | None = None,
) -> dict[str, Any]:
    """Train the teacher with ``cfg`` in fresh processes; returns the chief's train report.

    ``init_backbone``: a pre-trained backbone (``trainer.pretrain``) the teacher starts from.

    ``multiworker`` without a ``TF_CONFIG`` in this environment runs ``cfg.teacher.workers``
    local worker processes (MultiWorkerMirroredStrategy, one replica each); ``hybrid`` with
    ``cfg.teacher.clients > 1`` and no ``DTENSOR_JOBS`` runs that many DTensor clients, each
    with ``teacher.logical_devices`` devices of the one mesh; every other case runs one child.
    ``export_dir``: where the SavedModel goes (None: no export).
    ``progress``: show the (chief's) progress bar on this process's stderr. If any process
    fails the others are stopped, since a collective would otherwise wait for the lost peer
    forever.
    """
    if cfg.teacher.strategy == "multiworker" and "TF_CONFIG" not in os.environ:
        workers = cfg.teacher.workers
        if workers < 1:
            raise UserError(f"teacher.workers must be >= 1 for --strategy multiworker, got {workers}")
        if cfg.teacher.global_batch_size % workers:
            raise UserError(
                f"--global-batch-size {cfg.teacher.global_batch_size} must be a multiple of the "
                f"{workers} multiworker workers (teacher.workers)"
            )
        cfg = Config.from_dict(cfg.to_dict())
        cfg.teacher.logical_devices = 1  # MultiWorkerMirroredStrategy uses one CPU device per worker
        workdir, cmd = _prepare(cfg, examples_dir, workdir, export_dir, init_backbone)
        cluster = local_cluster(workers)
        log(f"multiworker: {workers} local workers on {', '.join(cluster)} (worker 0 is the chief)")
        children = [
            _Child(
                f"worker {i}",
                cmd,
                {"TF_CONFIG": tf_config(cluster, i)},
                log,
                prefix=f"[worker {i}] ",
                progress=progress and i == 0,
            )  # fmt: skip
            for i in range(workers)
        ]
    elif starts_dtensor_clients(cfg):
        clients = cfg.teacher.clients
        check_client_mesh(cfg)
        workdir, cmd = _prepare(cfg, examples_dir, workdir, export_dir, init_backbone)
        cluster = local_cluster(clients)
        log(f"hybrid: {clients} local DTensor clients on {', '.join(cluster)} (client 0 is the chief)")
        children = [
            _Child(
                f"client {i}",
                cmd,
                dtensor_env(cluster, i),
                log,
                prefix=f"[client {i}] ",
                progress=progress and i == 0,
            )  # fmt: skip
            for i in range(clients)
        ]
    else:
        workdir, cmd = _prepare(cfg, examples_dir, workdir, export_dir, init_backbone)
        children = [_Child("teacher", cmd, {}, log, prefix="", progress=progress)]
    _run_children(children)
    return _read_report(workdir)


def pretrain(
    cfg: Config, examples_dir: str, workdir: str, *, export_dir: str | None = None, log: Log = print,
    progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Pre-train the teacher's backbone (``eventpipe pretrain``) in a fresh process; returns its report.

    One process: the Pretrainer runs ``single`` or one-process ``hybrid`` (its own logical devices).
    """
    workdir, cmd = _prepare(cfg, examples_dir, workdir, export_dir, command="pretrain")
    _run_children([_Child("pretrainer", cmd, {}, log, prefix="", progress=progress, what="pre-training")])
    return _read_report(workdir, files.PRETRAIN_REPORT)


def _run_children(children: list[_Child]) -> None:
    """Wait for every child; stop the rest when one fails, then raise for the cause."""
    try:
        while any(c.running for c in children) and not any(c.code for c in children):
            time.sleep(0.2)
    finally:
        for c in children:
            c.stop()
            c.wait()
    _raise_for_failures(children)


def local_cluster(workers: int) -> list[str]:
    """``workers`` free loopback addresses (host:port) for a local TF_CONFIG cluster."""
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:
            s.bind((LOCAL_HOST, 0))
        return [f"{LOCAL_HOST}:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(cluster: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})


def dtensor_env(cluster: list[str], index: int) -> dict[str, str]:
    """The ``DTENSOR_*`` environment of DTensor client ``index`` (client 0 is the chief)."""
    return {
        DTENSOR_JOBS: ",".join(cluster),
        "DTENSOR_CLIENT_ID": str(index),
        "DTENSOR_NUM_CLIENTS": str(len(cluster)),
        "DTENSOR_JOB_NAME": "worker",
    }


def check_client_mesh(cfg: Config) -> None:
    """Refuse, before any process starts, a mesh that ``teacher.clients`` x
    ``teacher.logical_devices`` cannot fill.

    A multi-client mesh uses every device of every client (``create_distributed_mesh``).
    """
    t = cfg.teacher
    sizes = parse_mesh(t.mesh)
    problem = client_mesh_error(t.mesh, sizes["batch"] * sizes["model"], t.clients, t.logical_devices)
    if problem:
        raise UserError(problem)


def starts_dtensor_clients(cfg: Config) -> bool:
    """Whether ``train`` starts local DTensor clients for ``cfg``: hybrid, ``teacher.clients > 1``
    and no ``DTENSOR_JOBS`` in this environment (else this process is, or joins, the job)."""
    return cfg.teacher.strategy == "hybrid" and cfg.teacher.clients > 1 and DTENSOR_JOBS not in os.environ


# -- internals --------------------------------------------------------------------------


_CONFIG_FILES = {"train": files.TEACHER_CONFIG, "pretrain": files.PRETRAIN_CONFIG}


def _prepare(
    cfg: Config, examples_dir: str, workdir: str, export_dir: str | None, init_backbone: str | None = None,
    command: str = "train",
) -> tuple[str, list[str]]:  # fmt: skip
    """Save ``cfg`` in ``workdir`` and build the ``eventpipe train|pretrain`` child command."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, _CONFIG_FILES[command])
    cfg.save(config_path)
    cmd = [
        sys.executable, "-m", "pipeline.cli", command, "--config", config_path,
        "--data", os.path.abspath(examples_dir), "--workdir", workdir,
    ]  # fmt: skip
    cmd += ["--export-dir", os.path.abspath(export_dir)] if export_dir else ["--no-export"]
    if init_backbone:
        cmd += ["--init-backbone", os.path.abspath(init_backbone)]
    return workdir, cmd


def _raise_for_failures(children: list[_Child]) -> None:
    """Raise for the process that caused a failure, naming the peers that failed after it.

    A process killed by a signal or stopped by a user error is the cause; peers then fail
    in their collectives (or are stopped here) and are only mentioned.
    """
    failed = [c for c in children if c.wait() and not c.stopped]
    if not failed:
        return
    cause = next((c for c in failed if c.code < 0 or c.code == UserError.exit_code), failed[0])
    cause.raise_for_failure(also=[f"{c.name} exited with {c.code}" for c in failed if c is not cause])


def _read_report(workdir: str, name: str = files.TRAIN_REPORT) -> dict[str, Any]:
    with open(os.path.join(workdir, name), encoding="utf-8") as f:
        return json.load(f)


class _Child:
    """One ``eventpipe train`` process whose output is streamed to ``log`` as it arrives.

    With ``progress`` the child draws its progress bar and the raw output is also copied to
    this process's stderr as it comes (carriage returns included, so the bar redraws in
    place); ``log`` still receives every complete line.
    """

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], log: Log, prefix: str, progress: bool = False,
        what: str = "teacher training",
    ) -> None:  # fmt: skip
        self.name = name
        self.what = what
        self.progress = progress
        cmd = cmd if progress else [*cmd, "--quiet"]
        child_env = source.child_env(env, die_with_parent=True)
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self.stopped = False  # terminated by the launcher, not failed on its own
        self._echo_pending = b""
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env, cwd=source.REPO_ROOT
        )
        self._reader = threading.Thread(target=self._stream, args=(log, prefix), daemon=True)
        self._reader.start()

    def _stream(self, log: Log, prefix: str) -> None:
        assert self.proc.stdout is not None
        pending = b""
        while chunk := self.proc.stdout.read1(65536):
            if self.progress:
                self._echo(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                self._line(raw, log, prefix)
        if pending:
            self._line(pending, log, prefix)

    def _echo(self, chunk: bytes) -> None:
        """Copy output to stderr segment by segment (``\r`` or ``\n`` ends one), minus native logs.

        TensorFlow's C++ code logs harmless ``E0000 ...`` lines (grappler's cost estimator
        on DTensor graphs) that would read as errors next to the progress bar; the log
        callback still receives them.
        """
        parts = re.split(rb"([\r\n])", self._echo_pending + chunk)
        self._echo_pending = parts.pop()  # not yet ended: a bar may be redrawn or extended
        kept = bytearray()
        for text, end in zip(parts[::2], parts[1::2], strict=True):
            cleaned = _NATIVE_LOG.sub(b"", text)
            if cleaned or not text:
                kept += cleaned + end
        if kept:
            sys.stderr.write(kept.decode("utf-8", "replace"))
            sys.stderr.flush()

    def _line(self, raw: bytes, log: Log, prefix: str) -> None:
        line = (
            raw.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1]
        )  # a redrawn bar: its last state
        self.tail.append(line)
        log(prefix + line)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def code(self) -> int:
        """Exit status; 0 while still running."""
        return self.proc.poll() or 0

    def stop(self) -> None:
        if self.running:
            self.stopped = True
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def raise_for_failure(self, also: list[str] | None = None) -> None:
        code = self.wait()
        after = f" (then {', '.join(also)})" if also else ""
        if code == UserError.exit_code:
            message = next(
                (t for t in reversed(self.tail) if "error:" in t), self.tail[-1] if self.tail else ""
            )
            raise UserError(f"{self.name}: " + message.split("error:", 1)[-1].strip() + after)
        if code:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            raise RuntimeError(
                f"{self.what}: {self.name} {how}{after}; its last output:\n" + "\n".join(self.tail)
            )

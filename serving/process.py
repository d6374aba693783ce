"""``eventpipe serve`` in a child process on free loopback ports.

A separate process is what a client really talks to: its own interpreter, model loading and
sockets. The ServingValidator, the serving tests and the serving benchmark all start the
server this way; the port file the server writes once it listens says which ports it got.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from contract import source

LOG_TAIL_CHARS = 6000


class ServerProcess:
    """``eventpipe serve --model_base_path BASE --model_name NAME *extra`` on free loopback ports;
    ``stop`` always ends it. ``base`` None: the models come from a ``--model_config_file`` in ``extra``.

    ``workdir`` holds the port file and the server's log (default: a new temporary directory);
    ``env`` adds environment variables for the server.
    """

    def __init__(
        self,
        base: str | None,
        model_name: str | None,
        *extra: str,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        workdir = workdir or tempfile.mkdtemp(prefix="eventpipe-serve-")
        self.port_file = os.path.join(workdir, "ports.json")
        self.log_path = os.path.join(workdir, "server.log")
        model = ["--model_base_path", base] if base is not None else []
        model += ["--model_name", model_name] if model_name is not None else []
        cmd = [
            sys.executable, "-m", "pipeline.cli", "serve", *model, "--host", "127.0.0.1",
            "--set", "serving.rest_port=0", "--set", "serving.grpc_port=0", "--port-file", self.port_file,
            "--file_system_poll_wait_seconds", "0.2", *extra,
        ]  # fmt: skip
        child_env = source.child_env(env, die_with_parent=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=child_env
        )
        self.rest_port: int | None = None
        self.grpc_port: int | None = None

    def wait_listening(self, timeout: float) -> ServerProcess:
        """Block until the server listens; RuntimeError (with its log) if it exits or times out."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with code {self.proc.returncode} before listening:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the server did not start listening within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        with open(self.port_file, encoding="utf-8") as f:
            info = json.load(f)
        self.rest_port, self.grpc_port = info["rest_port"], info["grpc_port"]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")[-chars:]

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after 15 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

"""Run teacher training in a fresh process.

Logical devices (and a DTensor mesh) can be configured only before TensorFlow initialises
its runtime, once per process. A caller whose process already runs TensorFlow (the TFX
Trainer executor, a notebook, a test) starts ``eventpipe train`` as a child process with
the resolved config, streams its output, and reads back the train report.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_in_subprocess(
    cfg: Config,
    examples_dir: str,
    workdir: str,
    *,
    export_dir: str | None = None,
    log: Callable[[str], Any] = print,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``eventpipe train`` with ``cfg`` in a child process; returns its train report.

    ``export_dir``: where the SavedModel goes (None: no export). ``env`` adds environment
    variables for the child (e.g. ``TF_CONFIG`` for one multiworker task).
    """
    from trainer.train_loop import REPORT

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "teacher_config.json")
    cfg.save(config_path)
    cmd = [
        sys.executable, "-m", "pipeline.cli", "train", "--config", config_path,
        "--data", os.path.abspath(examples_dir), "--workdir", workdir, "--quiet",
    ]  # fmt: skip
    cmd += ["--export-dir", os.path.abspath(export_dir)] if export_dir else ["--no-export"]
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, child_env.get("PYTHONPATH", "")) if p)
    child_env.update(env or {})
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env, cwd=REPO_ROOT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
        code = proc.wait()
    if code == UserError.exit_code:
        message = next((t for t in reversed(tail) if "error:" in t), tail[-1] if tail else "")
        raise UserError(message.split("error:", 1)[-1].strip())
    if code:
        raise RuntimeError(f"teacher training exited with {code}; last output:\n" + "\n".join(tail))
    with open(os.path.join(workdir, REPORT), encoding="utf-8") as f:
        return json.load(f)

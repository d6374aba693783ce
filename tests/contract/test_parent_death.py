"""A child started with ``child_env(die_with_parent=True)`` dies with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from repo import REPO

from contract import source

pytestmark = pytest.mark.e2e

CHILD = (
    "import os, sys, time; from contract import source; source.honour_parent_death(); "
    "print(os.getpid(), source.PARENT_PID_ENV in os.environ, flush=True); time.sleep(120)"
)
# The middle process: starts CHILD as the pipeline starts a teacher, relays its line, then waits.
PARENT = (
    "import subprocess, sys, time; from contract import source; "
    f"c = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdout=subprocess.PIPE, text=True, "
    "env=source.child_env(die_with_parent=True)); "
    "print(c.stdout.readline().strip(), flush=True); time.sleep(120)"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_child_dies_when_its_parent_is_killed():
    env = dict(os.environ, PYTHONPATH=REPO)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        pid, inherited = parent.stdout.readline().split()
        child = int(pid)
        assert inherited == "False"  # popped: the child's own children get their own parent's pid
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its killed parent"
    finally:
        parent.kill()


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    env = source.child_env({source.PARENT_PID_ENV: "1"})  # pid 1 is nobody's parent here
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=REPO, capture_output=True, timeout=60)
    assert r.returncode == 128 + signal.SIGKILL and r.stdout == b""


def test_without_the_flag_nothing_is_armed():
    env = source.child_env()
    assert source.PARENT_PID_ENV not in env
    r = subprocess.run(
        [sys.executable, "-c", "from contract import source; source.honour_parent_death(); print('ran')"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == "ran\n"

"""One pipeline command per workdir at a time.

Two runs on one workdir would share its ML Metadata store, artifacts and release. The lock is an
advisory ``flock`` on ``WORKDIR/.eventpipe.lock``, held for the life of the process: the kernel
releases it when the process ends however it ends (a kill leaves no stale lock), and the file
names the holder so the refusal can say who.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from typing import IO

from contract.errors import UserError

LOCK_FILE = ".eventpipe.lock"
_held: dict[str, IO[str]] = {}  # workdir -> the open lock file (closing it would release the lock)


def lock_workdir(workdir: str) -> None:
    """Take the workdir's lock for this process, or raise a UserError naming the holder."""
    workdir = os.path.abspath(workdir)
    if workdir in _held:
        return
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, LOCK_FILE), "a+", encoding="utf-8")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder(handle.read())
        handle.close()
        raise UserError(
            f"workdir {workdir} is in use by {holder}; wait for it to finish, or pass another --workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    json.dump({"pid": os.getpid(), "started": started, "command": " ".join(sys.argv)}, handle)
    handle.flush()
    _held[workdir] = handle


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} ({info['command']}, since {info['started']})"
    except (ValueError, KeyError, TypeError):
        return "another eventpipe process"


def release_workdir(workdir: str) -> None:
    """Give the workdir's lock back (before the workdir is removed): this process may take it again."""
    handle = _held.pop(os.path.abspath(workdir), None)
    if handle is not None:
        handle.close()

"""Where eventpipe's code lives, for the processes it starts (trainers, servers, latency workers,
Beam workers): a child imports the same tree as its parent, installed or not."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_FILE = os.path.join(REPO_ROOT, "setup.py")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, then ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a child: SIGKILL it when the process that started it dies (Linux prctl).

    A killed pipeline must not leave a teacher writing checkpoints that the next run resumes
    from, or a model server holding its ports. Start the child from a thread that lives as long
    as the child (the signal follows the starting thread). A ``preexec_fn`` makes Popen fork
    instead of spawn, running other libraries' fork handlers: a child that can notice its
    parent's death by itself (EOF on a pipe) does without it.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        pass

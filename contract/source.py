"""Where eventpipe's code lives, for the processes it starts (trainers, servers, latency workers,
Beam workers): a child imports the same tree as its parent, installed or not."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_FILE = os.path.join(REPO_ROOT, "setup.py")


PARENT_PID_ENV = "EVENTPIPE_DIE_WITH_PARENT"  # set by child_env(die_with_parent=True)


def child_env(extra: Mapping[str, str] | None = None, *, die_with_parent: bool = False) -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, then ``extra``.

    ``die_with_parent``: the child (an ``eventpipe`` command) arms ``honour_parent_death`` for
    this process. Start it from a thread that lives as long as the child: the kernel sends the
    signal when the starting thread ends.
    """
    env = dict(os.environ)
    env.pop(PARENT_PID_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    if die_with_parent:
        env[PARENT_PID_ENV] = str(os.getpid())
    return env


_PR_SET_PDEATHSIG = 1


def honour_parent_death() -> None:
    """In a child started with ``child_env(die_with_parent=True)``: SIGKILL this process when its
    parent dies (Linux prctl), and exit now if the parent is already gone.

    A killed pipeline must not leave a teacher writing checkpoints that the next run resumes
    from, or a model server holding its ports. The child arms the signal itself, first thing,
    rather than in a Popen ``preexec_fn``: that would make Popen fork instead of spawn and run
    other libraries' fork handlers (gRPC's among them) in the parent.
    """
    parent = os.environ.pop(PARENT_PID_ENV, None)  # the child's own children get their own
    if not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed parent
        return
    if os.getppid() != int(parent):  # it died before the signal was armed
        os._exit(128 + signal.SIGKILL)

"""Errors a user can cause, and a full disk told apart from other failures. The CLI prints them as
one line and exits non-zero."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator


class UserError(Exception):
    """Something the user can fix (a path, a flag, the data); the message says what to do."""

    exit_code = 2


class GateFailed(UserError):
    """A quality gate (rejection rate, anomalies, blessing, parity) stopped the run."""

    exit_code = 3


WORKDIR_REMEDY = "pass --workdir on a file system with more room"


class DiskFull(UserError):
    """A file system ran out of space. The message names the path and the space left there, and says
    what to do: the tracebacks the libraries raise on a full disk say neither."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def disk_full_at(path: str, action: str = "writing", remedy: str | None = None) -> DiskFull:
    """A DiskFull for ``path``:
    "no space left on device <action> <path> (<space left there>): <what to do>"."""
    path = os.path.abspath(path)
    todo = (
        f"free space there, or {remedy}, and run the command again"
        if remedy
        else "free space there and run the command again"
    )
    return DiskFull(f"no space left on device {action} {path} ({space_left(path)}): {todo}", path)


# A full disk as the libraries report it: an OSError's errno, or only its text in the message of
# an exception that wraps it (Beam: "[Errno 28] No space left on device"; TensorFlow:
# "<path>; No space left on device"; SQLite and ML Metadata: "database or disk is full").
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full")
_FULL = r"(?:No space left on device|Disk quota exceeded)"
_PATH_IN_TEXT = re.compile(rf"(/[^\s;'\"]+); {_FULL}|{_FULL}: '(/[^']+)'")  # TensorFlow's | Python's


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or while handling, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) not in seen:
            seen.add(id(e))
            yield e
            todo += [c for c in (e.__cause__, e.__context__) if c is not None]


def disk_full_cause(exc: BaseException) -> tuple[bool, str | None]:
    """Whether a full file system is behind ``exc`` (anywhere in its chain), and the path that
    could not be written when one of the exceptions names it."""
    full, path = False, None
    for e in _chain(exc):
        if isinstance(e, DiskFull):
            return True, e.path
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            full = True
            if path is None and isinstance(e.filename, (str, bytes, os.PathLike)):
                path = os.fsdecode(e.filename)
        try:
            text = str(e)
        except Exception:  # noqa: BLE001 (a broken __str__ must not hide the error being reported)
            text = ""
        if any(t in text for t in DISK_FULL_TEXTS):
            full = True
            found = _PATH_IN_TEXT.search(text)
            if path is None and found:
                path = found.group(1) or found.group(2)
    return full, path


def disk_full(exc: BaseException, workdir: str | None = None) -> DiskFull | None:
    """``exc`` as one DiskFull when a full disk caused it, else None. It names the path the
    exception carries, else the workdir (Beam and SQLite do not say which file they were writing)."""
    if isinstance(exc, DiskFull):
        return exc
    full, path = disk_full_cause(exc)
    if not full:
        return None
    if path is not None:
        inside = workdir is not None and _is_within(os.path.abspath(path), os.path.abspath(workdir))
        return disk_full_at(path, remedy=WORKDIR_REMEDY if inside else None)
    if workdir is not None:
        return disk_full_at(workdir, action="in the workdir", remedy=WORKDIR_REMEDY)
    here = os.getcwd()
    return DiskFull(
        f"no space left on device (the write that failed did not say where; the current directory is "
        f"{here}: {space_left(here)}): free space and run the command again"
    )


def _is_within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def space_left(path: str) -> str:
    """'the file system mounted at M has F free of T', for the file system ``path`` is (or would be) on."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    mount = existing
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        return f"on the file system mounted at {mount}"
    return f"the file system mounted at {mount} has {_size(usage.free)} free of {_size(usage.total)}"


def _size(n: float) -> str:
    """Bytes for people: 512 bytes, 348 KiB, 1.5 GiB."""
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"

"""Atomic, versioned pushes to a TF Serving model base path and to the on-device release channel.

Layouts written::

    <serving_base>/<model_name>/<version>/saved_model.pb, variables/, assets.extra/ ...
        assets.extra/tf_serving_warmup_requests   (PredictionLog records of real eval events)
    <mobile_base>/<model_name>/<version>/model.tflite, model_float16.tflite, release.json

``tensorflow_model_server --model_base_path=<serving_base>/<model_name>`` and ``eventpipe
serve`` treat only all-digit directory names as versions; everything a push writes before it
is complete lives under a dot-prefixed name, which neither of them parses as a version.

Atomicity: the files are copied into ``<model_dir>/.push-<pid>-<random>/``, every file and
directory is fsync'ed, and the directory is renamed to ``<version>`` in one ``rename(2)``
(``RENAME_NOREPLACE`` where the kernel has it), then the parent is fsync'ed. A reader polling
the model directory sees either no version or a complete one, never half of one.

Versions: strictly increasing and never reused. A version number is claimed by creating
``<model_dir>/.eventpipe-push/claims/<version>`` with ``O_EXCL`` before the rename; the next
version is ``1 + max(claimed, on disk)``, so two pushers never get the same number and a
version that was deleted (a bad model pulled from serving) is not handed out again, which keeps
``latest`` meaning "most recently pushed" and clients' cached version numbers unambiguous. A
directory someone created by hand is respected: the rename never replaces it, the pusher
claims the next number instead. The base path must be a local or POSIX file system (rename
is what makes a push atomic); the source may be any path ``tf.io.gfile`` reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import tensorflow as tf

from contract import files
from contract.errors import UserError, disk_full_at, disk_full_cause
from ondevice.metadata import MetadataError, read_metadata
from serving.versions import model_dir as resolve_model_dir
from serving.versions import scan_versions
from serving.warmup import write_warmup_file

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
RELEASE_FILE = "release.json"
RELEASE_FORMAT = "eventpipe.release/1"
STATE_DIR = ".eventpipe-push"  # beside the versions: claims, releases, the pushed-models ledger
CLAIMS_DIR = "claims"
TMP_PREFIX = ".push-"
STALE_TMP_SECONDS = 6 * 3600  # a temporary dir this old belongs to a pusher that died
MAX_ATTEMPTS = 1000
TFLITE_IDENTIFIER = b"TFL3"


# -- what is on disk -------------------------------------------------------------------------
def versions_on_disk(model_dir: str) -> list[int]:
    """Sorted versions under ``model_dir`` (every version directory name taken, as the servers
    read names; a symlink leading out counts too: its number is not free)."""
    return sorted(scan_versions(model_dir, contained=False))


def claimed_versions(model_dir: str) -> list[int]:
    """Every version number a push has ever claimed in ``model_dir``."""
    try:
        names = os.listdir(os.path.join(model_dir, STATE_DIR, CLAIMS_DIR))
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def next_version(model_dir: str) -> int:
    """The number the next push would get: above every version claimed or present."""
    return 1 + max([0, *versions_on_disk(model_dir), *claimed_versions(model_dir)])


# -- file system helpers ---------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file and directory under ``root`` to stable storage (children first)."""
    for directory, _dirs, names in os.walk(root, topdown=False):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(directory)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists (even an empty directory)."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the file system lacks RENAME_NOREPLACE
            raise OSError(err, os.strerror(err), src)
    # Fallback: rename(2) fails on a non-empty target; the check covers an empty one.
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(e.errno, e.strerror, dst) from e
        raise


def _is_remote(path: str) -> bool:
    return "://" in path


def _copy_tree(src: str, dst: str) -> None:
    """Copy the directory ``src`` into the existing directory ``dst``."""
    if not _is_remote(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return

    for directory, _subdirs, names in tf.io.gfile.walk(src):
        rel = os.path.relpath(directory, src) if directory != src else ""
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for name in names:
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(dst, rel, name), overwrite=True)


def _copy_file(src: str, dst: str) -> None:
    if not _is_remote(src):
        shutil.copyfile(src, dst)
        return

    tf.io.gfile.copy(src, dst, overwrite=True)


def _exists(path: str) -> bool:
    if not _is_remote(path):
        return os.path.exists(path)

    return tf.io.gfile.exists(path)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _s, names in os.walk(root) for n in names)


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _naming_a_full_disk(model_dir: str) -> Iterator[None]:
    """A full file system while pushing into ``model_dir`` is one DiskFull naming that directory
    (the failing write names a hidden temporary that the failed push removes)."""
    try:
        yield
    except OSError as e:  # shutil.Error (a failed copytree) included
        if not disk_full_cause(e)[0]:
            raise
        remedy = "push to a file system with more room (run.serving_base, run.mobile_base)"
        raise disk_full_at(model_dir, action="pushing to", remedy=remedy) from e


def _remove_stale_temporaries(model_dir: str) -> None:
    """Delete temporary push dirs left by pushers that died long ago (never a live one)."""
    now = time.time()
    for entry in os.scandir(model_dir):
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir(follow_symlinks=False):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except FileNotFoundError:
                continue


# -- the push protocol -----------------------------------------------------------------------
def _claim(model_dir: str, source: str) -> int:
    """Atomically reserve the next version number (O_EXCL create of its claim file)."""
    claims = os.path.join(model_dir, STATE_DIR, CLAIMS_DIR)
    os.makedirs(claims, exist_ok=True)
    for _ in range(MAX_ATTEMPTS):
        version = next_version(model_dir)
        try:
            fd = os.open(os.path.join(claims, str(version)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another pusher claimed it between our scan and our create
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": version, "pid": os.getpid(), "host": socket.gethostname(),
                       "claimed": _utc_now(), "source": source}, f)  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(claims)
        return version
    raise RuntimeError(f"could not claim a version in {model_dir} after {MAX_ATTEMPTS} attempts")


class Staged:
    """A complete version under a hidden name with its number claimed; ``commit`` shows it.

    Staging is the slow part (copy, fsync); a commit is one rename. A release stages all of
    its pushes first and commits them together (``components.pusher.release``).
    """

    def __init__(
        self, directory: str, tmp: str, source: str, stamp: Callable[[str, int], None] | None,
        summary: dict[str, Any]
    ) -> None:  # fmt: skip
        self.directory, self.tmp, self.source, self._stamp = directory, tmp, source, stamp
        self.summary = summary  # what push_* return, completed by commit
        self.version = 0
        self.take_next_version()

    @property
    def path(self) -> str:
        return os.path.join(self.directory, str(self.version))

    def take_next_version(self) -> None:
        """Claim the next free number (a directory someone made by hand keeps its own) and stamp it."""
        with _naming_a_full_disk(self.directory):
            for _ in range(MAX_ATTEMPTS):
                version = _claim(self.directory, self.source)
                if os.path.lexists(os.path.join(self.directory, str(version))):
                    continue
                self.version = version
                if self._stamp is not None:
                    self._stamp(self.tmp, version)
                    _fsync_dir(self.tmp)
                self.summary.update(version=version, path=self.path)
                return
        raise RuntimeError(f"no free version in {self.directory} after {MAX_ATTEMPTS} attempts")

    def commit(self) -> dict[str, Any]:
        """Rename into place (never over an existing directory: FileExistsError); the summary."""
        with _naming_a_full_disk(self.directory):
            rename_noreplace(self.tmp, self.path)
            _fsync_dir(self.directory)
        return self.summary

    def discard(self) -> None:
        """Drop the staged files (a no-op once committed)."""
        if os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _stage(
    base: str,
    model_name: str,
    source: str,
    populate: Callable[[str], None],
    stamp: Callable[[str, int], None] | None,
    summary: dict[str, Any],
) -> Staged:
    """Fill a temporary dir, fsync it, claim a version and stamp it; nothing visible yet.

    On any failure (a full disk: DiskFull naming the model directory) the temporary is removed
    and no version is visible; a version number claimed already stays used."""
    if _is_remote(base):
        raise UserError(f"push destination {base!r} must be a local or POSIX path (atomic rename)")
    with _naming_a_full_disk(os.path.join(base, model_name)):
        os.makedirs(base, exist_ok=True)
        directory = resolve_model_dir(base, model_name)
        os.makedirs(directory, exist_ok=True)
        _remove_stale_temporaries(directory)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        os.mkdir(tmp)
        try:
            populate(tmp)
            _fsync_tree(tmp)
            summary["bytes"] = _tree_bytes(tmp)
            return Staged(directory, tmp, source, stamp, summary)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _publish(staged: Staged, started: float) -> dict[str, Any]:
    """Commit one staged version on its own, taking the next number if its own was taken meanwhile."""
    try:
        for _ in range(MAX_ATTEMPTS):
            try:
                summary = staged.commit()
            except FileExistsError:
                staged.take_next_version()  # a directory made outside eventpipe holds this number
                continue
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        raise RuntimeError(f"no free version in {staged.directory} after {MAX_ATTEMPTS} attempts")
    finally:
        staged.discard()


def stage_saved_model(src_dir: str, base: str, model_name: str, warmup: list[Any] | None = None) -> Staged:
    """``push_saved_model`` up to the final rename (see ``Staged``)."""
    if not (
        _exists(os.path.join(src_dir, SAVED_MODEL_PB)) or _exists(os.path.join(src_dir, SAVED_MODEL_PBTXT))
    ):
        raise UserError(f"{src_dir!r} is not a SavedModel directory (no {SAVED_MODEL_PB}); nothing pushed")
    summary: dict[str, Any] = {"kind": "saved_model", "model_name": model_name, "source": src_dir}

    def populate(tmp: str) -> None:
        _copy_tree(src_dir, tmp)
        if warmup:
            write_warmup_file(tmp, warmup)
            summary["warmup_requests"] = len(warmup)

    return _stage(base, model_name, src_dir, populate, None, summary)


def push_saved_model(
    src_dir: str, base: str, model_name: str, warmup: list[Any] | None = None
) -> dict[str, Any]:
    """Publish the SavedModel ``src_dir`` as the next version of ``<base>/<model_name>``.

    The result is exactly what ``tensorflow_model_server --model_base_path=<base>/<model_name>``
    loads. ``warmup``: ``PredictionLog`` records written as its ``tf_serving_warmup_requests``.
    Returns ``{"kind", "model_name", "version", "path", "source", "bytes", "seconds"}``.
    """
    started = time.monotonic()
    return _publish(stage_saved_model(src_dir, base, model_name, warmup), started)


def _check_tflite(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"TFLite model {path!r} does not exist; nothing pushed")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != TFLITE_IDENTIFIER:
        raise UserError(
            f"{path!r} is not a TFLite flatbuffer (no {TFLITE_IDENTIFIER!r} identifier); nothing pushed"
        )


def _model_card(tflite_path: str) -> dict[str, Any]:
    """Labels, input and output description from the metadata embedded in the model (if any)."""

    try:
        meta = read_metadata(tflite_path)
    except MetadataError:
        return {}
    card: dict[str, Any] = {"labels": meta.get("labels"), "input": meta.get("input")}
    for key in ("variant", "event_spec", "outputs", "output_tensors", "postprocessing", "sparse_encoding"):
        if key in meta:
            card[key] = meta[key]
    return card


def push_tflite(
    tflite_path: str,
    base: str,
    model_name: str,
    release: dict[str, Any],
    *,
    variants: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Publish ``tflite_path`` as ``<base>/<model_name>/<version>/model.tflite`` plus ``release.json``.

    See ``stage_tflite`` for the arguments; returns a summary with the release.
    """
    started = time.monotonic()
    return _publish(stage_tflite(tflite_path, base, model_name, release, variants=variants), started)


def stage_tflite(
    tflite_path: str,
    base: str,
    model_name: str,
    release: dict[str, Any],
    *,
    variants: dict[str, str] | None = None,
) -> Staged:
    """``push_tflite`` up to the final rename (see ``Staged``).

    ``release`` holds what only the caller knows: ``metrics`` (accuracy, agreement, sizes),
    ``source`` (pipeline run id, model artifact uri) and, for a model without embedded
    metadata, ``labels`` and ``input``. ``variants`` maps more file names in the release dir
    to their sources (e.g. ``{"model_float16.tflite": path}``). release.json also gets the
    version, the sha256 and size of every file, the labels and input spec read from the
    model's embedded metadata, and the creation time.
    """
    variants = dict(variants or {})
    _check_tflite(tflite_path)
    for name, path in variants.items():
        if (
            name in (files.TFLITE_INT8, RELEASE_FILE)
            or os.path.basename(name) != name
            or name.startswith(".")
        ):
            raise UserError(f"variant file name {name!r} is not allowed in a release directory")
        _check_tflite(path)
    card = _model_card(tflite_path)
    labels = card.get("labels") or release.get("labels")
    if not labels:
        raise UserError(f"{tflite_path!r} has no embedded labels and the release gave none; nothing pushed")
    copied: dict[str, dict[str, Any]] = {}

    def populate(tmp: str) -> None:
        for name, path in [(files.TFLITE_INT8, tflite_path), *variants.items()]:
            target = os.path.join(tmp, name)
            _copy_file(path, target)
            copied[name] = {"sha256": sha256_file(target), "bytes": os.path.getsize(target)}
        for name in variants:
            copied[name]["variant"] = _model_card(os.path.join(tmp, name)).get("variant")
        copied[files.TFLITE_INT8]["variant"] = card.get("variant")

    content: dict[str, Any] = {}

    def stamp(tmp: str, version: int) -> None:
        content.clear()
        content.update({k: v for k, v in release.items() if k not in ("labels", "input")})
        content.update(
            {
                "format": RELEASE_FORMAT,
                "model_name": model_name,
                "version": version,
                "created": _utc_now(),
                "model_file": files.TFLITE_INT8,
                "sha256": copied[files.TFLITE_INT8]["sha256"],
                "bytes": copied[files.TFLITE_INT8]["bytes"],
                "files": copied,
                "labels": list(labels),
                "input": card.get("input") or release.get("input"),
            }
        )
        for key in ("event_spec", "outputs", "output_tensors", "postprocessing"):
            if key in card:
                content[key] = card[key]
        path = os.path.join(tmp, RELEASE_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    summary: dict[str, Any] = {
        "kind": "tflite",
        "model_name": model_name,
        "source": tflite_path,
        "release": content,
    }
    staged = _stage(base, model_name, tflite_path, populate, stamp, summary)
    staged.summary["bytes"] = _tree_bytes(staged.tmp)  # release.json is written when the version is stamped
    return staged


def read_release(version_dir: str) -> dict[str, Any]:
    """A pushed release's ``release.json``."""
    with open(os.path.join(version_dir, RELEASE_FILE), encoding="utf-8") as f:
        return json.load(f)


def verify_release(version_dir: str) -> list[str]:
    """Problems with a pushed release (sha256 or size of a file differs from release.json); [] if sound."""
    release = read_release(version_dir)
    problems = []
    for name, entry in release.get("files", {}).items():
        path = os.path.join(version_dir, name)
        if not os.path.isfile(path):
            problems.append(f"{name}: missing")
        elif os.path.getsize(path) != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256/size differs from {RELEASE_FILE}")
    return problems

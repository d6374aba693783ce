"""A full disk: ingest and a push on a small tmpfs fail with one line naming where, leave nothing
that looks complete, and succeed once there is room.

The workdirs and push targets are tmpfs mounts (root and ``mount -t tmpfs``, as in the CI image);
a machine where that cannot be mounted fails these tests rather than skipping them.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from repo import REPO

from contract.config import SimulatorConfig
from contract.errors import DiskFull, UserError
from simulator.writer import generate

pytestmark = pytest.mark.e2e

# 300 events of two 32x32 frames: ~1.6 MiB of examples; the SQLite ML Metadata store is ~240 KiB
# from its first open and grows little. So 640 KiB holds the store, the config and the lock, and
# EventExampleGen's output does not fit (checked against the roomy run below).
EVENTS = SimulatorConfig(events=300, frames=2, size=32, classes=["empty", "person", "vehicle"], seed=1)
SMALL, ROOMY = "640k", "16m"
NAME = "events"


@pytest.fixture
def tmpfs():
    """mount(dir, size): a tmpfs of that size at dir (``grow`` remounts it larger); unmounted afterwards."""
    mounted = []

    def mount(directory, size, *options):
        os.makedirs(directory, exist_ok=True)
        opts = ",".join([*options, f"size={size}"])
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(directory)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(
                f"cannot mount a {size} tmpfs at {directory}: {(done.stderr or done.stdout).strip()}. "
                "These tests need root and `mount -t tmpfs` (as in the CI image)."
            )
        if "remount" not in options:
            mounted.append(str(directory))

    yield mount
    for directory in reversed(mounted):
        if subprocess.run(["umount", directory], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", directory], check=True)  # still busy: detach it now


def grow(mount, directory, size):
    """Resize the tmpfs at ``directory`` in place, its files kept."""
    mount(directory, size, "remount")


def eventpipe(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def tree_bytes(root):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names)


def files_under(root):
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]


def metadata_connection(workdir):
    """``runners.metadata_connection`` for a workdir's SQLite store, without importing TFX (seconds)."""
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(workdir, "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def test_ingest_on_a_full_disk_fails_in_one_line_records_nothing_complete_and_reruns(tmp_path, tmpfs):
    from ml_metadata.proto import metadata_store_pb2

    from pipeline import outputs

    events = str(tmp_path / "events")
    generate(events, EVENTS, workers=1, progress=False, preview=False)
    ingest = ["run", "--through", "validate", "--data", events]
    # The run to compare with, on roomy disk, alongside the ones on the small file system.
    roomy_work = tmp_path / "roomy"
    roomy = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *ingest, "--workdir", str(roomy_work)],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        small = tmp_path / "small"
        tmpfs(small, SMALL)
        work = small / "work"
        failed = eventpipe(*ingest, "--workdir", str(work), cwd=tmp_path)

        # One clear line, last, naming the workdir and its file system and saying what to do.
        assert failed.returncode == UserError.exit_code, failed.stdout[-2000:] + failed.stderr[-3000:]
        last = failed.stderr.strip().splitlines()[-1]
        # Beam and SQLite do not say which file they were writing: then the workdir is named.
        said = re.match(
            r"eventpipe run: error: no space left on device (in the workdir|writing) (\S+) ", last
        )
        assert said and (said.group(2) + "/").startswith(f"{work}/"), last
        assert f"the file system mounted at {small} has " in last and "free of 640 KiB" in last, last
        assert "free space there, or pass --workdir on a file system with more room" in last, last
        assert "During handling of the above exception" not in failed.stderr, failed.stderr[-3000:]

        # Nothing half written passes for complete: no COMPLETE ingest, no LIVE artifact, no files.
        connection = metadata_connection(work)
        assert "COMPLETE" not in outputs.execution_count(connection, "EventExampleGen")
        live = [
            a.uri
            for a in outputs.open_store(connection).get_artifacts()
            if a.state == metadata_store_pb2.Artifact.LIVE
        ]
        assert live == []
        assert files_under(work / "pipeline" / "EventExampleGen") == []
        assert not (work / "report.json").exists()

        # Room again: the same command succeeds.
        grow(tmpfs, small, ROOMY)
        rerun = eventpipe(*ingest, "--workdir", str(work), cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
        assert outputs.execution_count(connection, "EventExampleGen").get("COMPLETE") == 1
        roomy_out, roomy_err = roomy.communicate(timeout=600)
    finally:
        if roomy.poll() is None:
            roomy.kill()
            roomy.wait()
    assert roomy.returncode == 0, roomy_out[-2000:] + roomy_err[-3000:]

    # With the roomy run's counts.
    got = json.loads((work / "report.json").read_text())["events"]
    want = json.loads((roomy_work / "report.json").read_text())["events"]
    assert got["read"] == got["accepted"] + got["rejected"] == EVENTS.events
    assert got == want
    # The premise held: the store fits the small file system with room to spare, the examples do not.
    roomy_examples = outputs.latest_run(metadata_connection(roomy_work))["EventExampleGen"].uris["examples"]
    assert tree_bytes(roomy_examples[0]) > 2 * 640 * 1024
    assert os.path.getsize(roomy_work / "metadata.sqlite") < 640 * 1024 / 2


def fill(directory):
    """Write a ballast file in ``directory`` until its file system is full; its path."""
    ballast = os.path.join(directory, "ballast")
    with open(ballast, "wb", buffering=0) as f:  # unbuffered: nothing left to flush on close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return ballast


def test_a_push_that_does_not_fit_fails_naming_the_target_shows_nothing_and_succeeds_with_room(
    tmp_path, tmpfs
):
    from components.pusher import push
    from fixtures import serving_support as ss

    big = str(tmp_path / "big")  # a SavedModel with 2 MiB of incompressible assets
    shutil.copytree(ss.saved_model(1), big)
    with open(os.path.join(big, "assets.extra", "padding.bin"), "wb") as f:
        f.write(os.urandom(2 << 20))
    int8 = ss.tflite_model(1, "int8")
    target = tmp_path / "target"
    tmpfs(target, "1m")
    serving, mobile = str(target / "serving"), str(target / "mobile")
    model_dir, release_dir = os.path.join(serving, NAME), os.path.join(mobile, NAME)

    def visible(directory):
        return sorted(n for n in os.listdir(directory) if n.isdigit())  # what TF Serving would load

    def temporaries(directory):
        return [n for n in os.listdir(directory) if n.startswith(push.TMP_PREFIX)]

    assert push.push_saved_model(ss.saved_model(1), serving, NAME)["version"] == 1  # a small one fits

    with pytest.raises(DiskFull) as caught:
        push.push_saved_model(big, serving, NAME)
    message = str(caught.value)
    assert message.startswith(f"no space left on device pushing to {model_dir} "), message
    assert f"the file system mounted at {target} has " in message and "free of 1.0 MiB" in message, message
    assert "free space there, or push to a file system with more room" in message, message
    assert caught.value.exit_code == UserError.exit_code
    assert visible(model_dir) == ["1"] and temporaries(model_dir) == []
    assert push.next_version(model_dir) == 2  # the failed push claimed no number

    ballast = fill(str(target))
    with pytest.raises(DiskFull, match=re.escape(f"pushing to {release_dir} ")):
        push.push_tflite(int8, mobile, NAME, {})
    assert visible(release_dir) == [] and temporaries(release_dir) == []
    assert not any(p.endswith(push.RELEASE_FILE) for p in files_under(mobile))

    # A pusher killed mid-copy on the full disk leaves its temporary; once that is stale, the next
    # push removes it.
    killed = os.path.join(model_dir, f"{push.TMP_PREFIX}4242-killed")
    os.makedirs(os.path.join(killed, "variables"))
    old = time.time() - push.STALE_TMP_SECONDS - 60
    os.utime(killed, (old, old))

    os.remove(ballast)  # room again: space freed, and the file system grown
    grow(tmpfs, target, "8m")
    pushed = push.push_saved_model(big, serving, NAME)
    assert pushed["version"] == 2 and visible(model_dir) == ["1", "2"]
    assert tree_bytes(os.path.join(model_dir, "2")) == tree_bytes(big)
    assert temporaries(model_dir) == []
    released = push.push_tflite(int8, mobile, NAME, {})
    assert released["version"] == 1 and visible(release_dir) == ["1"]
    assert push.verify_release(os.path.join(release_dir, "1")) == []


def test_a_full_disk_is_recognised_through_the_libraries_wrappers(tmp_path, tmpfs):
    """SQLite, TensorFlow and Beam (an OSError re-raised as text) each say "full disk" their own way."""
    import sqlite3

    import tensorflow as tf

    from contract.errors import disk_full

    small = tmp_path / "small"
    tmpfs(small, "64k")
    database = sqlite3.connect(small / "db.sqlite")
    with pytest.raises(sqlite3.OperationalError) as sqlite_error:
        database.execute("CREATE TABLE t (x)")
        while True:
            database.execute("INSERT INTO t VALUES (?)", (b"x" * 4096,))
            database.commit()
    database.close()
    said = str(disk_full(sqlite_error.value, workdir=str(small)))
    assert said.startswith(f"no space left on device in the workdir {small} "), said

    with pytest.raises(tf.errors.ResourceExhaustedError) as tf_error:
        with tf.io.gfile.GFile(str(small / "big.bin"), "wb") as f:
            f.write(b"x" * (1 << 20))
    said = str(disk_full(tf_error.value, workdir=str(tmp_path)))
    assert said.startswith(f"no space left on device writing {small / 'big.bin'} "), said
    assert "or pass --workdir" in said  # the file is inside the workdir

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise RuntimeError(f"OSError: {e} [while running 'Write']") from None  # Beam's re-raise
    except RuntimeError as e:
        assert disk_full(e, workdir=str(small)) is not None
    assert disk_full(RuntimeError("No such file or directory"), workdir=str(small)) is None

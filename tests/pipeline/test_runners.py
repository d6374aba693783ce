"""Runners and the user-facing edges of the CLI: metadata URLs, Beam args, BeamDagRunner, errors."""

import json
import os
import re
import subprocess
import sys

import eventdata as ed
import pytest
from repo import REPO

from contract import source
from contract.config import Config
from contract.errors import UserError
from pipeline import runners

pytestmark = pytest.mark.e2e


def eventpipe(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_mysql_metadata_url_becomes_a_connection_config():
    cfg = Config()
    cfg.run.metadata = "mysql://ml%40team:s3cret@db.internal:3307/mlmd"
    conn = runners.metadata_connection(cfg)
    assert (conn.mysql.host, conn.mysql.port, conn.mysql.database) == ("db.internal", 3307, "mlmd")
    assert (conn.mysql.user, conn.mysql.password) == ("ml@team", "s3cret")
    for bad in ("postgres://h/db", "mysql://host-only", "mysql:///db"):
        cfg.run.metadata = bad
        with pytest.raises(UserError, match="mysql://"):
            runners.metadata_connection(cfg)


def test_beam_args_direct_runner_workers_and_pass_through():
    cfg = Config()
    assert runners.beam_args(cfg) == [
        "--direct_running_mode=in_memory",
        "--direct_num_workers=1",
        f"--setup_file={source.SETUP_FILE}",
    ]
    cfg.run.beam_workers = 2
    assert "--direct_num_workers=2" in runners.beam_args(cfg)
    cfg.run.beam_args = ["--runner=FlinkRunner", "--flink_master=host:8081"]
    assert runners.beam_args(cfg) == ["--runner=FlinkRunner", "--flink_master=host:8081"]


def test_direct_runner_args_stop_tfx_repackaging_itself():
    """TFX's Beam executors build an sdist of TFX's install unless a dependency flag is set."""
    from tfx.utils import dependency_utils

    args = runners.beam_args(Config())
    assert dependency_utils.make_beam_dependency_flags(args) == args  # returned as is: no sdist built
    cfg = Config()
    cfg.run.beam_args = ["--extra_package=/pkgs/mine.tar.gz"]  # the user's own dependency flag wins
    assert not any(a.startswith("--setup_file") for a in runners.beam_args(cfg))


def test_user_errors_are_one_line(tmp_path):
    r = eventpipe(
        "validate", "--data", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w"), cwd=tmp_path
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("eventpipe validate: error: data path")
    assert "Traceback" not in r.stderr
    r = eventpipe("run", "--data", str(tmp_path), "--set", "teacher.stepz=3", cwd=tmp_path)
    assert (
        r.returncode == 2 and "unknown config key 'teacher.stepz'" in r.stderr and "Traceback" not in r.stderr
    )
    r = eventpipe("run", "--data", str(tmp_path), "--metadata", "sqlite://x", cwd=tmp_path)
    assert r.returncode == 2 and "--metadata must be mysql://" in r.stderr


def test_validate_with_the_beam_dag_runner_and_two_beam_workers(tmp_path):
    ed.write_manifest(str(tmp_path / "data"), [ed.event(f"e{i}", label="ab"[i % 2]) for i in range(40)])
    work = tmp_path / "w"
    r = eventpipe("validate", "--data", str(tmp_path / "data"), "--workdir", str(work), "--runner", "beam",
                  "--beam-workers", "2", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    events = json.loads((work / "report.json").read_text())["events"]
    assert (events["read"], events["accepted"]) == (40, 40)


def test_wrong_python_or_missing_packages_is_one_line_saying_to_set_up(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setattr(sys, "version_info", (3, 12, 1, "final", 0))
    assert main(["run", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eventpipe run: error: eventpipe needs Python 3.10") and "make setup" in err
    # The on-device runner is exempt: it gets as far as its own check of the model path.
    assert main(["device-run", "--model", str(tmp_path / "none.tflite"), "--data", str(tmp_path)]) == 2
    assert "Python 3.10" not in capsys.readouterr().err
    monkeypatch.undo()

    # A venv without the pinned packages (simulated by blocking one import).
    code = (
        "import sys; sys.modules['tqdm'] = None; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run([sys.executable, "-c", code, "generate", "--out", str(tmp_path / "e")], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: package 'tqdm' is not installed for" in r.stderr and "make setup" in r.stderr


def test_version_and_no_python_support_warnings_before_our_output(tmp_path):
    r = eventpipe("--version", cwd=tmp_path)
    assert r.returncode == 0 and re.fullmatch(r"eventpipe \d+\.\d+\.\d+\n", r.stdout), r.stdout + r.stderr
    # google-api-core, imported with TFX, warns that Python 3.10 is past its support on every import.
    imported = subprocess.run(
        [sys.executable, "-c", "from contract import tfenv; from tfx.orchestration import pipeline"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert "non-supported Python version" not in imported.stderr and "FutureWarning" not in imported.stderr


def test_a_second_run_on_a_busy_workdir_refuses_naming_the_first(tmp_path):
    """Two real `eventpipe validate` processes on one workdir: the second refuses, naming the first's
    pid; once the first has finished the workdir is free again (the kernel released the lock)."""
    import time

    data = tmp_path / "events"
    ed.write_manifest(str(data), [ed.event(f"e{i}", label="ab"[i % 2]) for i in range(40)])
    work = tmp_path / "work"
    args = ["validate", "--data", str(data), "--workdir", str(work)]
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = work / ".eventpipe.lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, (
        "the first run ended before the second could start: " + first.communicate()[1][-2000:]
    )
    second = eventpipe(*args, cwd=tmp_path)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    line = second.stderr.strip().splitlines()[-1]
    assert f"workdir {work} is in use by pid {first.pid}" in line and "another --workdir" in line
    assert eventpipe(*args, cwd=tmp_path).returncode == 0  # free again


def test_a_failed_run_leaves_no_half_workdir_it_created(tmp_path):
    """Unreadable --data: a workdir the command created is removed again (nothing in it is usable);
    one that existed before is left as it was."""
    data = tmp_path / "events"
    data.mkdir()
    (data / "notes.txt").write_text("not an event")
    work = tmp_path / "work"
    r = eventpipe("validate", "--data", str(data), "--workdir", str(work), cwd=tmp_path)
    assert r.returncode == 2 and "no events found" in r.stderr, r.stderr[-2000:]
    assert not work.exists() and f"removed {work}" in r.stderr
    work.mkdir()
    (work / "mine.txt").write_text("kept")
    r = eventpipe("validate", "--data", str(data), "--workdir", str(work), cwd=tmp_path)
    assert r.returncode == 2 and (work / "mine.txt").read_text() == "kept" and "removed" not in r.stderr

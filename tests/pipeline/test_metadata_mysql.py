"""`--metadata mysql://...` against a real MySQL-protocol server (MariaDB) on loopback.

The server is a private instance in a temporary data directory on a free port, started
from the `mariadbd`/`mysqld` binary (Debian: `apt install mariadb-server`; `.ci/run`
installs it). Without such a binary the tests that need it fail, saying what to install: a
skipped test would let the MySQL path go untested unnoticed. Grant tables are on and the
pipeline connects as a user with a password, the way a shared store is run.
"""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from repo import REPO

from contract.config import Config, SimulatorConfig
from contract.errors import UserError
from simulator.writer import generate

pytestmark = pytest.mark.e2e

USER, PASSWORD = "pipeline", "s3cret-pw"
SBIN = os.pathsep.join(filter(None, [os.environ.get("PATH"), "/usr/sbin", "/usr/local/sbin"]))


def _binary(*names):
    return next((p for p in (shutil.which(n, path=SBIN) for n in names) if p), None)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mysql_url(tmp_path_factory):
    server, install = _binary("mariadbd", "mysqld"), _binary("mariadb-install-db", "mysql_install_db")
    if not server or not install:
        pytest.fail(
            "no MySQL/MariaDB server binary on this machine: apt install mariadb-server (.ci/run does)"
        )
    root = tmp_path_factory.mktemp("mysql")
    data, port = str(root / "data"), _free_port()
    user = ["--user=" + getpass.getuser()]
    subprocess.run([install, "--no-defaults", f"--datadir={data}", *user, "--skip-test-db",
                    "--auth-root-authentication-method=normal"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    init = root / "init.sql"
    init.write_text(
        f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n"
        f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%';\n"
    )
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [server, "--no-defaults", f"--datadir={data}", f"--socket={root / 'sock'}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--pid-file={root / 'pid'}", f"--init-file={init}",
         "--skip-log-bin", *user],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"MariaDB did not start: {(root / 'server.log').read_text()[-2000:]}")
    yield f"mysql://{USER}:{PASSWORD}@127.0.0.1:{port}/eventpipe_mlmd"
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


def _validate(events, workdir, *flags):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "validate", "--data", str(events),
         "--workdir", str(workdir), *flags],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_pipeline_records_and_caches_in_a_shared_mysql_store(mysql_url, tmp_path):
    from pipeline import outputs, runners

    events = tmp_path / "events"
    generate(str(events), SimulatorConfig(events=40, frames=2, size=8, classes=["a", "b"], seed=2),
             workers=1, progress=False, preview=False)  # fmt: skip
    first = _validate(events, tmp_path / "alice", "--metadata", mysql_url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not list((tmp_path / "alice").rglob("*.sqlite")), "metadata must go to MySQL, not SQLite"

    # A second workdir (another user of the shared store) reuses the recorded ingest.
    second = _validate(events, tmp_path / "bob", "--metadata", mysql_url)
    assert second.returncode == 0, second.stderr[-3000:]
    cfg = Config()
    cfg.run.metadata = mysql_url
    connection = runners.metadata_connection(cfg)
    assert connection.mysql.port == int(mysql_url.rsplit(":", 1)[1].split("/")[0])
    assert outputs.execution_count(connection, "EventExampleGen") == {"COMPLETE": 1, "CACHED": 1}
    bob = json.loads((tmp_path / "bob" / "report.json").read_text())
    assert bob["events"]["read"] == 40 and bob["examples"].startswith(str(tmp_path / "alice"))


def test_a_wrong_password_is_one_clear_error_that_does_not_echo_it(mysql_url, tmp_path):
    from pipeline import outputs, runners

    cfg = Config()
    cfg.run.metadata = mysql_url.replace(f":{PASSWORD}@", ":not-the-password@")
    with pytest.raises(
        UserError, match=r"cannot open MySQL ML Metadata at 127\.0\.0\.1:\d+/eventpipe_mlmd"
    ) as e:
        outputs.last_run_id(runners.metadata_connection(cfg))
    assert "not-the-password" not in str(e.value)


def test_unreachable_mysql_store_is_one_clear_error(tmp_path):
    from pipeline import outputs, runners

    cfg = Config()
    cfg.run.metadata = f"mysql://root:s3cret@127.0.0.1:{_free_port()}/nothing_here"
    with pytest.raises(
        UserError, match=r"cannot open MySQL ML Metadata at 127\.0\.0\.1:\d+/nothing_here"
    ) as e:
        outputs.last_run_id(runners.metadata_connection(cfg))
    assert "s3cret" not in str(e.value)

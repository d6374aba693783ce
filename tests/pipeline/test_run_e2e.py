"""`eventpipe run` end to end on small generated data: every stage, every artifact, the cache."""

import glob
import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from repo import REPO

from contract.config import Config
from fixtures import chaos
from fixtures.tiny_run import TINY, TINY_EVENTS, TINY_TRAINING
from simulator.writer import generate

pytestmark = pytest.mark.e2e

# The gates refuse models this small: test_the_production_gates_refuse_... checks that, end to end.
# The other runs here relax the gates (TINY) so that push and serving run too.


def versions(model_dir):
    """Version directories as TF Serving sees them (all-digit names; pushes stage in hidden dirs)."""
    return sorted(d for d in os.listdir(model_dir) if d.isdigit())


def eventpipe(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    generate(str(root / "events"), TINY_EVENTS, workers=1, progress=False, preview=False)
    args = ["run", "--data", str(root / "events"), "--workdir", str(root / "work"), *TINY]
    result = eventpipe(*args, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root, args, result


def test_run_writes_every_section_and_artifact(first_run):
    root, _, result = first_run
    report = json.loads((root / "work" / "report.json").read_text())
    ev = report["events"]
    assert ev["read"] == ev["accepted"] + ev["rejected"] == 160

    teacher, student, tflite = report["teacher"], report["student"], report["tflite"]
    assert teacher["strategy"] == "hybrid" and teacher["mesh"] == {"devices": 4}  # the 1-D layout by default
    assert 0 <= teacher["accuracy"] <= 1
    assert os.path.exists(teacher["plots"]["training_curve"])
    assert student["pruned"]["params"] < teacher["params"]
    assert tflite["int8"]["bytes"]["raw"] < student["float"]["bytes"]["raw"]
    for plot in report["plots"].values():
        assert os.path.exists(plot)

    assert report["release"]["blessed"] is True, report["release"]["problems"]
    assert report["release"]["failures"] == []
    assert report["push"]["pushed"]
    serving = root / "work" / "serving" / "eventpipe"
    assert versions(serving) == ["1"] and os.path.exists(serving / "1" / "saved_model.pb")
    assert os.path.exists(root / "work" / "serving" / "eventpipe-teacher" / "1" / "saved_model.pb")
    mobile = root / "work" / "mobile" / "eventpipe" / "1"
    release = json.loads((mobile / "release.json").read_text())
    assert os.path.exists(mobile / "model.tflite") and release["labels"] == ["empty", "person", "vehicle"]

    check = report["serving_check"]
    assert check["ok"] and check["predicted"] in ("empty", "person", "vehicle")
    assert "served" in result.stdout and "report" in result.stdout
    assert_next_steps_work(result.stdout, root)

    # A line as each component starts and ends, with its headline; piped output: no bar redraws.
    lines = result.stdout.splitlines()
    ev = report["events"]
    assert any(re.search(r"EventExampleGen +started$", line) for line in lines)
    assert any(re.search(rf"EventExampleGen +done in [\d.]+ s  read {ev['read']}, "
                         rf"accepted {ev['accepted']}", line)
               for line in lines)  # fmt: skip
    for node in (
        "TeacherTrainer",
        "Distiller",
        "LiteConverter",
        "ServingValidator",
        "ReleaseGate",
        "EventPusher",
    ):
        assert any(re.search(rf"{node} +done in [\d.]+ s  \S", line) for line in lines), (node, result.stdout)
    assert any(
        re.search(r"EventPusher +done in .*pushed student v1, teacher v1, mobile v1", line) for line in lines
    )
    assert "\r" not in result.stdout and "\r" not in result.stderr


def available(status_url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(status_url, timeout=10) as response:
            return '"AVAILABLE"' in response.read().decode()
    except urllib.error.URLError:  # HTTPError (not loaded yet) included
        return False


def assert_next_steps_work(stdout, root):
    """The printed serve line serves the pushed student, and its request file gets an answer."""
    import shlex
    import socket
    import time
    import urllib.request

    steps = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^next +(serve it|query it|curves): +(.+)$", stdout, re.M)
    }
    assert set(steps) == {"serve it", "query it", "curves"}, stdout[-2000:]
    curves = shlex.split(steps["curves"])
    assert curves[-2] == "--logdir_spec", steps["curves"]  # the teacher's and the students' runs
    runs = dict(item.split(":", 1) for item in curves[-1].split(","))
    assert set(runs) == {"teacher", "student"} and all(os.path.isdir(d) for d in runs.values())
    assert set(os.listdir(runs["student"])) >= {"dense", "pruning", "qat", "scratch"}
    request_file = shlex.split(steps["query it"])[-1].lstrip("@")
    port_file = root / "next_port.json"
    # The printed line as is, on free ports (later flags win; --rest_api_port 0 would turn REST
    # off, as in TF Serving, so a free one is picked here).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = str(probe.getsockname()[1])
    serve = [
        *shlex.split(steps["serve it"]),
        "--rest_api_port",
        free,
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    server = subprocess.Popen(serve, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not port_file.exists() and time.time() < deadline and server.poll() is None:
            time.sleep(0.5)
        assert port_file.exists(), (
            server.stderr.read() if server.poll() is not None else "no port file in 120 s"
        )
        port = json.loads(port_file.read_text())["rest_port"]
        model = re.search(r"/v1/models/([^:]+):predict", steps["query it"]).group(1)
        while time.time() < deadline and not available(f"http://127.0.0.1:{port}/v1/models/{model}"):
            time.sleep(0.5)
        with open(request_file, "rb") as f:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/{model}:predict", data=f.read()
            )
        with urllib.request.urlopen(request, timeout=60) as response:
            prediction = json.loads(response.read())["predictions"][0]
        assert prediction["class_name"] in ("empty", "person", "vehicle")
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_rerun_with_unchanged_inputs_is_served_from_the_mlmd_cache(first_run):
    root, args, _ = first_run
    result = eventpipe(*args, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    from pipeline import outputs, runners

    cfg = Config()
    cfg.run.workdir = str(root / "work")
    connection = runners.metadata_connection(cfg)
    for node in ("EventExampleGen", "StatisticsGen", "TeacherTrainer", "Distiller", "LiteConverter"):
        assert outputs.execution_count(connection, node) == {"COMPLETE": 1, "CACHED": 1}, node
    # The student is now judged against itself (the last blessed one) and blessed again, but the
    # same model artifact is not pushed twice.
    assert outputs.execution_count(connection, "StudentEvaluator") == {"COMPLETE": 2}
    assert versions(root / "work" / "serving" / "eventpipe") == ["1"]
    report = json.loads((root / "work" / "report.json").read_text())
    assert report["push"]["already_pushed"] and report["serving_check"]["ok"]

    result = eventpipe(*args, "--no-cache", "--through", "validate", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert outputs.execution_count(connection, "EventExampleGen") == {"COMPLETE": 2, "CACHED": 1}
    assert glob.glob(str(root / "work" / "pipeline" / "EventExampleGen" / "examples" / "*"))


def test_the_production_gates_refuse_these_tiny_models_and_say_why(first_run, tmp_path):
    """The first run again with the production gates: training is served from the cache (only the
    gates changed), the release is refused with every broken threshold named, nothing is pushed."""
    root, _, _ = first_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    result = eventpipe(
        "run", "--data", str(root / "events"), "--workdir", str(work), *TINY_TRAINING, cwd=root
    )
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    release = report["release"]
    assert release["blessed"] is False and release["failures"], release
    gates = Config().gates
    floors = [f for f in release["failures"] if f["kind"] in ("floor", "class_floor")]
    assert floors, release["failures"]
    for failure in floors:
        # What TFMA recorded, named: model, metric, slice, value and threshold.
        assert (
            failure["model"] in ("teacher", "student") and failure["metric"] == "sparse_categorical_accuracy"
        )
        assert (
            failure["threshold"] in (gates.min_accuracy, gates.min_class_accuracy)
            and failure["value"] < failure["threshold"]
        )
        assert failure["slice"] in failure["message"] and "(TFMA)" in failure["message"]
    assert "release gate" in result.stdout + result.stderr and "NOT blessed" in result.stdout
    assert report["push"]["pushed"] is False
    assert versions(work / "serving" / "eventpipe") == ["1"]  # only what the relaxed first run pushed
    page = (work / "report.html").read_text()  # written on the refused path too, with the reasons
    assert f"report     {work / 'report.html'}" in result.stdout
    assert "Release: NOT blessed" in page and all(html.escape(p) in page for p in release["problems"])


def test_multiworker_teacher_runs_as_local_worker_processes_from_the_pipeline(first_run):
    root, _, _ = first_run
    work = root / "work-multiworker"
    args = ["run", "--data", str(root / "events"), "--workdir", str(work), *TINY,
            "--through", "train", "--strategy", "multiworker", "--train-workers", "2"]  # fmt: skip
    result = eventpipe(*args, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "multiworker (workers=2, replicas=2)" in result.stdout

    teacher = json.loads((work / "report.json").read_text())["teacher"]
    assert teacher["strategy"] == "multiworker" and teacher["mesh"] == {"workers": 2, "replicas": 2}
    chief = json.loads(open(teacher["train_report"]).read())
    run_dir = os.path.dirname(teacher["train_report"])
    worker = json.loads((open(os.path.join(run_dir, "workers", "worker-1", "train_report.json"))).read())
    assert chief["is_chief"] and not worker["is_chief"] and worker["worker_index"] == 1
    assert len(chief["losses"]) == 40 and chief["losses"] == pytest.approx(worker["losses"], rel=1e-6)
    # Only the chief exports; the pipeline's evaluator scored that model.
    assert os.path.exists(os.path.join(teacher["model"], "saved_model.pb")) and chief["export_dir"]
    assert worker["export_dir"] is None and 0 <= teacher["accuracy"] <= 1


def _teacher_processes(work) -> list[int]:
    """PIDs of `eventpipe train` children training into ``work``."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"pipeline.cli" not in cmdline[:-1] or cmdline[cmdline.index(b"pipeline.cli") + 1] != b"train":
            continue  # not a teacher (`python -m pipeline.cli train ...`)
        if any(str(work).encode() in part for part in cmdline):
            pids.append(int(entry))
    return pids


def test_a_run_killed_during_teacher_training_resumes_from_its_checkpoint(first_run):
    """SIGKILL `eventpipe run` mid-teacher: the teacher dies with it, and the next run takes
    ingest from the ML Metadata cache and resumes the teacher from the last checkpoint."""
    import signal
    import time

    root, _, _ = first_run
    work = root / "work-killed"
    args = ["run", "--data", str(root / "events"), "--workdir", str(work), *TINY, "--through", "train",
            "--set", "teacher.steps=400", "--set", "teacher.checkpoint_every=20"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=root,
                            env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, checkpointed = time.time() + 600, 0
    while time.time() < deadline and proc.poll() is None and not checkpointed:
        for state in glob.glob(
            str(work / "pipeline" / "TeacherTrainer" / "model_run" / "*" / "train_state.json")
        ):
            run_dir = os.path.dirname(state)
            if glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.index")):
                checkpointed = json.loads(open(state).read())["step"]
        time.sleep(0.2)
    assert checkpointed and proc.poll() is None, "the teacher never checkpointed while the run was alive"
    teachers = _teacher_processes(work)
    assert teachers, "no teacher process found"
    os.kill(proc.pid, signal.SIGKILL)  # the pipeline process only: its teacher must not outlive it
    proc.wait()
    for _ in range(100):
        if not _teacher_processes(work):
            break
        time.sleep(0.1)
    assert not _teacher_processes(work), "the teacher kept training after its pipeline was killed"

    result = eventpipe(*args, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    from pipeline import outputs, runners

    cfg = Config()
    cfg.run.workdir = str(work)
    connection = runners.metadata_connection(cfg)
    assert outputs.execution_count(connection, "EventExampleGen") == {"COMPLETE": 1, "CACHED": 1}
    teacher = json.loads((work / "report.json").read_text())["teacher"]
    train = json.loads(open(teacher["train_report"]).read())
    assert train["resumed_from_step"] >= checkpointed >= 20 and train["steps"] == 400
    assert len(train["losses"]) == 400  # the losses before the kill came back from the state file
    assert f"resumed at step {train['resumed_from_step']}" in result.stdout  # its stage line says so


CHAOS_SEED, CHAOS_KILLS = 29, 3


def test_a_run_killed_at_seeded_moments_loses_nothing(first_run):
    """SIGKILL `eventpipe run` (its process group, or the pipeline process alone) at seeded moments
    inside the stages that take a while, resuming in one workdir; `make bench-chaos` covers every
    stage. After each kill ML Metadata opens, nothing the run started lives on and no half release
    is visible (also watched while the runs are alive); each rerun reuses what finished, and the
    last run is blessed with the clean run's ingest counts."""
    root, _, clean = first_run
    durations = chaos.stage_durations(clean.stdout)
    slow = [node for node, seconds in durations.items() if seconds >= 1.0]
    moments = chaos.plan(durations, CHAOS_KILLS, CHAOS_SEED, stages=slow)
    work, events = root / "work-chaos", root / "events-chaos"
    shutil.copytree(root / "events", events)
    bad = chaos.add_bad_events(str(events))
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "--data",
        str(events),
        "--workdir",
        str(work),
        *TINY,
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    runs = []
    with chaos.ReleaseWatcher(str(work)) as watcher:
        for moment in moments:
            run = chaos.run_once(cmd, str(root), env, str(root / "chaos.log"), timeout=900, moment=moment,
                                 duration=durations[moment.stage], workdir=str(work))  # fmt: skip
            seen = f"{moment} -> killed in {run.killed_in or '-'} at {run.killed_at_s}"
            assert run.killed_at_s is not None, (
                f"{seen}: the run ended first ({run.returncode})\n{run.stdout[-2000:]}"
            )
            assert run.strays == [], f"{seen}: processes outlived the kill: {run.strays}"
            assert chaos.metadata_problems(str(work)) == [], seen
            assert chaos.release_problems(str(work)) == [], seen
            assert chaos.reuse_problems(runs, run) == [], f"{seen}\n{run.stdout}"
            runs.append(run)
        final = chaos.run_once(cmd, str(root), env, str(root / "chaos.log"), timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + (root / "chaos.log").read_text()[-3000:]
    assert chaos.reuse_problems(runs, final) == [], final.stdout
    assert watcher.looks > 0 and watcher.problems == []
    assert chaos.release_problems(str(work)) == []
    for killed, after in zip(runs, [*runs[1:], final], strict=True):
        assert chaos.resume_problems(killed, after) == [], after.stdout
    report = json.loads((work / "report.json").read_text())
    assert report["release"]["blessed"] is True and report["push"]["pushed"] is True
    # The clean run read the same events without the bad ones.
    clean_events = json.loads((root / "work" / "report.json").read_text())["events"]
    got = report["events"]
    expected = (clean_events["read"] + bad, clean_events["accepted"], bad)
    assert (got["read"], got["accepted"], got["rejected"]) == expected
    print("chaos:", "; ".join(f"{r.moment.stage}+{r.moment.fraction:.0%} {r.moment.mode} "
                              f"-> {r.killed_in or '-'}"
                              for r in runs), f"final run {final.seconds:.0f} s")  # fmt: skip


# Appended to a copy of report.html: records load errors (scripts and failed resources) from the
# start, and after load writes what every <img> looks like into the DOM that --dump-dom prints.
_PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", function (ev) {
  var t = ev.target;
  window.__errors.push(t && t.tagName ? "failed " + t.tagName + " " + String(t.src || t.href).slice(0, 80)
                                      : "error " + ev.message);
}, true);</script>"""
_PROBE_TAIL = """<script>window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var bad = images.filter(function (i) {
    return !(i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0 &&
             i.getBoundingClientRect().height > 0);
  }).map(function (i) { return i.alt; });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images.length, bad: bad, errors: window.__errors});
  document.body.appendChild(out);
});</script>"""


def chromium(*args, profile):
    """Debian's headless chromium (installed by .ci/run); a missing browser fails the test."""
    browser = shutil.which("chromium")
    assert browser, "chromium is not installed (Debian package `chromium`; .ci/run installs it)"
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_report_html_loads_in_a_headless_browser_with_every_image_rendered(first_run, tmp_path):
    import re

    root, _, result = first_run
    work = root / "work"
    page = work / "report.html"
    report = json.loads((work / "report.json").read_text())
    assert f"report     {page}" in result.stdout
    text = page.read_text()
    # The headline numbers are report.json's.
    assert "Release: BLESSED" in text
    assert f"<td>{report['events']['read']}</td>" in text
    for variant in (
        report["teacher"],
        report["student"]["scratch"],
        report["student"]["float"],
        report["tflite"]["int8"],
    ):
        assert f"<td>{variant['accuracy']:.3f}</td>" in text
    assert 'src="http' not in text and "src='http" not in text  # self-contained: images are data: URIs
    # Best-frame examples: eval events with their frames, the chosen frame marked.
    examples = report["best_frame_examples"]["events"]
    assert examples and all(ev["event_id"] in text for ev in examples)
    assert text.count('class="frame chosen') == len(examples)
    assert text.count("data:image/png;base64,") >= 3 + 2 * len(examples)  # 3 plots, >= 2 frames per event

    probed = tmp_path / "probed.html"
    probed.write_text(
        text.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_TAIL + "</body>", 1)
    )
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, "the probe never ran: " + dom.stdout[-1000:] + dom.stderr[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["errors"] == [] and probe["bad"] == [], probe
    assert probe["images"] == text.count("<img ")

    shot = work / "report.png"
    taken = chromium(
        f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri(), profile=tmp_path / "profile"
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").resize((128, 400)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"

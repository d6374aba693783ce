"""Teacher training: every strategy computes the same steps; FC sharding; multi-worker; resume; export.

Each mesh configuration needs its own process (logical devices are set once per process),
so one module fixture starts every run as a real ``eventpipe train`` process at once, the
reference ``single`` run through the TFX module file's ``run_fn`` (which exports), and a
run that is killed with SIGKILL and started again. The tests then read the reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from repo import REPO

from contract import layout
from contract.config import Config
from contract.errors import UserError
from fixtures.teacher_data import write_examples

pytestmark = pytest.mark.e2e

STEPS = 12
TINY = {
    "teacher": {
        "conv_filters": [4, 8],
        "fc_units": [64, 64],
        "attention_heads": 2,
        "dropout": 0.0,
        "global_batch_size": 8,
        "reference_batch_size": 4,  # linear scaling doubles the rate ...
        "warmup_steps": 4,  # ... reached after a 4-step warm-up, held to half the run
        "decay_start": 0.5,
        "base_learning_rate": 0.003,
        "steps": STEPS,
        "checkpoint_every": 4,
        "logical_devices": 4,
    }
}
TIMEOUT = 900


def _train(config: str, data: str, workdir: str, *flags: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--config", config, "--data", data,
           "--workdir", workdir, "--quiet", *flags]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


def _report(workdir: str) -> dict:
    with open(os.path.join(workdir, "train_report.json"), encoding="utf-8") as f:
        return json.load(f)


def _latest_checkpoint_step(workdir: str) -> int:
    with open(os.path.join(workdir, "checkpoints", "checkpoint"), encoding="utf-8") as f:
        first = f.readline()  # model_checkpoint_path: "ckpt-4"
    return int(first.strip().rstrip('"').rsplit("-", 1)[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("teacher"))
    data = os.path.join(root, "examples")
    spec = write_examples(data, train=96, eval=32, frames=3, size=8, seed=3)
    config = os.path.join(root, "tiny.json")
    with open(config, "w", encoding="utf-8") as f:
        json.dump(TINY, f)
    w = {name: os.path.join(root, name) for name in
         ("mirrored", "hybrid_2d", "hybrid_1d", "multiworker", "killed", "bad_mesh", "single", "bf16",
          "clients_1d", "clients_2d")}  # fmt: skip
    clients = ("--strategy", "hybrid", "--clients", "2", "--logical-devices", "2", "--no-export")

    procs = {
        "mirrored": _train(config, data, w["mirrored"], "--strategy", "mirrored", "--no-export"),
        "hybrid_2d": _train(
            config,
            data,
            w["hybrid_2d"],
            "--strategy",
            "hybrid",
            "--mesh",
            "batch=2,model=2",
            "--fc-layout",
            "2d",
            "--no-export",
        ),  # fmt: skip
        "hybrid_1d": _train(
            config, data, w["hybrid_1d"], "--strategy", "hybrid", "--fc-layout", "1d", "--no-export"
        ),
        "bad_mesh": _train(
            config, data, w["bad_mesh"], "--strategy", "hybrid", "--mesh", "batch=4,model=2", "--no-export"
        ),  # fmt: skip
        "bf16": _train(
            config, data, w["bf16"], "--strategy", "single", "--mixed-precision", "bf16", "--no-export"
        ),
        "killed": _train(
            config,
            data,
            w["killed"],
            "--strategy",
            "single",
            "--steps",
            "400",
            "--checkpoint-every",
            "2",
            "--no-export",
        ),  # fmt: skip
        # Multi-client DTensor: `eventpipe train` starts 2 clients through the launcher, in both
        # FC layouts (1d: each client holds different shards of every FC kernel).
        "clients_2d": _train(config, data, w["clients_2d"], *clients, "--fc-layout", "2d"),
        "clients_1d": _train(config, data, w["clients_1d"], *clients, "--fc-layout", "1d"),
    }
    from trainer.parallel.launch import local_cluster, tf_config

    cluster = local_cluster(2)  # the addresses and TF_CONFIGs the pipeline's launcher uses
    for i in range(2):
        procs[f"worker{i}"] = _train(config, data, w["multiworker"], "--strategy", "multiworker",
                                     "--logical-devices", "1", "--no-export",
                                     env={"TF_CONFIG": tf_config(cluster, i)})  # fmt: skip

    # Kill the long run with SIGKILL as soon as it has written a checkpoint.
    state = os.path.join(w["killed"], "train_state.json")
    index = os.path.join(w["killed"], "checkpoints", "checkpoint")
    deadline = time.time() + TIMEOUT
    while not os.path.exists(index) and procs["killed"].poll() is None and time.time() < deadline:
        time.sleep(0.02)
    procs["killed"].send_signal(signal.SIGKILL)
    killed_code, killed_out = _finish(procs.pop("killed"))
    with open(state, encoding="utf-8") as f:
        killed_state = json.load(f)
    killed_at = _latest_checkpoint_step(w["killed"])
    resumed = _train(config, data, w["killed"], "--strategy", "single", "--no-export")

    # The reference single run goes through the TFX Trainer module file, which exports.
    from tfx.components.trainer.fn_args_utils import FnArgs

    from trainer.teacher.entry import run_fn

    cfg = Config.from_dict(TINY)
    cfg.teacher.strategy = "single"
    serving_dir = os.path.join(root, "serving_model")
    run_fn(
        FnArgs(
            train_files=[os.path.join(layout.split_dir(data, layout.TRAIN), "*")],
            eval_files=[os.path.join(layout.split_dir(data, layout.EVAL), "*")],
            serving_model_dir=serving_dir,
            model_run_dir=w["single"],
            custom_config={"config": cfg.to_json()},
        )
    )
    outputs = {name: _finish(p) for name, p in procs.items()}
    outputs["resumed"] = _finish(resumed)
    for name, (code, out) in outputs.items():
        if name != "bad_mesh":
            assert code == 0, f"{name} failed:\n{out[-4000:]}"
    return {
        "root": root,
        "spec": spec,
        "data": data,
        "serving_dir": serving_dir,
        "outputs": outputs,
        "killed": {"code": killed_code, "out": killed_out, "state": killed_state, "at": killed_at},
        "reports": {
            "single": _report(w["single"]),
            "mirrored": _report(w["mirrored"]),
            "hybrid_2d": _report(w["hybrid_2d"]),
            "hybrid_1d": _report(w["hybrid_1d"]),
            "worker0": _report(w["multiworker"]),
            "worker1": _report(os.path.join(w["multiworker"], "workers", "worker-1")),
            "resumed": _report(w["killed"]),
            "bf16": _report(w["bf16"]),
            **{
                f"{name}_{who}": _report(os.path.join(w[name], *sub))
                for name in ("clients_1d", "clients_2d")
                for who, sub in (("chief", ()), ("client1", ("workers", "worker-1")))
            },  # fmt: skip
        },
        "workdirs": w,
    }


@pytest.mark.parametrize("strategy", ["mirrored", "hybrid_2d", "hybrid_1d", "worker0", "clients_1d_chief",
                                      "clients_2d_chief"])  # fmt: skip
def test_strategy_losses_match_single(runs, strategy):
    single = np.array(runs["reports"]["single"]["losses"])
    other = np.array(runs["reports"][strategy]["losses"])
    assert len(single) == len(other) == STEPS
    np.testing.assert_allclose(other, single, rtol=2e-5, atol=2e-6)
    assert not np.allclose(single, single[0]), "training should change the loss"


def test_multiworker_workers_agree(runs):
    w0, w1 = runs["reports"]["worker0"], runs["reports"]["worker1"]
    assert w0["mesh"] == w1["mesh"] == {"workers": 2, "replicas": 2}
    assert w0["is_chief"] and not w1["is_chief"]
    np.testing.assert_allclose(w0["losses"], w1["losses"], rtol=1e-6)
    assert w0["eval"]["accuracy"] == w1["eval"]["accuracy"]


def _variables(report):
    return {v["name"].split(":")[0]: v for v in report["variables"]}


def test_hybrid_2d_shards_fc_kernels_over_model_axis(runs):
    report = runs["reports"]["hybrid_2d"]
    assert report["mesh"] == {"batch": 2, "model": 2}
    v = _variables(report)
    devices = {f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(4)}
    for name in ("fc_0/kernel", "fc_1/kernel"):
        assert v[name]["layout"] == ["unsharded", "model"]
        rows = v[name]["shape"][0]
        assert [s["shape"] for s in v[name]["shards"]] == [[rows, 32]] * 4  # 64 units / model=2
        assert {s["device"] for s in v[name]["shards"]} == devices
    assert v["fc_0/bias"]["layout"] == ["model"]
    assert v["logits/kernel"]["layout"] == ["model", "unsharded"]
    assert [s["shape"] for s in v["logits/kernel"]["shards"]] == [[32, 4]] * 4
    convs = [n for n in v if n.startswith("conv") and n.endswith("kernel")]
    assert convs
    for name in convs + ["attention_self/query/kernel"]:
        assert set(v[name]["layout"]) == {"unsharded"}
        assert all(s["shape"] == v[name]["shape"] for s in v[name]["shards"])
        assert len(v[name]["shards"]) == 4


def test_hybrid_1d_shards_fc_over_all_devices(runs):
    report = runs["reports"]["hybrid_1d"]
    assert report["mesh"] == {"devices": 4}
    v = _variables(report)
    assert v["fc_1/kernel"]["layout"] == ["unsharded", "devices"]
    assert [s["shape"] for s in v["fc_1/kernel"]["shards"]] == [[64, 16]] * 4
    assert set(v["conv_stem/kernel"]["layout"]) == {"unsharded"}


@pytest.mark.parametrize(
    ("layout_name", "mesh", "units"), [("1d", {"devices": 4}, 16), ("2d", {"batch": 2, "model": 2}, 32)]
)
def test_dtensor_clients_form_one_mesh_with_fc_shards_on_both(runs, layout_name, mesh, units):
    """2 clients x 2 logical devices: one mesh; each client holds the FC shards of its own devices."""
    chief, other = (
        runs["reports"][f"clients_{layout_name}_chief"],
        runs["reports"][f"clients_{layout_name}_client1"],
    )
    assert chief["mesh"] == other["mesh"] == {"clients": 2, **mesh}
    assert chief["is_chief"] and not other["is_chief"] and other["worker_index"] == 1
    np.testing.assert_allclose(other["losses"], chief["losses"], rtol=1e-6)
    for task, report in ((0, chief), (1, other)):
        v = _variables(report)
        for name in ("fc_0/kernel", "fc_1/kernel"):
            assert v[name]["layout"] == ["unsharded", "devices" if layout_name == "1d" else "model"]
            rows = v[name]["shape"][0]
            assert [s["shape"] for s in v[name]["shards"]] == [[rows, units]] * 2  # 64 units / 4 or / model=2
            assert [s["device"] for s in v[name]["shards"]] == [
                f"/job:worker/replica:0/task:{task}/device:CPU:{i}" for i in range(2)
            ]


def test_bad_mesh_is_one_line_user_error(runs):
    code, out = runs["outputs"]["bad_mesh"]
    assert code == 2
    assert "eventpipe train: error: --mesh batch=4,model=2 needs 8 devices" in out
    assert "Traceback" not in out


def test_bf16_mixed_precision_trains_close_to_float32(runs):
    bf16, single = runs["reports"]["bf16"], runs["reports"]["single"]
    assert bf16["mixed_precision"] == "bf16"
    # bfloat16 keeps ~3 significant digits: the same start and course, not the same bits.
    np.testing.assert_allclose(bf16["losses"][:3], single["losses"][:3], rtol=3e-2)
    assert np.mean(bf16["losses"]) == pytest.approx(np.mean(single["losses"]), rel=5e-2)
    assert not np.allclose(bf16["losses"], single["losses"], rtol=1e-6, atol=0)


def test_killed_run_resumes_from_its_checkpoint(runs):
    killed, resumed = runs["killed"], runs["reports"]["resumed"]
    assert killed["code"] == -signal.SIGKILL
    at = killed["at"]
    assert 0 < at < STEPS, f"kill landed at step {at}"
    assert resumed["resumed_from_step"] == resumed["start_step"] == at
    single = np.array(runs["reports"]["single"]["losses"])
    # Same optimizer state and data position: the resumed steps equal the uninterrupted run's.
    np.testing.assert_allclose(resumed["losses"], single, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(killed["state"]["losses"][:at], single[:at], rtol=1e-6)
    assert "resumed at step" in runs["outputs"]["resumed"][1]


def test_report_schedule_plot_and_tensorboard(runs):
    report = runs["reports"]["single"]
    lrs = report["learning_rates"]
    assert report["learning_rate"]["scaled"] == pytest.approx(0.006)
    # Warm-up from the reference rate to the scaled one, held to half the run, then cosine decay to 5% of it.
    assert lrs[0] == pytest.approx(0.003) and lrs[2] == pytest.approx(0.0045)
    assert lrs[4:7] == pytest.approx([0.006] * 3)
    assert all(a > b for a, b in zip(lrs[6:], lrs[7:], strict=False))
    assert lrs[-1] == pytest.approx(0.006 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 5 / 6))))
    assert 0.0 <= report["final_eval_accuracy"] <= 1.0 and report["eval"]["events"] == 32
    # One epoch is 96 / 8 = 12 steps: the eval loss is checked once, and those weights are exported.
    assert [e["step"] for e in report["eval_history"]] == [12] and report["best"]["step"] == 12
    assert report["eval"]["loss"] == pytest.approx(report["best"]["loss"], rel=1e-5)
    assert report["memory_estimate"]["total_bytes"] < report["memory_estimate"]["budget_bytes"]
    params = report["parameters"]
    assert params["fully_connected"] > params["other"]
    assert os.path.getsize(report["plots"]["training_curve"]) > 1000
    tensorboard = os.path.join(runs["workdirs"]["single"], "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tensorboard))


def test_exported_signature_answers_png_bytes(runs):
    import tensorflow as tf

    spec = runs["spec"]
    export = runs["serving_dir"]
    with open(os.path.join(export, "assets.extra", layout.SPEC_FILE), encoding="utf-8") as f:
        assert json.load(f) == spec.to_dict()
    files = tf.io.gfile.glob(os.path.join(layout.split_dir(runs["data"], layout.EVAL), "*"))
    serialized = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(5)))
    png = layout.encoded_frames(tf.io.parse_example(serialized, layout.feature_spec()), spec)
    assert png.numpy()[0, 0].startswith(b"\x89PNG")

    loaded = tf.saved_model.load(export)
    out = loaded.signatures["serving_default"](frames=png)
    assert out[layout.OUT_PROBABILITIES].shape == (5, spec.num_classes)
    np.testing.assert_allclose(out[layout.OUT_PROBABILITIES].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert out[layout.OUT_CLASS_ID].dtype == tf.int64 and out[layout.OUT_BEST_FRAME].dtype == tf.int64
    assert set(out[layout.OUT_BEST_FRAME].numpy()) <= set(range(spec.frames))
    names = [spec.classes[i] for i in out[layout.OUT_CLASS_ID].numpy()]
    assert [n.decode() for n in out[layout.OUT_CLASS].numpy()] == names
    decoded = loaded.signatures[layout.DECODED_SIGNATURE](frames=layout.decode_frames(png, spec))
    np.testing.assert_allclose(decoded[layout.OUT_LOGITS].numpy(), out[layout.OUT_LOGITS].numpy(), atol=1e-5)


def test_local_workers_report_a_worker_error_as_one_user_error(tmp_path):
    from trainer.parallel import launch

    cfg = Config.from_dict(TINY)
    cfg.teacher.strategy = "multiworker"
    cfg.teacher.workers = 2
    with pytest.raises(UserError, match=r"worker \d: --data .*not-examples is not a directory"):
        launch.train(cfg, str(tmp_path / "not-examples"), str(tmp_path / "work"))
    cfg.teacher.global_batch_size = 5
    with pytest.raises(UserError, match="multiple of the 2 multiworker workers"):
        launch.train(cfg, str(tmp_path / "not-examples"), str(tmp_path / "work"))


def _child_pid(environ_fragment: bytes) -> int | None:
    """A child of this process whose environment contains ``environ_fragment`` (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and environ_fragment in environ:
            return int(entry)
    return None


def test_a_lost_worker_stops_the_others_instead_of_hanging(runs, tmp_path):
    import threading

    from trainer.parallel import launch

    cfg = Config.from_dict(TINY)
    cfg.teacher.strategy, cfg.teacher.workers, cfg.teacher.steps = "multiworker", 2, 100_000
    outcome: dict = {}

    def train() -> None:
        try:
            launch.train(cfg, runs["data"], str(tmp_path / "work"), log=lambda line: None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    # Kill worker 1 once both workers are training (worker 0 has written its first checkpoint).
    deadline = time.time() + TIMEOUT
    while not os.path.exists(tmp_path / "work" / "checkpoints" / "checkpoint") and time.time() < deadline:
        time.sleep(0.1)
    victim = _child_pid(b'"task": {"type": "worker", "index": 1}')
    assert victim is not None, "worker 1 not found"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive(), "the launcher hung after losing a worker"
    assert isinstance(outcome.get("error"), RuntimeError)
    assert "worker 1 was killed by signal 9" in str(outcome["error"])
    assert _child_pid(b'"task": {"type": "worker", "index": 0}') is None, "worker 0 was left running"


def test_child_progress_reaches_stderr_without_native_log_noise(capsys):
    from trainer.parallel.launch import _Child

    script = (
        "import sys; w = sys.stderr.write; w('\\rteacher: 1/2'); sys.stderr.flush(); "
        "w('E0000 00:00:1795353203.219221   14985 op_level_cost_estimator.cc:1121] "
        "Incompatible Matrix dimensions\\n'); "
        "w('\\rteacher: 2/2\\n'); print('teacher done')"
    )
    logged = []
    child = _Child("teacher", [sys.executable, "-c", script], {}, logged.append, prefix="", progress=True)
    child.raise_for_failure()
    err = capsys.readouterr().err
    assert "teacher: 1/2" in err and "teacher: 2/2\n" in err and "teacher done" in err
    assert "E0000" not in err and "Incompatible" not in err
    # The log keeps every line, a redrawn bar as its last state.
    assert any("Incompatible Matrix dimensions" in line for line in logged) and "teacher done" in logged
    assert "teacher: 2/2" in logged

"""The same create_pipeline(...) compiles offline to a Kubeflow Pipelines v2 spec."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from repo import REPO

from contract.config import Config
from pipeline.pipeline_def import create_pipeline

pytestmark = pytest.mark.e2e


def test_compile_kubeflow_spec_has_every_component_and_parameter(tmp_path):
    out = tmp_path / "spec.json"
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "compile-kubeflow", "--data", "gs://bucket/events",
         "--pipeline-root", "gs://bucket/root", "--workdir", str(tmp_path / "w"), "--output", str(out),
         "--image", "registry.example/eventpipe:7", "--max-reject-rate", "0.07",
         "--gpus", "2", "--accelerator", "NVIDIA_TESLA_T4",
         "--set", 'kubeflow.resources={"Distiller": [8, 32]}'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    spec = json.loads(out.read_text())["pipelineSpec"]
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]

    cfg = Config()
    cfg.data.max_reject_rate = 0.07
    expected = create_pipeline(
        cfg, data_root="gs://bucket/events", pipeline_root="gs://bucket/root",
        metadata_connection_config=None, beam_pipeline_args=[],
        serving_base="gs://bucket/serving", mobile_base="gs://bucket/mobile",
    ).components  # fmt: skip
    # A Resolver compiles to one importer-like task per resolved channel; every other node to one task.
    resolvers = {c.id for c in expected if c.id == "LastBlessedStudent"}
    assert {c.id for c in expected} - resolvers == {t for t in tasks if not t.endswith("-resolver")}
    assert {t.split("-")[0] for t in tasks if t.endswith("-resolver")} == resolvers
    for c in expected:
        if c.id in resolvers:
            continue
        assert f"{c.id}_executor" in executors
        assert executors[f"{c.id}_executor"]["container"]["image"] == "registry.example/eventpipe:7"

    def constant(task, name):
        value = tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
        return next(iter(value.values()))

    assert constant("EventExampleGen", "input_base") == "gs://bucket/events"
    assert json.loads(constant("EventExampleGen", "data_config"))["max_reject_rate"] == 0.07
    assert json.loads(constant("IngestGate", "data_config"))["max_reject_rate"] == 0.07
    # Every component takes its config section one way, as JSON.
    assert json.loads(constant("ReleaseGate", "gates_config")) == dataclasses.asdict(cfg.gates)
    assert json.loads(constant("LiteConverter", "lite_config")) == dataclasses.asdict(cfg.lite)
    assert json.loads(constant("ServingValidator", "serving_config")) == dataclasses.asdict(cfg.serving)
    assert set(tasks["IngestGate"]["dependentTasks"]) == {"EventExampleGen", "ExampleValidator"}
    # Everything after the IngestGate runs only on its blessing (a Cond, KFP's trigger policy).
    before_gate = {"EventExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "IngestGate"}
    for task, spec_ in tasks.items():
        if task in before_gate or task.endswith("-resolver"):
            assert "triggerPolicy" not in spec_, task
            continue
        condition = spec_["triggerPolicy"]["condition"]
        assert "_IngestGate.blessing" in condition and "['blessed'] == 1" in condition, task
    # Pushes go beside the pipeline root, by the same rule as a local run's <workdir>/serving.
    assert constant("EventPusher", "serving_base") == "gs://bucket/serving"
    assert constant("EventPusher", "mobile_base") == "gs://bucket/mobile"

    # Every container asks for CPU and memory (requests = limits); only the teacher gets GPUs.
    wanted = {**cfg.kubeflow.resources, "Distiller": [8, 32]}
    for c in expected:
        if c.id in resolvers:
            continue
        resources = executors[f"{c.id}_executor"]["container"]["resources"]
        cpu, memory = wanted[c.id]
        assert (resources["cpuRequest"], resources["cpuLimit"]) == (cpu, cpu), c.id
        assert (resources["memoryRequest"], resources["memoryLimit"]) == (memory, memory), c.id
        if c.id == "TeacherTrainer":
            assert resources["accelerator"] == {"type": "NVIDIA_TESLA_T4", "count": "2"}
        else:
            assert "accelerator" not in resources, c.id


def test_kubeflow_resources_are_checked_against_the_pipeline():
    from contract.errors import UserError
    from pipeline.runners import request_resources

    def pipeline():
        return create_pipeline(Config(), data_root="/d", pipeline_root="/r", metadata_connection_config=None,
                               beam_pipeline_args=[], serving_base="/s", mobile_base="/m")  # fmt: skip

    cfg = Config()
    cfg.set("kubeflow.resources", '{"Trainer": [4, 16]}')  # a typo for TeacherTrainer
    with pytest.raises(UserError, match="names Trainer, not components of the pipeline"):
        request_resources(pipeline(), cfg.kubeflow)
    cfg = Config()
    cfg.set("kubeflow.resources", '{"Distiller": [4, -1]}')
    with pytest.raises(UserError, match=r"resources\['Distiller'\] must be \[cpu cores, memory GB\]"):
        request_resources(pipeline(), cfg.kubeflow)


def test_trainers_cache_keys_hold_only_their_own_config_sections():
    def trainers(cfg):
        pipe = create_pipeline(cfg, data_root="/d", pipeline_root="/r", metadata_connection_config=None,
                               beam_pipeline_args=[], serving_base="/s", mobile_base="/m")  # fmt: skip
        return {
            c.id: c.exec_properties["custom_config"]
            for c in pipe.components
            if c.id in ("TeacherTrainer", "Distiller")
        }

    base, changed = Config(), Config()
    changed.student.temperature = 9.0
    changed.serving.rest_port = 9999
    a, b = trainers(base), trainers(changed)
    assert a["TeacherTrainer"] == b["TeacherTrainer"]  # a student/serving change does not retrain the teacher
    assert a["Distiller"] != b["Distiller"]
    assert set(json.loads(a["TeacherTrainer"])["config"]) == {"data", "teacher"}


def test_a_spec_no_cluster_could_run_is_refused_naming_each_problem(tmp_path):
    base = [sys.executable, "-m", "pipeline.cli", "compile-kubeflow", "--workdir", str(tmp_path / "w"),
            "--output", str(tmp_path / "spec.json")]  # fmt: skip
    r = subprocess.run([*base, "--data", "/x"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and not (tmp_path / "spec.json").exists()
    assert not (tmp_path / "w").exists()  # the workdir the refused command created is gone again
    for problem in ("--data /x is a path on this machine", "--pipeline-root",
                    "--image eventpipe:latest names no registry", "--allow-local"):  # fmt: skip
        assert problem in r.stderr, (problem, r.stderr[-2000:])
    help_text = subprocess.run(
        [*base[:4], "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    for ignored in ("--runner", "--beam-workers", "--metadata"):  # the cluster decides these
        assert not re.search(rf"^\s+{ignored}\b", help_text, re.M), ignored
    r = subprocess.run(
        [*base, "--data", "/x", "--allow-local"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and (tmp_path / "spec.json").exists(), r.stderr[-2000:]


def test_run_with_kubeflow_runner_compiles_into_the_workdir(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--runner", "kubeflow", "--data", "gs://bucket/events",
         "--pipeline-root", "gs://bucket/root", "--workdir", str(tmp_path / "w"),
         "--image", "registry.example/e:1",
         "--through", "train", "--strategy", "multiworker", "--train-workers", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    spec_path = tmp_path / "w" / "eventpipe_kfp.json"
    assert str(spec_path) in r.stdout
    tasks = json.loads(spec_path.read_text())["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "TeacherTrainer" in tasks and "Distiller" not in tasks and "EventPusher" not in tasks
    custom = tasks["TeacherTrainer"]["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]
    teacher = json.loads(next(iter(custom.values())))["config"]["teacher"]
    assert teacher["strategy"] == "multiworker" and teacher["workers"] == 4

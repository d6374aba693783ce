"""ServingValidator and EventPusher: a real TFX pipeline (LocalDagRunner, SQLite MLMD) that
validates a good student in the server and pushes it; broken models refused; unblessed
models never pushed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import productionize_fixtures as pf
import pytest
from repo import REPO
from tfx.types import standard_artifacts

from components.artifacts import LiteModels
from components.pusher import push
from components.pusher.component import EventPusher
from components.serving_validator.component import ServingValidator
from contract import files
from contract.config import ServingConfig, section_json
from contract.layout import EventSpec
from fixtures import serving_support as ss
from serving.warmup import read_warmup_file

pytestmark = pytest.mark.e2e


NAME = "events"
# The serving section the pipeline would pass: our model name, 6 validation events.
SERVING = ServingConfig(model_name=NAME, validation_events=6, warmup_events=3)


# -- inputs: a small Examples artifact, student/teacher Model artifacts, a LiteModels dir ----------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    examples = pf.write_examples(str(root / "examples"), ss.SPEC, {"train": 4, "eval": 6})
    student, teacher, lite = root / "student", root / "teacher", root / "lite"
    shutil.copytree(ss.saved_model(1), student / "Format-Serving")
    shutil.copytree(ss.saved_model(2), teacher / "Format-Serving")
    lite.mkdir()
    shutil.copy(ss.tflite_model(1, "int8"), lite / "model.tflite")
    shutil.copy(ss.tflite_model(1, "float16"), lite / "model_float16.tflite")
    report = {"tflite": {"int8": {"accuracy": 0.9, "bytes": {"raw": 1234},
                                  "agreement_with_student_float": 0.99},
                         "float16": {"accuracy": 0.91, "bytes": {"raw": 2345}},
                         "parity": {"agreement": 0.99, "passed": True}, "blessed": True}}  # fmt: skip
    (lite / "lite_report.json").write_text(json.dumps(report))
    return {"examples": examples, "student": str(student), "teacher": str(teacher), "lite": str(lite)}


def _artifact(cls, uri: str, artifact_id: int = 0, **props):
    a = cls()
    a.uri = uri
    if artifact_id:
        a.id = artifact_id
    for k, v in props.items():
        (a.set_int_custom_property if isinstance(v, int) else a.set_string_custom_property)(k, v)
    return a


def _run(component_cls, inputs: dict, outputs: dict, params: dict) -> None:
    """Run a component's executor as TFX does (Do with artifact dicts and exec properties)."""
    executor = component_cls.EXECUTOR_SPEC.executor_class()
    executor.Do({k: [v] for k, v in inputs.items()}, {k: [v] for k, v in outputs.items()}, params)


# -- models that break the serving contract in ways only serving validation catches -------------
def _contract_breaker(path: str, kind: str) -> str:
    """A SavedModel with the contract's signature but wrong answers: extra class column / random."""
    import tensorflow as tf

    spec = ss.SPEC
    classes = tf.constant(spec.classes)
    width = spec.num_classes + (1 if kind == "wrong_shape" else 0)

    class Breaker(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, spec.frames], tf.string, name="frames")])
        def serve(self, frames):
            batch = tf.shape(frames)[0]
            if kind == "random":
                logits = tf.random.normal([batch, width], stddev=3.0)
            else:
                logits = tf.tile(tf.range(width, dtype=tf.float32)[None], [batch, 1])
            probabilities = tf.nn.softmax(logits)
            class_id = tf.argmax(probabilities, axis=1)
            return {
                "probabilities": probabilities,
                "logits": logits,
                "class_id": class_id,
                "class_name": tf.gather(classes, tf.minimum(class_id, spec.num_classes - 1)),
                "best_frame": tf.zeros([batch], tf.int64),
            }

    module = Breaker()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    spec.save(os.path.join(path, "assets.extra"))
    return path


def _corrupted(path: str) -> str:
    """The good student with its variables file overwritten by noise (same size)."""
    shutil.copytree(ss.saved_model(1), path)
    data = os.path.join(path, "variables", "variables.data-00000-of-00001")
    size = os.path.getsize(data)
    with open(data, "wb") as f:
        f.write(os.urandom(size))
    return path


# -- the pipeline ---------------------------------------------------------------------------
def test_pipeline_validates_in_the_server_then_pushes_everything(inputs, tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx
    from tfx.dsl.placeholder import placeholder as ph

    serving_base, mobile_base = str(tmp_path / "serving"), str(tmp_path / "mobile")
    importers = {
        "examples": tfx.dsl.Importer(source_uri=inputs["examples"], artifact_type=standard_artifacts.Examples,
                                     properties={"split_names": '["train", "eval"]'}),
        "student": tfx.dsl.Importer(source_uri=inputs["student"], artifact_type=standard_artifacts.Model),
        "teacher": tfx.dsl.Importer(source_uri=inputs["teacher"], artifact_type=standard_artifacts.Model),
        "lite": tfx.dsl.Importer(source_uri=inputs["lite"], artifact_type=LiteModels),
        "blessing": tfx.dsl.Importer(
            source_uri=str(tmp_path / "blessing"), artifact_type=standard_artifacts.ModelBlessing,
            custom_properties={"blessed": 1, "current_model": inputs["student"]},
        ),
    }  # fmt: skip
    importers = {k: v.with_id(f"import_{k}") for k, v in importers.items()}
    validator = ServingValidator(
        model=importers["student"].outputs["result"],
        examples=importers["examples"].outputs["result"],
        serving_config=section_json(SERVING),
    )
    pusher = EventPusher(
        model=importers["student"].outputs["result"],
        model_blessing=importers["blessing"].outputs["result"],
        infra_blessing=validator.outputs["blessing"],
        examples=importers["examples"].outputs["result"],
        teacher_model=importers["teacher"].outputs["result"],
        lite=importers["lite"].outputs["result"],
        serving_base=serving_base,
        mobile_base=mobile_base,
        serving_config=section_json(SERVING),
        pipeline_run_id=ph.execution_invocation().pipeline_run_id,
    )
    metadata = str(tmp_path / "metadata.sqlite")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="push-test",
        pipeline_root=str(tmp_path / "root"),
        components=[*importers.values(), validator, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata),
        enable_cache=False,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)

    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata)
    )
    [infra] = store.get_artifacts_by_type("InfraBlessing")
    assert infra.custom_properties["blessed"].int_value == 1
    with open(os.path.join(infra.uri, files.VALIDATION), encoding="utf-8") as f:
        validation = json.load(f)
    assert validation["blessed"] and validation["problems"] == []
    assert validation["requests"] == {"rest_row": 6, "rest_column": 1, "grpc": 1, "total": 8}
    assert validation["mismatch_count"] == 0 and validation["latency_ms"]["grpc"]["count"] == 1
    assert validation["server_exit_code"] == 0  # the server was stopped cleanly

    [pushed] = store.get_artifacts_by_type("PushedModel")
    props = pushed.custom_properties
    assert props["pushed"].int_value == 1 and props["pushed_version"].string_value == "1"
    assert props["pushed_destination"].string_value == os.path.join(serving_base, NAME, "1")
    assert props["teacher_version"].int_value == 1 and props["mobile_version"].int_value == 1
    with open(os.path.join(pushed.uri, files.PUSH_RECORD), encoding="utf-8") as f:
        record = json.load(f)
    assert [d["role"] for d in record["destinations"]] == ["student", "teacher", "mobile"]
    assert record["pipeline_run_id"]

    for name, src in ((NAME, inputs["student"]), (f"{NAME}-teacher", inputs["teacher"])):
        version_dir = os.path.join(serving_base, name, "1")
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
        with (
            open(os.path.join(version_dir, "variables", "variables.index"), "rb") as a,
            open(os.path.join(src, "Format-Serving", "variables", "variables.index"), "rb") as b,
        ):
            assert a.read() == b.read()
        # TF Serving's warm-up file: real eval events as PredictRequests addressed to this model.
        logs = read_warmup_file(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))
        assert len(logs) == SERVING.warmup_events
        assert {log.predict_log.request.model_spec.name for log in logs} == {name}
    release_dir = os.path.join(mobile_base, NAME, "1")
    release = push.read_release(release_dir)
    with open(os.path.join(inputs["lite"], "model.tflite"), "rb") as f:
        assert release["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert push.verify_release(release_dir) == []
    assert release["labels"] == list(ss.SPEC.classes)
    assert release["source"]["pipeline_run_id"] == record["pipeline_run_id"]
    assert release["source"]["student_model_uri"] == inputs["student"]
    assert release["metrics"]["tflite"]["int8"] == {
        "accuracy": 0.9,
        "bytes": 1234,
        "agreement_with_student_float": 0.99,
    }
    assert release["serving"] == {
        "model_name": NAME,
        "version": 1,
        "path": os.path.join(serving_base, NAME, "1"),
    }


# -- ServingValidator refusals ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("corrupted", "never became AVAILABLE"),
        ("wrong_shape", "probabilities have shape [6, 4], expected [6, 3]"),
        ("random", "answers differ from the in-process model"),
    ],
)
def test_serving_validator_refuses_a_broken_model(inputs, tmp_path, kind, expected):
    model_uri = tmp_path / "model"
    serving = str(model_uri / "Format-Serving")
    _corrupted(serving) if kind == "corrupted" else _contract_breaker(serving, kind)
    blessing = _artifact(standard_artifacts.InfraBlessing, str(tmp_path / "blessing"))
    _run(
        ServingValidator,
        {"model": _artifact(standard_artifacts.Model, str(model_uri)),
         "examples": _artifact(standard_artifacts.Examples, inputs["examples"])},
        {"blessing": blessing},
        {"serving_config": section_json(dataclasses.replace(SERVING, validation_timeout_seconds=120.0))},
    )  # fmt: skip
    assert blessing.get_int_custom_property("blessed") == 0
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_NOT_BLESSED"))
    with open(os.path.join(blessing.uri, files.VALIDATION), encoding="utf-8") as f:
        report = json.load(f)
    assert not report["blessed"]
    assert any(expected in p for p in report["problems"]), report["problems"]
    assert report["server_exit_code"] is not None  # stopped, whatever happened
    if kind == "wrong_shape":
        assert report["serving_skipped"] and report["requests"]["total"] == 0
    if kind == "corrupted":
        assert report["status"]["state"] == "END" and report["status"]["error_message"]
    if kind == "random":
        assert report["mismatch_count"] >= 1 and report["requests"]["grpc"] == 1


def test_contract_check_names_each_violation():
    import numpy as np

    from components.serving_validator.validation import contract_problems

    spec = EventSpec(classes=("a", "b"), frames=2, height=4, width=4, channels=1)
    good = {"probabilities": np.array([[0.2, 0.8]]), "class_name": np.array([b"b"]),
            "class_id": np.array([1]), "best_frame": np.array([1]), "logits": np.zeros((1, 2))}  # fmt: skip
    assert contract_problems(good, spec, 1) == []
    assert "is not the argmax" in contract_problems({**good, "class_id": np.array([0])}, spec, 1)[0]
    assert (
        "not in the model's classes"
        in contract_problems({**good, "class_name": np.array([b"zebra"])}, spec, 1)[0]
    )
    assert "best_frame outside" in contract_problems({**good, "best_frame": np.array([2])}, spec, 1)[0]
    assert (
        "not a distribution"
        in contract_problems({**good, "probabilities": np.array([[0.2, 0.9]])}, spec, 1)[0]
    )
    assert (
        "lacks the contract outputs"
        in contract_problems({"probabilities": good["probabilities"]}, spec, 1)[0]
    )


# -- EventPusher gating -----------------------------------------------------------------------
def _pusher_inputs(inputs, tmp_path, *, blessed=1, infra=1, blessing_model_id=7, model_id=7):
    student = _artifact(standard_artifacts.Model, inputs["student"], model_id)
    blessing_dir = tmp_path / "blessing"
    blessing_dir.mkdir(exist_ok=True)
    (blessing_dir / "verdict.json").write_text(
        json.dumps({"teacher_accuracy": 0.95, "student_accuracy": 0.93})
    )
    return {
        "model": student,
        "model_blessing": _artifact(standard_artifacts.ModelBlessing, str(blessing_dir), 11, blessed=blessed,
                                    current_model=inputs["student"], current_model_id=blessing_model_id),
        "infra_blessing": _artifact(standard_artifacts.InfraBlessing, str(tmp_path / "infra"), 12,
                                    blessed=infra),
        "teacher_model": _artifact(standard_artifacts.Model, inputs["teacher"], 8),
        "lite": _artifact(LiteModels, inputs["lite"], 9),
    }  # fmt: skip


@pytest.mark.parametrize(
    "gate, reason",
    [
        ({"blessed": 0}, "not blessed"),
        ({"infra": 0}, "did not pass serving validation"),
        ({"blessing_model_id": 3}, "the blessing is for model artifact 3, not 7"),
    ],
)
def test_pusher_pushes_nothing_unless_blessed(inputs, tmp_path, gate, reason):
    pushed = _artifact(standard_artifacts.PushedModel, str(tmp_path / "pushed"))
    params = {
        "serving_base": str(tmp_path / "serving"),
        "mobile_base": str(tmp_path / "mobile"),
        "serving_config": section_json(SERVING),
    }
    _run(EventPusher, _pusher_inputs(inputs, tmp_path, **gate), {"pushed_model": pushed}, params)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not pushed.has_custom_property("pushed_version")
    assert not (tmp_path / "serving").exists() and not (tmp_path / "mobile").exists()
    with open(os.path.join(pushed.uri, files.PUSH_RECORD), encoding="utf-8") as f:
        record = json.load(f)
    assert record["pushed"] is False and record["destinations"] == []
    assert [r for r in record["reasons"] if reason in r], record["reasons"]


def test_pusher_versions_increase_run_after_run(inputs, tmp_path):
    params = {"serving_base": str(tmp_path / "serving"), "mobile_base": str(tmp_path / "mobile"),
              "serving_config": section_json(SERVING), "pipeline_run_id": "run-1"}  # fmt: skip
    for run in (1, 2):
        # Each run's Trainer writes a new model artifact (a new uri); that is what gets a new version.
        student = shutil.copytree(inputs["student"], tmp_path / f"student{run}")
        run_inputs = {**inputs, "student": str(student)}
        pushed = _artifact(standard_artifacts.PushedModel, str(tmp_path / f"pushed{run}"))
        _run(
            EventPusher,
            _pusher_inputs(run_inputs, tmp_path),
            {"pushed_model": pushed},
            {**params, "pipeline_run_id": f"run-{run}"},
        )
        assert pushed.get_int_custom_property("pushed") == 1
        assert pushed.get_string_custom_property("pushed_version") == str(run)
        assert pushed.get_int_custom_property("teacher_version") == run
        assert pushed.get_int_custom_property("mobile_version") == run
    assert sorted(os.listdir(tmp_path / "serving" / NAME)) == [".eventpipe-push", "1", "2"]
    assert sorted(os.listdir(tmp_path / "serving" / f"{NAME}-teacher")) == [".eventpipe-push", "1", "2"]
    release = push.read_release(str(tmp_path / "mobile" / NAME / "2"))
    assert release["version"] == 2 and release["source"]["pipeline_run_id"] == "run-2"

    # The same model artifact blessed again (a cached re-run) is not pushed twice.
    again = _artifact(standard_artifacts.PushedModel, str(tmp_path / "pushed-again"))
    _run(EventPusher, _pusher_inputs({**inputs, "student": str(tmp_path / "student2")}, tmp_path),
         {"pushed_model": again}, {**params, "pipeline_run_id": "run-3"})  # fmt: skip
    assert again.get_string_custom_property("pushed_version") == "2"
    assert sorted(os.listdir(tmp_path / "serving" / NAME)) == [".eventpipe-push", "1", "2"]
    assert release["metrics"]["student_accuracy"] == 0.93 and release["metrics"]["teacher_accuracy"] == 0.95
    assert sorted(release["files"]) == ["model.tflite", "model_float16.tflite"]


def test_pusher_refuses_a_release_with_a_missing_file_before_pushing_anything(inputs, tmp_path):
    lite = tmp_path / "lite"
    lite.mkdir()
    (lite / "lite_report.json").write_text("{}")
    args = _pusher_inputs(inputs, tmp_path)
    args["lite"] = _artifact(LiteModels, str(lite), 9)
    pushed = _artifact(standard_artifacts.PushedModel, str(tmp_path / "pushed"))
    params = {
        "serving_base": str(tmp_path / "serving"),
        "mobile_base": str(tmp_path / "mobile"),
        "serving_config": section_json(SERVING),
    }
    from contract.errors import UserError

    with pytest.raises(UserError, match="no int8 TFLite model"):
        _run(EventPusher, args, {"pushed_model": pushed}, params)
    assert not (tmp_path / "serving").exists() and not (tmp_path / "mobile").exists()


_KILLED_PUSH = """
import os, sys
import contract.tfenv  # noqa: F401
from components.pusher import release
from components.pusher import push

serving, mobile, student, teacher, lite, name, where = sys.argv[1:8]
commit = push.Staged.commit
committed = []

def commit_or_die(self):
    if where == "before the student commit" or committed:
        os._exit(9)
    committed.append(self.directory)
    return commit(self)

push.Staged.commit = commit_or_die
release.push_all(release.PushPlan(model_name=name, student_dir=student, serving_base=serving,
                                  teacher_dir=teacher, lite_dir=lite, mobile_base=mobile))
"""


def _kill_a_push(inputs, serving, mobile, where):
    student, teacher = (
        os.path.join(inputs["student"], "Format-Serving"),
        os.path.join(inputs["teacher"], "Format-Serving"),
    )
    args = [str(serving), str(mobile), student, teacher, inputs["lite"], NAME, where]
    killed = subprocess.run([sys.executable, "-c", _KILLED_PUSH, *args], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == 9, killed.stderr[-2000:]
    from components.pusher import release

    return release.PushPlan(model_name=NAME, student_dir=student, serving_base=str(serving),
                            teacher_dir=teacher, lite_dir=inputs["lite"],
                            mobile_base=str(mobile))  # fmt: skip


def _journal_states(serving):
    journals = serving / NAME / ".eventpipe-push" / "releases"
    return {p.name: json.loads(p.read_text())["state"] for p in journals.iterdir()}


def _hidden_entries(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def test_a_push_killed_before_its_student_commit_leaves_nothing_visible(inputs, tmp_path):
    """The student is the commit point: before it, no version of the release is visible anywhere."""
    from components.pusher import release

    serving, mobile = tmp_path / "serving", tmp_path / "mobile"
    plan = _kill_a_push(inputs, serving, mobile, "before the student commit")
    for directory in (serving / NAME, serving / f"{NAME}-teacher", mobile / NAME):
        assert push.versions_on_disk(str(directory)) == [], directory
    pushed = {p["role"]: p for p in release.push_all(plan)}
    assert "rolled_forward" not in pushed["student"] and "rolled_back" not in pushed["student"]
    student_version = pushed["student"]["version"]
    assert push.versions_on_disk(str(serving / NAME)) == [student_version]
    assert push.read_release(str(mobile / NAME / str(pushed["mobile"]["version"])))["serving"]["version"] == (
        student_version
    )
    assert _journal_states(serving) == {"1.json": "rolled_back", f"{student_version}.json": "committed"}
    # The dead push's staged copies are gone, not left to age into "stale".
    assert not [n for n in _hidden_entries(mobile / NAME) if n.startswith(push.TMP_PREFIX)]


def test_a_push_killed_after_its_student_commit_is_rolled_forward(inputs, tmp_path):
    """Killed between the student commit and the mobile one: the mobile release that would name
    the student is not visible yet, and the next push commits it from the staged copy."""
    from components.pusher import release

    serving, mobile = tmp_path / "serving", tmp_path / "mobile"
    plan = _kill_a_push(inputs, serving, mobile, "after the student commit")
    assert push.versions_on_disk(str(serving / NAME)) == [1]
    assert push.versions_on_disk(str(mobile / NAME)) == []  # no mobile release names a missing student
    assert _journal_states(serving) == {"1.json": "committing"}

    pushed = {p["role"]: p for p in release.push_all(plan)}
    assert sorted(pushed["student"]["rolled_forward"]) == sorted(
        [str(serving / f"{NAME}-teacher" / "1"), str(mobile / NAME / "1")]
    )
    assert push.read_release(str(mobile / NAME / "1"))["serving"]["version"] == 1
    assert push.verify_release(str(mobile / NAME / "1")) == []
    assert push.versions_on_disk(str(mobile / NAME)) == [1, 2]
    assert (
        push.read_release(str(mobile / NAME / "2"))["serving"]["version"] == pushed["student"]["version"] == 2
    )
    assert _journal_states(serving) == {"1.json": "committed", "2.json": "committed"}


def test_a_release_whose_staged_copy_vanished_is_hidden_whole(inputs, tmp_path):
    """Killed after the student commit, and the staged teacher and mobile copies are gone: the
    next push cannot finish that release, so it hides its student too and says so."""
    from components.pusher import release

    serving, mobile = tmp_path / "serving", tmp_path / "mobile"
    plan = _kill_a_push(inputs, serving, mobile, "after the student commit")
    journal = json.loads((serving / NAME / ".eventpipe-push" / "releases" / "1.json").read_text())
    for role in ("teacher", "mobile"):
        shutil.rmtree(journal[f"{role}_tmp"])

    pushed = {p["role"]: p for p in release.push_all(plan)}
    assert pushed["student"]["rolled_back"] == [str(serving / NAME / (release.ROLLED_BACK_PREFIX + "1"))]
    assert push.versions_on_disk(str(serving / NAME)) == [pushed["student"]["version"]] == [2]
    assert _journal_states(serving) == {"1.json": "rolled_back", "2.json": "committed"}

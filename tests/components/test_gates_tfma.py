"""The blessing gates the pipeline runs, end to end on real TFMA: the stock Evaluator's executor
with ``components.gates.accuracy.eval_config`` over tiny SavedModels whose mistakes the test chooses,
then the ReleaseGate component on what TFMA wrote. Refusals must name the model, metric, slice,
value and threshold exactly as TFMA recorded them."""

from __future__ import annotations

import json
import os

import pytest
from eventdata import png
from tfx.types import artifact_utils, standard_artifacts

from components.artifacts import LiteModels
from components.gates.accuracy import (
    ACCURACY,
    EXAMPLES_SIGNATURE,
    eval_config,
    slice_accuracies,
    tfma_failures,
)
from components.gates.release import release_verdict
from components.release_gate.component import ReleaseGate
from contract import layout
from contract.config import GateConfig, section_json

pytestmark = pytest.mark.e2e

CLASSES = ("person", "animal", "vehicle")
PER_CLASS = 20  # eval events per class: accuracies move in steps of 0.05
GATES = GateConfig(min_accuracy=0.5, min_class_accuracy=0.5, max_student_drop=0.05, max_regression=0.02)


def event_id(label: str, i: int) -> str:
    return f"{label}-{i:02d}"


def misses(**per_class: int) -> list[str]:
    """The events a model gets wrong: the first ``n`` of each named class."""
    return [event_id(label, i) for label, n in per_class.items() for i in range(n)]


def write_examples(root: str) -> standard_artifacts.Examples:
    """An Examples artifact in the project's layout: PER_CLASS eval events of each class."""
    import tensorflow as tf

    for split, n in ((layout.TRAIN, 1), (layout.EVAL, PER_CLASS)):
        directory = layout.split_dir(root, split)
        os.makedirs(directory)
        with tf.io.TFRecordWriter(
            os.path.join(directory, "data_tfrecord-00000-of-00001.gz"), options="GZIP"
        ) as w:
            for label_id, label in enumerate(CLASSES):
                for i in range(n):
                    example = layout.make_example(
                        frames=[png(4, 4, 1, seed=i)], height=4, width=4, channels=1, label=label_id,
                        label_name=label, event_id=event_id(label, i), device_id="cam00",
                        timestamp="2026-01-05T12:00:00Z",
                    )  # fmt: skip
                    w.write(example.SerializeToString())
    examples = standard_artifacts.Examples()
    examples.uri = root
    examples.split_names = artifact_utils.encode_split_names([layout.TRAIN, layout.EVAL])
    return examples


def controlled_model(uri: str, wrong: list[str]) -> standard_artifacts.Model:
    """A Model artifact whose ``serving_examples`` signature (serialized layout examples in,
    ``probabilities`` out, like every exported model) predicts each event's label, except for
    the events in ``wrong``, which it puts in the next class."""
    import tensorflow as tf

    spec = {k: v for k, v in layout.feature_spec().items() if k in (layout.LABEL, layout.EVENT_ID)}
    wrong_ids = tf.constant(wrong or [""], tf.string)  # "" matches no event

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples):  # noqa: ANN001, ANN202
        parsed = tf.io.parse_example(examples, spec)
        label = parsed[layout.LABEL]
        miss = tf.reduce_any(tf.equal(parsed[layout.EVENT_ID][:, None], wrong_ids[None, :]), axis=1)
        predicted = tf.where(miss, (label + 1) % len(CLASSES), label)
        return {layout.OUT_PROBABILITIES: tf.one_hot(predicted, len(CLASSES))}

    tf.saved_model.save(tf.Module(), os.path.join(uri, "Format-Serving"),
                        signatures={EXAMPLES_SIGNATURE: serve_examples.get_concrete_function()})  # fmt: skip
    model = standard_artifacts.Model()
    model.uri = uri
    return model


def evaluate(root: str, examples, model, *, student: bool, baseline=None, gates: GateConfig = GATES):
    """Run the stock Evaluator's executor as the pipeline's Teacher/StudentEvaluator does."""
    from tfx.components.evaluator.executor import Executor
    from tfx.utils import proto_utils

    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = os.path.join(root, "evaluation"), os.path.join(root, "blessing")
    os.makedirs(blessing.uri)
    inputs = {"examples": [examples], "model": [model]}
    if baseline is not None:
        inputs["baseline_model"] = [baseline]
    config = eval_config(gates, with_baseline=student)  # the student always has a baseline channel
    Executor().Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]},
                  {"eval_config": proto_utils.proto_to_json(config)})  # fmt: skip
    return evaluation, blessing


# One model per behaviour; evaluations are made once, on first use.
MODELS = {
    "good_teacher": misses(person=2, animal=2, vehicle=2),  # 0.90 everywhere
    "teacher_fails_animal": misses(animal=12),  # overall 0.80, animal 0.40
    "blessed_student": misses(person=3, animal=3, vehicle=3),  # 0.85: the last blessed student
    "good_student": misses(person=2, animal=3, vehicle=2),  # 0.883
    "weak_student": misses(person=11, animal=11, vehicle=11),  # 0.45, every class 0.45
    "regressed_student": misses(person=4, animal=4, vehicle=5),  # 0.783, vs 0.85 blessed
}
EVALUATIONS = {  # name: (model, student?, baseline model, gates)
    "good_teacher": ("good_teacher", False, None, GATES),
    "teacher_fails_animal": ("teacher_fails_animal", False, None, GATES),
    "good_student": ("good_student", True, "blessed_student", GATES),
    # the first run (no blessed student yet); per-class floor 0.4 so only the overall floor breaks
    "weak_student": ("weak_student", True, None, GateConfig(min_accuracy=0.5, min_class_accuracy=0.4)),
    "regressed_student": ("regressed_student", True, "blessed_student", GATES),
}


@pytest.fixture(scope="module")
def tfma_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gates")
    examples = write_examples(str(root / "examples"))
    models: dict = {}
    done: dict = {}

    def model(name: str):
        if name not in models:
            models[name] = controlled_model(str(root / "models" / name), MODELS[name])
        return models[name]

    def run(name: str):
        if name not in done:
            candidate, student, baseline, gates = EVALUATIONS[name]
            done[name] = evaluate(str(root / "eval" / name), examples, model(candidate), student=student,
                                  baseline=model(baseline) if baseline else None, gates=gates)  # fmt: skip
        return done[name]

    return run


def release_gate(tmp_path, teacher, student) -> dict:
    """Run the ReleaseGate component's executor (what the pipeline runs) and read its verdict."""
    lite_dir = tmp_path / "lite"
    lite_dir.mkdir()
    (lite_dir / "lite_report.json").write_text(json.dumps({"parity": {"blessed": True, "agreement": 1.0}}))

    def artifact(cls, uri, **props):
        a = cls()
        a.uri = str(uri)
        for k, v in props.items():
            a.set_int_custom_property(k, v)
        return a

    student_model = artifact(standard_artifacts.Model, tmp_path / "student")
    student_model.id = 7
    blessing = artifact(standard_artifacts.ModelBlessing, tmp_path / "release")
    inputs = {
        "teacher_evaluation": teacher[0], "teacher_blessing": teacher[1],
        "student_evaluation": student[0], "student_blessing": student[1],
        "student_model": student_model, "lite": artifact(LiteModels, lite_dir),
        "infra_blessing": artifact(standard_artifacts.InfraBlessing, tmp_path / "infra", blessed=1),
    }  # fmt: skip
    executor = ReleaseGate.EXECUTOR_SPEC.executor_class()
    executor.Do({k: [v] for k, v in inputs.items()}, {"blessing": [blessing]},
                {"gates_config": section_json(GATES)})  # fmt: skip
    with open(os.path.join(blessing.uri, "verdict.json"), encoding="utf-8") as f:
        verdict = json.load(f)
    assert blessing.get_int_custom_property("blessed") == int(verdict["blessed"])
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED" if verdict["blessed"] else "NOT_BLESSED"))
    return verdict


def test_a_good_run_is_blessed(tfma_run, tmp_path):
    teacher, student = tfma_run("good_teacher"), tfma_run("good_student")
    assert (
        teacher[1].get_int_custom_property("blessed") == 1
        and student[1].get_int_custom_property("blessed") == 1
    )
    verdict = release_gate(tmp_path, teacher, student)
    assert verdict["blessed"], verdict["problems"]
    assert verdict["problems"] == [] and verdict["failures"] == []
    assert verdict["teacher_accuracy"] == pytest.approx(0.9)
    assert verdict["student_accuracy"] == pytest.approx(53 / 60)
    assert {"lite", "infra_blessed", "student_vs_teacher"} <= set(verdict)
    assert slice_accuracies(student[0].uri) == pytest.approx(
        {"overall": 53 / 60, "label_name=person": 0.9, "label_name=animal": 0.85, "label_name=vehicle": 0.9}
    )


def test_a_teacher_under_the_per_class_floor_is_refused_naming_the_class(tfma_run, tmp_path):
    teacher = tfma_run("teacher_fails_animal")
    assert teacher[1].get_int_custom_property("blessed") == 0
    [failure] = tfma_failures(teacher[0].uri, "teacher")
    assert failure["model"] == "teacher" and failure["metric"] == ACCURACY
    assert failure["kind"] == "class_floor" and failure["slice"] == "label_name=animal"
    assert failure["value"] == pytest.approx(0.4) and failure["threshold"] == pytest.approx(0.5)
    message = (
        "teacher: sparse_categorical_accuracy on slice label_name=animal is 0.400, "
        "below the per-class floor 0.500 (TFMA)"
    )
    assert failure["message"] == message
    # The overall accuracy (0.80) passed its floor and is not blamed.
    verdict = release_gate(tmp_path, teacher, tfma_run("good_student"))
    assert not verdict["blessed"]
    assert verdict["teacher_accuracy"] == pytest.approx(0.8)
    assert verdict["problems"] == [message]
    assert verdict["failures"] == [failure]


def test_a_student_under_the_overall_floor_is_refused(tfma_run, tmp_path):
    student = tfma_run("weak_student")
    verdict = release_gate(tmp_path, tfma_run("good_teacher"), student)
    assert not verdict["blessed"]
    floor = "student: sparse_categorical_accuracy on the overall slice is 0.450, below the floor 0.500 (TFMA)"
    assert verdict["problems"][0] == floor  # the only TFMA failure: every class (0.45) is over its 0.4 floor
    [tfma] = [f for f in verdict["failures"] if f["kind"] != "student_vs_teacher"]
    assert (tfma["model"], tfma["slice"], tfma["kind"]) == ("student", "overall", "floor")
    assert tfma["value"] == pytest.approx(0.45) and tfma["threshold"] == pytest.approx(0.5)
    relative = (
        "student vs teacher: sparse_categorical_accuracy on the overall slice is 0.450 for the student, "
        "below (1 - 0.05) x the teacher's 0.900 = 0.855"
    )
    assert verdict["problems"][1:] == [relative]


def test_a_regression_against_the_last_blessed_student_is_refused(tfma_run, tmp_path):
    student = tfma_run("regressed_student")
    assert student[1].get_int_custom_property("blessed") == 0
    [failure] = tfma_failures(student[0].uri, "student", baseline="the last blessed student")
    assert failure["kind"] == "regression" and failure["slice"] == "overall"
    assert failure["value"] == pytest.approx(47 / 60)
    assert failure["change"] == pytest.approx(47 / 60 - 0.85)
    assert failure["threshold"] == pytest.approx(
        {"baseline_model": "the last blessed student", "baseline": 0.85, "allowed_change": -0.02}
    )
    message = (
        "student: sparse_categorical_accuracy on the overall slice changed by -0.067 "
        "against the last blessed student (0.850), more than the allowed -0.020 (TFMA)"
    )
    assert failure["message"] == message
    # The teacher is 0.90, so the student (0.783) also misses 0.855: both reasons, each once.
    verdict = release_gate(tmp_path, tfma_run("good_teacher"), student)
    assert not verdict["blessed"]
    assert verdict["problems"][0] == message
    assert verdict["problems"][1].startswith("student vs teacher: ")
    assert len(verdict["problems"]) == 2


def test_release_verdict_reads_the_same_failures(tfma_run):
    """The component's decision as a function, for callers outside TFX (report, tests)."""
    verdict = release_verdict(
        tfma_run("teacher_fails_animal")[0].uri, tfma_run("good_student")[0].uri,
        lite=None, infra_blessed=None, max_student_drop=0.05,
    )  # fmt: skip
    assert [f["slice"] for f in verdict["failures"]] == ["label_name=animal"]

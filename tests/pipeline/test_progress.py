"""Stage lines: one per component start and end, from the orchestrator's own announcements."""

from __future__ import annotations

import io
import json
import logging

import pytest
from absl import logging as absl_logging

from pipeline import outputs
from pipeline.progress import StageLines, headline

pytestmark = pytest.mark.unit


def _outputs(state="COMPLETE", **props_by_key):
    out = outputs.NodeOutputs(state=state, execution_id=1)
    for key, props in props_by_key.items():
        uri = f"/artifacts/{key}"
        out.uris[key] = [uri]
        out.properties[uri] = props
    return out


def test_a_line_per_start_and_end_with_the_headline_and_nothing_else_printed(capsys):
    found = {"EventExampleGen": _outputs(examples={"read": 10, "accepted": 8, "rejected": 2,
                                                   "unlabelled": 3}),
             "StatisticsGen": _outputs(state="CACHED")}  # fmt: skip
    stream = io.StringIO()
    absl_logging.set_verbosity(absl_logging.ERROR)  # what the CLI does
    with StageLines(found.get, stream):
        absl_logging.info("Component %s is running.", "EventExampleGen")
        absl_logging.info("some chatter the user must not see")
        absl_logging.info("Component %s is finished.", "EventExampleGen")
        absl_logging.info("node %s is running.", "StatisticsGen")  # BeamDagRunner's spelling
        absl_logging.info("node %s is finished.", "StatisticsGen")
        absl_logging.info("Component %s is running.", "SchemaGen")  # still running when the run stops
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1].split()[:2] for line in lines] == [
        ["EventExampleGen", "started"], ["EventExampleGen", "done"], ["StatisticsGen", "started"],
        ["StatisticsGen", "cached"], ["SchemaGen", "started"], ["SchemaGen", "stopped"],
    ]  # fmt: skip
    assert lines[1].endswith("read 10, accepted 8 (unlabelled 3), quarantined 2")
    assert "\r" not in stream.getvalue()  # not a terminal: plain lines
    assert "chatter" not in capsys.readouterr().err
    assert logging.getLogger("absl").level == logging.ERROR  # the CLI's quiet level is restored
    assert not logging.getLogger("absl").filters


def test_lines_survive_tensorflow_silencing_absl_while_saving_a_model(tmp_path):
    """tf.saved_model.save sets absl's verbosity to FATAL and back to the flag's value: the
    announcements after a component that exports a model must still arrive."""
    import tensorflow as tf

    stream = io.StringIO()
    absl_logging.set_verbosity(absl_logging.ERROR)
    with StageLines({"Distiller": _outputs()}.get, stream):
        absl_logging.info("Component %s is running.", "Distiller")
        tf.saved_model.save(tf.Module(), str(tmp_path / "m"))
        absl_logging.info("Component %s is finished.", "Distiller")
    assert "Distiller          done in" in stream.getvalue(), stream.getvalue()


def test_a_node_without_an_execution_is_skipped_and_a_failed_lookup_is_not():
    def lookup(node):
        if node == "Distiller":
            raise OSError("metadata busy")
        return None  # TeacherTrainer: the launcher recorded no execution (its Cond was false)

    stream = io.StringIO()
    with StageLines(lookup, stream):
        for node in ("TeacherTrainer", "Distiller"):
            absl_logging.info("Component %s is running.", node)
            absl_logging.info("Component %s is finished.", node)
    ends = [line.split("] ", 1)[1].split()[:2] for line in stream.getvalue().splitlines()][1::2]
    assert ends == [["TeacherTrainer", "skipped"], ["Distiller", "finished"]]


def test_headlines_of_the_release_components():
    assert headline("ReleaseGate", _outputs(blessing={"blessed": 0})) == "NOT blessed"
    assert headline("ServingValidator", _outputs(blessing={"blessed": 1})) == "blessed"
    lite = _outputs(lite={"agreement": 0.994, "int8_bytes": 123456, "blessed": 1})
    assert headline("LiteConverter", lite) == "int8 123,456 bytes, agrees with float on 99.4%, blessed"
    pushed = _outputs(
        pushed_model={"pushed": 1, "pushed_version": "3", "teacher_version": 2, "mobile_version": 3}
    )
    assert headline("EventPusher", pushed) == "pushed student v3, teacher v2, mobile v3"
    assert headline("EventPusher", _outputs(pushed_model={"pushed": 0})) == "nothing pushed"
    assert headline("SchemaGen", _outputs()) == ""


def test_a_teacher_stopped_early_says_how_far_it_got_of_its_plan(tmp_path):
    from pipeline import report_html
    from pipeline.summary import _teacher_lines, teacher_section

    train = {"final_eval_accuracy": 0.974, "steps": 1061, "steps_trained": 630, "stopped_early": True,
             "strategy": "hybrid", "mesh": {"devices": 4}, "devices": ["d"] * 4, "epochs": 14.3,
             "best": {"step": 450}, "losses": [0.5]}  # fmt: skip
    (tmp_path / "train_report.json").write_text(json.dumps(train))
    found = {"TeacherTrainer": outputs.NodeOutputs(state="COMPLETE", execution_id=1)}
    found["TeacherTrainer"].uris.update(model_run=[str(tmp_path)], model=[str(tmp_path / "model")])
    run = found["TeacherTrainer"]
    assert (
        headline("TeacherTrainer", run)
        == "eval accuracy 0.974 after 630 steps of 1061 planned, stopped early (hybrid)"
    )

    teacher = teacher_section(found)
    [line] = _teacher_lines({"teacher": teacher})
    assert "630 steps of 1061 planned, stopped early (14.3 epochs, best eval loss at step 450)" in line
    page = report_html.training_section({"teacher": dict(teacher, plots={"training_curve": "missing.png"})})
    assert "hybrid, 630 steps of 1061 planned, stopped early, best eval loss at step 450" in page

    (tmp_path / "train_report.json").write_text(
        json.dumps(dict(train, steps_trained=1061, stopped_early=False))
    )
    assert headline("TeacherTrainer", run) == "eval accuracy 0.974 after 1061 steps (hybrid)"
    [line] = _teacher_lines({"teacher": dict(teacher_section(found), epochs=None, best=None)})
    assert "on 4 devices, 1061 steps, p50" in line

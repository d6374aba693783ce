"""report.html's renderer on hand-made reports: user strings escaped, quarantined frames shown
only when they decode and lie under the data root, the verdict on every path."""

import base64
import io
import json
import re

import pytest
from PIL import Image

from pipeline import report_html

pytestmark = pytest.mark.unit

HOSTILE = "<script>alert(1)</script>"
HOSTILE_REASON = '<img src=x onerror="alert(2)">'


def png(colour=(200, 30, 30), size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def quarantine(tmp_path, entries):
    qdir = tmp_path / "quarantine"
    qdir.mkdir()
    with open(qdir / "quarantine-checks-00000-of-00001.jsonl", "w") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")
    return str(qdir)


def report(tmp_path, entries, **sections):
    data = tmp_path / "events"
    data.mkdir(exist_ok=True)
    rep = {
        "events": {"read": 3, "accepted": 1, "rejected": 2, "unlabelled": 0, "splits": {"train": 1},
                   "labels": {HOSTILE: 1}, "rejected_by_reason": {HOSTILE_REASON: 2}},
        "quarantine": quarantine(tmp_path, entries),
        "config": {"run": {"data": str(data)}},
    }  # fmt: skip
    rep.update(sections)
    return rep


def test_user_strings_are_escaped_everywhere(tmp_path):
    entries = [{"reason": HOSTILE_REASON, "detail": f"frame 0 of {HOSTILE}", "source": f"a.jsonl:{HOSTILE}",
                "event_id": HOSTILE,
                "record": {"event_id": HOSTILE, "frames": [{"b64": "not base64 at all"}]}}]  # fmt: skip
    rep = report(
        tmp_path, entries,
        release={"blessed": False, "problems": [f"class {HOSTILE} below its floor"],
                 "failures": [{"model": "student", "metric": "acc", "slice": HOSTILE, "value": 0.1,
                               "threshold": 0.5, "kind": "class_floor"}]},
        best_frame_examples={"model": "student_qat", "events": [
            {"event_id": HOSTILE, "label": HOSTILE, "predicted": "b", "probability": 0.5, "best_frame": 0,
             "true_best_frame": 1}]},
        push={"pushed": False, "reasons": [HOSTILE], "destinations": []},
    )  # fmt: skip
    page = report_html.render(rep, str(tmp_path / "report.json"))
    assert "<script" not in page and "<img src=x" not in page
    assert (
        page.count(report_html.e(HOSTILE)) >= 8
    )  # event id, label, detail, source, slice, problem, push, example
    assert report_html.e(HOSTILE_REASON) in page
    assert "Release: NOT blessed" in page and "not decodable" in page


def test_quarantined_frames_are_inlined_only_when_they_decode_and_lie_under_the_data_root(tmp_path):
    data = tmp_path / "events"
    (data / "cam").mkdir(parents=True)
    (data / "cam" / "ok.png").write_bytes(png((10, 200, 10)))
    (tmp_path / "secret.png").write_bytes(png((1, 2, 3)))  # outside the data root: never read
    good = base64.b64encode(png()).decode()
    entries = [
        {"reason": "undecodable_frame", "event_id": "e1", "source": "cam/m.jsonl:3", "detail": "frame 1",
         "record": {"frames": [{"b64": good}, {"b64": base64.b64encode(b"\x89PNG\r\n broken").decode()}]}},
        {"reason": "bad_frame_ref", "event_id": "e2", "source": "cam/m.jsonl:4", "detail": "outside",
         "record": {"frames": ["ok.png", "../../secret.png"]}},
        {"reason": "malformed_line", "event_id": None, "source": "cam/m.jsonl:5", "detail": "not JSON",
         "raw": "{not json"},
    ]  # fmt: skip
    rep = report(tmp_path, entries)
    frames = [report_html.quarantined_frames(entry, str(data)) for entry in entries]
    assert frames[0][0] == png() and frames[0][1].startswith(b"\x89PNG")
    assert frames[1] == [png((10, 200, 10)), b""]  # a path relative to its manifest; the escape is not read
    assert frames[2] == []
    assert report_html.thumbnail(frames[0][1]) is None and report_html.thumbnail(b"") is None
    page = report_html.render(rep, str(tmp_path / "report.json"))
    # Two thumbnails (the good inline frame, ok.png), two frames that could not be shown.
    assert page.count("data:image/png;base64,") == 2 and page.count("not decodable") == 2
    assert all(reason in page for reason in ("undecodable_frame", "bad_frame_ref", "malformed_line"))


def test_quarantine_examples_take_one_reason_after_another(tmp_path):
    entries = [{"reason": "duplicate_id", "event_id": f"d{i}", "source": "m.jsonl:1"} for i in range(10)]
    entries.append({"reason": "unknown_label", "event_id": "u0", "source": "m.jsonl:2"})
    chosen = report_html.read_quarantine(quarantine(tmp_path, entries), count=3)
    assert [c["event_id"] for c in chosen] == ["d0", "u0", "d1"]


def test_every_stopping_point_has_a_verdict_and_the_page_lands_beside_report_json(tmp_path):
    stopped = report(tmp_path, [], gate={"blessed": False, "problems": ["reject rate 0.40 above 0.05"]})
    path = report_html.write(stopped, str(tmp_path / "report.json"))
    assert path == str(tmp_path / "report.html")
    page = open(path).read()
    assert "Stopped at the ingest gate" in page and "reject rate 0.40 above 0.05" in page
    assert "No event was quarantined" in page
    blessed = report_html.render({"release": {"blessed": True, "problems": []}}, "r.json")
    assert "Release: BLESSED" in blessed
    assert "No release verdict" in report_html.render({}, "r.json")


def test_best_frame_examples_are_labelled_eval_events_known_best_frames_first():
    import numpy as np

    from trainer.evaluate import Predictions
    from trainer.lite.convert import best_frame_examples

    ids = ["u", "no-truth", "a", "b"]
    ref = Predictions(
        labels=np.array([-1, 0, 1, 0]),
        logits=np.array([[0, 9.0], [2.0, 0], [0, 1.0], [0, 3.0]]),
        frame_weights=np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]),
        best_frames=np.array([1, -1, 1, 1]),
        event_ids=ids,
    )
    int8 = Predictions(
        ref.labels, np.array([[1.0, 0]] * 4), named_frames=np.array([0, 0, 1, 1]), event_ids=ids
    )
    out = best_frame_examples({"student_qat": ref, "int8": int8}, "student_qat", ("empty", "person"), count=2)
    assert out["model"] == "student_qat"
    first, second = out["events"]
    assert (first["event_id"], second["event_id"]) == ("a", "b")  # unlabelled "u" never, "no-truth" last
    assert (
        first["label"] == "person" == first["predicted"]
        and first["best_frame"] == 1 == first["true_best_frame"]
    )
    assert first["probability"] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert second["predicted"] == "person" and second["best_frame"] == 0 and second["int8_best_frame"] == 1
    assert second["int8_predicted"] == "empty" and second["frame_weights"] == [0.6, 0.4]
    everything = best_frame_examples({"student_qat": ref}, "student_qat", ("empty", "person"))["events"]
    assert [ev["event_id"] for ev in everything] == ["a", "b", "no-truth"]
    assert everything[2]["true_best_frame"] is None and "int8_predicted" not in everything[2]


def test_a_threshold_relative_to_another_model_is_shown_as_its_bound(tmp_path):
    threshold = {
        "allowed_relative_change": -0.05,
        "baseline": 0.985,
        "baseline_model": "teacher",
        "lower_bound": 0.936,
    }
    failure = {"model": "student", "metric": "acc", "slice": "overall", "value": 0.905,
               "threshold": threshold, "kind": "student_vs_teacher"}  # fmt: skip
    rep = report(
        tmp_path, [], release={"blessed": False, "problems": ["student vs teacher"], "failures": [failure]}
    )
    page = report_html.render(rep, str(tmp_path / "report.json"))
    assert "0.936 (= 0.95 x teacher 0.985)" in page and "0.905" in page


def test_weak_results_are_marked_beside_their_baselines(tmp_path):
    comparison = {"kd_gain": -1.2, "teacher_over_scratch_points": 2.0,
                  "best_frame_first_frame_baseline": 0.546, "best_frame_random_baseline": 0.25,
                  "best_frame_confidence_baseline": 0.6}  # fmt: skip
    rep = report(
        tmp_path, [], comparison=comparison,
        teacher={"accuracy": 0.97, "params": 10, "best_frame_accuracy": 0.71, "best_frame_events": 251},
        student={"production": "student_qat",
                 "qat": {"accuracy": 0.96, "params": 5, "best_frame_accuracy": 0.35}},
    )  # fmt: skip
    page = report_html.render(rep, str(tmp_path / "report.json"))
    assert "-1.2 points (WORSE than the student trained alone)" in page
    assert "teacher 0.710, student 0.350 [below a baseline]" in page
    assert (
        "always the first frame: 0.546, random: 0.250, the frame alone most confident, teacher: 0.600" in page
    )


def test_the_page_says_when_from_what_and_links_what_it_names(tmp_path):
    teacher_dir = tmp_path / "pipeline" / "TeacherTrainer" / "model"
    teacher_dir.mkdir(parents=True)
    run = {"finished_utc": "2026-12-04T08:00:00Z", "eventpipe_version": "0.1.0", "commit": "abc123def456",
           "metadata": {"context_id": 7, "run_id": "2026-12-04T07:50:00.123"}}  # fmt: skip
    rep = report(
        tmp_path,
        [],
        run=run,
        seconds=12.5,
        teacher={"accuracy": 0.9, "params": 10, "model": str(teacher_dir)},
    )
    page = report_html.render(rep, str(tmp_path / "report.json"))
    assert "finished 2026-12-04T08:00:00Z; eventpipe 0.1.0; commit abc123def456; ML Metadata run " in page
    assert "2026-12-04T07:50:00.123 (context 7); took 12.5 s" in page
    assert '<a href="report.json">report.json</a>' in page
    assert f'<a href="pipeline/TeacherTrainer/model"><code>{teacher_dir}</code></a>' in page
    nav = re.search(r"<nav[^>]*>(.*?)</nav>", page).group(1)
    for slug in re.findall(r'<h2 id="([^"]+)">', page):
        assert f'href="#{slug}"' in nav
    assert 'href="#teacher-and-students"' in nav and 'href="#where-every-model-went"' in nav


def test_tfdv_statistics_are_shown_at_a_glance():
    glance = {
        "train": {"examples": 90, "features": [
            {"feature": "frame_count", "missing": 0, "min": 1.0, "mean": 3.5, "max": 4.0},
            {"feature": "label_name", "missing": 3, "unique": 2, "top": [["person", 50], ["vehicle", 37]]},
            {"feature": "frames", "missing": 0, "unique": 90}]},
        "eval": {"examples": 10, "features": [
            {"feature": "frame_count", "missing": 0, "min": 4.0, "mean": 4.0, "max": 4.0}]},
    }  # fmt: skip
    table = report_html.statistics_table(glance)
    assert "train (90 examples)" in table and "eval (10 examples)" in table
    assert "1 .. 4 (mean 3.5)" in table and "2 unique: person (50), vehicle (37), 3 missing" in table
    assert "<td>90 unique</td><td>-</td>" in table  # a feature one split lacks

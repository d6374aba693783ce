"""Every rejection reason, one event at a time (no Beam): the reason code and a helpful detail."""

import base64
import json
import os

import eventdata as ed
import pytest

from components.event_example_gen import checks, sources
from ondevice import folders

pytestmark = pytest.mark.unit


def run_checks(tmp_path, records, classes=(), max_frames=4):
    ed.write_manifest(str(tmp_path), records)
    rules = checks.Rules(data_root=str(tmp_path), max_frames=max_frames, classes=tuple(classes))
    units = sources.discover(str(tmp_path))
    return [checks.check(e, rules) for u in units for e in sources.read_unit(u, str(tmp_path))]


def only(tmp_path, record, **kw):
    (result,) = run_checks(tmp_path, [record], **kw)
    return result


def test_valid_event_is_accepted_with_its_geometry(tmp_path):
    result = only(tmp_path, ed.event("e1", frames=3))
    assert isinstance(result, checks.Accepted)
    assert (result.height, result.width, result.channels, len(result.frames)) == (8, 8, 3, 3)
    assert result.label == "a"


def test_unlabelled_event_is_accepted(tmp_path):
    result = only(tmp_path, ed.event("u1", label=None))
    assert isinstance(result, checks.Accepted) and result.label is None


@pytest.mark.parametrize(
    "record, reason, words",
    [
        ("{not json", checks.MALFORMED_LINE, "not JSON"),
        ("[1, 2]", checks.MALFORMED_LINE, "not an object"),
        (
            {"device_id": "c", "timestamp": "2026-01-05T12:00:00Z", "frames": []},
            checks.MISSING_FIELD,
            "event_id",
        ),
        (ed.event("e", device_id=7), checks.BAD_FIELD, "device_id"),
        (ed.event("e", label=""), checks.BAD_FIELD, "label"),
        (ed.event("e", timestamp="2026-13-45T99:00:00Z"), checks.BAD_TIMESTAMP, "RFC 3339"),
        (ed.event("e", timestamp="2026-01-05 12:00"), checks.BAD_TIMESTAMP, "RFC 3339"),
        (ed.event("e", label="zebra"), checks.UNKNOWN_LABEL, "zebra"),
        (ed.event("e", frames=0), checks.WRONG_FRAME_COUNT, "1..4"),
        (ed.event("e", frames=5), checks.WRONG_FRAME_COUNT, "--max-frames"),
        (ed.event("e", frames=[42]), checks.BAD_FRAME_REF, "frame 0"),
        (ed.event("e", frames=["../outside.png"]), checks.PATH_ESCAPE, "outside"),
        (ed.event("e", frames=["/etc/passwd"]), checks.PATH_ESCAPE, "outside"),
        (ed.event("e", frames=["missing.png"]), checks.FRAME_MISSING, "does not exist"),
        (ed.event("e", frames=[{"b64": "!!!"}]), checks.UNDECODABLE_FRAME, "base64"),
        (
            ed.event("e", frames=[{"b64": base64.b64encode(b"not an image").decode()}]),
            checks.UNDECODABLE_FRAME,
            "decode",
        ),
        (
            ed.event("e", frames=[{"b64": base64.b64encode(ed.png()[:40]).decode()}]),
            checks.UNDECODABLE_FRAME,
            "decode",
        ),
        (
            ed.event(
                "e",
                frames=[
                    {"b64": base64.b64encode(ed.png(8, 8)).decode()},
                    {"b64": base64.b64encode(ed.png(8, 9)).decode()},
                ],
            ),
            checks.MIXED_FRAME_SIZES,
            "8x8, 9x8",
        ),
        (
            ed.event("e", frames=2, best_frame=2),
            checks.BAD_FIELD,
            "'best_frame' must be a 0-based index of one of the event's 2 frames (0..1) or null, got 2",
        ),
        (ed.event("e", best_frame=-1), checks.BAD_FIELD, "best_frame"),
        (ed.event("e", best_frame="1"), checks.BAD_FIELD, "got '1'"),
        (ed.event("e", best_frame=1.0), checks.BAD_FIELD, "best_frame"),
        (ed.event("e", best_frame=True), checks.BAD_FIELD, "best_frame"),
    ],
)
def test_each_rejection_names_reason_and_field(tmp_path, record, reason, words):
    result = only(tmp_path, record, classes=("a", "b"))
    assert isinstance(result, checks.Rejected), result
    assert result.reason == reason
    assert words in result.detail
    assert "events.jsonl:1" in result.detail  # says where the event is


def test_a_frame_path_that_is_a_directory_is_quarantined_not_a_crash(tmp_path):
    """It used to raise IsADirectoryError out of the Beam job (exit 1, no report)."""
    (tmp_path / "frames" / "e").mkdir(parents=True)
    result = only(tmp_path, ed.event("e", frames=["frames/e"]), classes=("a", "b"))
    assert isinstance(result, checks.Rejected), result
    assert result.reason == checks.FRAME_UNREADABLE and "is a directory" in result.detail


@pytest.mark.parametrize("value, kept", [(1, 1), (0, 0), (None, None)])
def test_optional_best_frame_is_kept(tmp_path, value, kept):
    result = only(tmp_path, ed.event("e1", frames=2, best_frame=value))
    assert isinstance(result, checks.Accepted) and result.best_frame == kept
    assert only(tmp_path, ed.event("e2", frames=2)).best_frame is None


def test_frame_path_relative_to_manifest_and_symlink_escape(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "ok.png").write_bytes(ed.png())
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(ed.png())
    os.symlink(outside, tmp_path / "frames" / "link.png")
    results = run_checks(
        tmp_path, [ed.event("ok", frames=["frames/ok.png"]), ed.event("ln", frames=["frames/link.png"])]
    )
    assert isinstance(results[0], checks.Accepted)
    assert results[1].reason == checks.PATH_ESCAPE


def test_oversized_frame_is_rejected(tmp_path):
    ed.write_manifest(str(tmp_path), [ed.event("big")])
    rules = checks.Rules(data_root=str(tmp_path), max_frames=4, max_frame_bytes=10)
    (event,) = sources.read_unit(sources.discover(str(tmp_path))[0], str(tmp_path))
    assert checks.check(event, rules).reason == checks.FRAME_TOO_LARGE


def test_grayscale_jpeg_is_accepted_with_one_channel(tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (12, 10), 128).save(buf, format="JPEG")
    record = ed.event("g", frames=[{"b64": base64.b64encode(buf.getvalue()).decode()}])
    result = only(tmp_path, record)
    assert (result.height, result.width, result.channels) == (10, 12, 1)


def test_blank_lines_are_not_events_but_every_other_line_is(tmp_path):
    ed.write_manifest(str(tmp_path), [ed.event("a1"), "", "   ", json.dumps(ed.event("a2"))])
    events = list(sources.read_unit(sources.discover(str(tmp_path))[0], str(tmp_path)))
    assert [e.source for e in events] == ["events.jsonl:1", "events.jsonl:4"]


def test_discover_explains_an_empty_or_missing_directory(tmp_path):
    from contract.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        sources.discover(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no events found"):
        sources.discover(str(tmp_path))


def test_a_frame_declaring_too_many_pixels_is_quarantined_before_decoding(tmp_path):
    from fixtures import serving_support as ss

    bomb = base64.b64encode(ss.png_declaring(13000, 13000)).decode()
    result = only(tmp_path, ed.event("e", frames=[{"b64": bomb}]), classes=("a", "b"))
    assert isinstance(result, checks.Rejected), result
    assert result.reason == checks.FRAME_TOO_LARGE and "data.max_frame_pixels" in result.detail


def test_survey_reports_every_file_it_does_not_read_and_walks_symlinked_directories(tmp_path):
    data = tmp_path / "data"
    ed.write_manifest(str(data), [ed.event("m1")])
    ed.write_manifest(str(data / "z-real"), [ed.event("m2")], name="more.jsonl")
    os.symlink(data / "z-real", data / "a-linked")  # a symlinked directory inside the root is walked ...
    os.symlink(data, data / "z-real" / "back")  # ... each real directory once, even through a loop
    outside = tmp_path / "outside"
    ed.write_manifest(str(outside), [ed.event("m3")], name="elsewhere.jsonl")
    os.symlink(outside, data / "escape")  # one leading out of the root is not followed
    (data / "old.tfrecord").write_bytes(b"")
    (data / "notes.txt").write_text("hello")
    (data / ".DS_Store").write_bytes(b"\0")
    found = sources.survey(str(data))
    assert sorted(os.path.basename(u.path) for u in found.units) == ["events.jsonl", "more.jsonl"]
    ignored = dict(found.ignored)
    assert ignored.pop("old.tfrecord").startswith(
        "TFRecord files are not read when *.jsonl files are present"
    )
    assert ignored.pop("notes.txt") == sources.IGNORED_FORMAT
    assert ignored.pop(".DS_Store") == sources.IGNORED_HIDDEN
    assert ignored.pop("escape") == sources.IGNORED_OUTSIDE
    loops = {path for path, reason in ignored.items() if reason == sources.IGNORED_LOOP}
    assert len(loops) == 2 and all(ignored.pop(path) for path in loops)  # z-real (or its alias) and back
    assert ignored == {}, "frames named by the manifests are read, not ignored"


def test_survey_of_an_image_folder_tree_names_what_is_outside_its_layout(tmp_path):
    (tmp_path / "cat" / "ev1" / "extra").mkdir(parents=True)
    (tmp_path / "cat" / "ev1" / "0.png").write_bytes(ed.png())
    (tmp_path / "cat" / "ev1" / "meta.json").write_text("{}")
    (tmp_path / "cat" / "one.jpg").write_bytes(ed.png())
    (tmp_path / "cat" / "labels.csv").write_text("x")
    (tmp_path / "README.md").write_text("x")
    found = sources.survey(str(tmp_path))
    assert [(u.kind, os.path.basename(u.path)) for u in found.units] == [
        ("folder_event", "ev1"),
        ("folder_image", "one.jpg"),
    ]
    assert dict(found.ignored) == {
        "README.md": folders.IGNORED_TOP_LEVEL,
        os.path.join("cat", "ev1", "extra"): folders.IGNORED_NESTED,
        os.path.join("cat", "ev1", "meta.json"): folders.IGNORED_NOT_IMAGE,
        os.path.join("cat", "labels.csv"): folders.IGNORED_NOT_IMAGE,
    }


def test_manifest_lines_are_events_or_say_why_not(tmp_path):
    """One reader for ingest and device-run: every non-blank line is an object or has a reason."""
    from ondevice.manifest import read_manifest

    path = tmp_path / "m.jsonl"
    path.write_bytes(
        b'{"event_id": "a"}\n\n  \n{not json\n[1, 2]\n\xff\xfe\n'
        + b"[" * 5000
        + b"\n"
        + b'{"event_id": "b"}\r\n'
    )
    lines = list(read_manifest(str(path)))
    assert [line.number for line in lines] == [1, 4, 5, 6, 7, 8]
    assert lines[0].record == {"event_id": "a"} and lines[-1].record == {"event_id": "b"}
    reasons = [line.error for line in lines[1:-1]]
    assert reasons[0].startswith("not JSON") and reasons[1] == "a JSON value that is not an object"
    assert reasons[2].startswith("not UTF-8") and reasons[3].startswith("not usable JSON")
    assert all(line.record is None for line in lines[1:-1])

"""Ingest end to end: real Beam, real TFX (LocalDagRunner, SQLite MLMD), real files."""

import base64
import glob
import json
import os
import shutil
import struct
import subprocess
import sys

import apache_beam as beam
import eventdata as ed
import pytest
from repo import REPO

from components.event_example_gen import beam_graph
from contract import layout
from contract.config import Config, DataConfig, SimulatorConfig
from ondevice import folders
from pipeline import outputs, runners
from simulator.writer import generate

pytestmark = pytest.mark.e2e

CLASSES = ["empty", "person", "vehicle"]


def eventpipe(*args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def dirty_data(tmp_path_factory):
    """120 simulated events plus one bad event of each kind a camera fleet produces."""
    root = tmp_path_factory.mktemp("events")
    generate(
        str(root),
        SimulatorConfig(
            events=120, frames=2, size=16, classes=CLASSES, unlabelled_fraction=0.1, seed=3, shards=2
        ),
        workers=1,
        progress=False,
        preview=False,
    )
    first = json.loads(open(sorted(glob.glob(str(root / "*.jsonl")))[0]).readline())
    bad = [
        "{this is not json",
        dict(first),  # duplicate event_id (the later copy is the one rejected)
        {**first, "event_id": "bad-label", "label": "dragon"},
        {**first, "event_id": "bad-missing", "frames": ["frames/nope/0.png"]},
        {**first, "event_id": "bad-escape", "frames": ["../../etc/passwd"]},
        {**first, "event_id": "bad-time", "timestamp": "last tuesday"},
        ed.event(
            "bad-sizes",
            label="person",
            frames=[
                {"b64": __import__("base64").b64encode(ed.png(16, 16)).decode()},
                {"b64": __import__("base64").b64encode(ed.png(12, 16)).decode()},
            ],
        ),
    ]
    ed.write_manifest(str(root), bad, name="zz-injected.jsonl")
    return root


EXPECTED_REASONS = {
    "malformed_line": 1, "duplicate_id": 1, "unknown_label": 1, "frame_missing": 1,
    "path_escape": 1, "bad_timestamp": 1, "mixed_frame_sizes": 1,
}  # fmt: skip


def test_validate_accounts_for_every_event(dirty_data, tmp_path):
    work = tmp_path / "work"
    r = eventpipe(
        "validate",
        "--data",
        str(dirty_data),
        "--workdir",
        str(work),
        "--classes",
        ",".join(CLASSES),
        "--max-reject-rate",
        "0.1",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    ev = report["events"]
    assert ev["read"] == 127
    assert ev["read"] == ev["accepted"] + ev["rejected"]
    assert ev["rejected_by_reason"] == EXPECTED_REASONS
    assert ev["unlabelled"] == ev["splits"]["unlabelled"] > 0
    assert sum(ev["splits"].values()) == ev["accepted"] == 120
    assert report["anomalies"] == []
    assert "accepted 120" in r.stdout and report["quarantine"] in r.stdout
    # TFDV statistics at a glance, per split: examples and each feature's summary.
    stats = report["statistics"]
    assert sum(s["examples"] for s in stats.values()) == 120
    label_names = {f["feature"]: f for f in stats["train"]["features"]}["label_name"]
    assert label_names["unique"] <= len(CLASSES) and all(value in CLASSES for value, _ in label_names["top"])

    # The quarantine holds each rejected event with its original record and reason.
    lines = [
        json.loads(line)
        for f in glob.glob(os.path.join(report["quarantine"], "quarantine-*.jsonl"))
        for line in open(f)
    ]
    assert sorted(e["reason"] for e in lines) == sorted(EXPECTED_REASONS)
    by_reason = {e["reason"]: e for e in lines}
    assert by_reason["malformed_line"]["raw"] == "{this is not json"
    assert by_reason["unknown_label"]["record"]["label"] == "dragon"
    assert by_reason["duplicate_id"]["source"].startswith("zz-injected.jsonl:")
    assert "dragon" in by_reason["unknown_label"]["detail"]

    # The examples decode through the shared layout into the model geometry.
    spec = layout.EventSpec.load(report["examples"])
    assert spec == layout.EventSpec(tuple(CLASSES), frames=2, height=16, width=16, channels=3)
    batch = next(
        iter(layout.dataset(os.path.join(report["examples"], "Split-train", "*"), spec, batch_size=8))
    )
    assert batch["frames"].shape == (8, 2, 16, 16, 3)
    assert set(batch["label"].numpy()) <= {0, 1, 2}
    unlabelled = next(
        iter(layout.dataset(os.path.join(report["examples"], "Split-unlabelled", "*"), spec, batch_size=64))
    )
    assert set(unlabelled["label"].numpy()) == {-1}


def test_gate_stops_with_reasons_and_quarantine_path(dirty_data, tmp_path):
    work = tmp_path / "work"
    r = eventpipe(
        "validate",
        "--data",
        str(dirty_data),
        "--workdir",
        str(work),
        "--classes",
        ",".join(CLASSES),
        "--max-reject-rate",
        "0.01",
        cwd=tmp_path,
    )
    assert r.returncode == 3, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("eventpipe validate: error:")]
    assert len(error) == 1 and "Traceback" not in r.stderr
    assert "7 of 127 events rejected" in error[0] and "duplicate_id=1" in error[0]
    report = json.loads((work / "report.json").read_text())
    assert report["quarantine"] in error[0]
    assert report["gate"]["blessed"] is False
    assert report["gate"]["problems"][0] in error[0]  # the gate's own verdict, not a recomputation


def test_a_refused_ingest_runs_nothing_after_the_gate(dirty_data, tmp_path):
    """The gate publishes its refusal; the pipeline's Cond skips every later stage."""
    work = tmp_path / "work"
    r = eventpipe(
        "run", "--data", str(dirty_data), "--workdir", str(work), "--classes", ",".join(CLASSES),
        "--max-reject-rate", "0.01", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 3, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("eventpipe run: error:")]
    assert len(error) == 1 and "7 of 127 events rejected" in error[0], r.stderr[-3000:]
    lines = {line.split("] ", 1)[1].split()[0]: line for line in r.stdout.splitlines() if "] " in line}
    assert lines["IngestGate"].endswith("NOT blessed"), r.stdout
    for node in ("TeacherTrainer", "Distiller", "LiteConverter", "EventPusher"):
        assert lines[node].split()[-1] == "skipped", r.stdout
    cfg = Config()
    cfg.set("run.workdir", str(work))
    connection = runners.metadata_connection(cfg)
    assert outputs.execution_count(connection, "IngestGate") == {"COMPLETE": 1}
    for node in ("TeacherTrainer", "Distiller", "EventPusher"):
        assert outputs.execution_count(connection, node) == {}, node
    report = json.loads((work / "report.json").read_text())
    assert report["gate"]["blessed"] is False and report["gate"]["problems"][0] in error[0]
    assert not glob.glob(str(work / "serving" / "*" / "*"))


def run_ingest(root, out, data=None):
    data = data or DataConfig()
    with beam.Pipeline() as p:
        beam_graph.build_ingest(p, str(root), data, str(out / "examples"), str(out / "quarantine"))
    return beam_graph.finish_outputs(str(out / "examples"), str(out / "quarantine"), data)


def test_image_folder_tree_single_frame_grayscale(tmp_path):
    root = tmp_path / "tree"
    for label in ("cat", "dog"):
        for i in range(6):
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / f"{label}{i}.png").write_bytes(ed.png(8, 8, channels=1, seed=i))
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("not an event")
    (root / "index.csv").write_text("not an event either")
    summary = run_ingest(root, tmp_path / "out")
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (13, 12, 1)
    assert summary["rejected_by_reason"] == {"undecodable_frame": 1}
    # Files outside the layout are not events, and they are not dropped silently either.
    assert summary["ignored_files"] == 2 and summary["ignored_examples"] == [
        os.path.join("dog", "notes.txt"),
        "index.csv",
    ]
    assert summary["ignored_by_reason"] == {folders.IGNORED_NOT_IMAGE: 1, folders.IGNORED_TOP_LEVEL: 1}
    spec = layout.EventSpec.load(str(tmp_path / "out" / "examples"))
    assert spec == layout.EventSpec(("cat", "dog"), frames=1, height=8, width=8, channels=1)


def test_image_folder_tree_multi_frame_rgb(tmp_path):
    root = tmp_path / "tree"
    for i in range(5):
        event_dir = root / "person" / f"ev{i}"
        event_dir.mkdir(parents=True)
        for f in range(4):
            (event_dir / f"{f}.png").write_bytes(ed.png(64, 64, seed=f + i))
    summary = run_ingest(root, tmp_path / "out")
    assert summary["accepted"] == 5 and summary["labels"] == {"person": 5}
    spec = layout.EventSpec.load(str(tmp_path / "out" / "examples"))
    assert spec.input_shape == (4, 64, 64, 3)


def test_tfrecord_input_is_rechecked(tmp_path):
    """Layout TFRecords go through the same checks; a corrupt record is quarantined, not fatal."""
    src = tmp_path / "src"
    ed.write_manifest(str(src), [ed.event(f"e{i}", label="ab"[i % 2]) for i in range(10)])
    first = run_ingest(src, tmp_path / "first")
    root = tmp_path / "records"
    root.mkdir()
    for f in glob.glob(str(tmp_path / "first" / "examples" / "Split-*" / "*.gz")):
        shutil.copy(f, root / (os.path.basename(os.path.dirname(f)) + ".tfrecord.gz"))
    with open(root / "zz-corrupt.tfrecord", "wb") as f:
        payload = b"\x08garbage"
        f.write(struct.pack("<Q", len(payload)) + b"\0" * 4 + payload + b"\0" * 4)
    summary = run_ingest(root, tmp_path / "second")
    assert summary["read"] == first["accepted"] + 1
    assert summary["accepted"] == first["accepted"]
    assert summary["rejected_by_reason"] == {"malformed_line": 1}
    q = [
        json.loads(line)
        for f in glob.glob(str(tmp_path / "second" / "quarantine" / "quarantine-*"))
        for line in open(f)
    ]
    assert q[0]["source"].startswith("zz-corrupt.tfrecord:")


def test_tfrecord_crcs_are_checked_and_a_truncated_file_counts_what_it_held(tmp_path):
    """A flipped byte costs one record (its CRC), a cut file its tail; every other record is read."""
    import tensorflow as tf

    src = tmp_path / "src"
    ed.write_manifest(str(src), [ed.event(f"e{i}", label="ab"[i % 2]) for i in range(6)])
    run_ingest(src, tmp_path / "first")
    payloads = [
        r.numpy() for r in tf.data.TFRecordDataset(
            sorted(glob.glob(str(tmp_path / "first" / "examples" / "Split-*" / "*.gz"))),
            compression_type="GZIP"
        )
    ]  # fmt: skip
    root = tmp_path / "records"
    root.mkdir()
    path = str(root / "events.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:  # TensorFlow's own framing and CRCs
        for payload in payloads:
            writer.write(payload)
    raw = bytearray(open(path, "rb").read())
    second = 12 + len(payloads[0]) + 4  # offset of the second record
    raw[second + 12 + 5] ^= 0xFF  # one flipped byte inside the second record's data
    raw = raw[: len(raw) - 7]  # and the last record cut short
    open(path, "wb").write(bytes(raw))
    summary = run_ingest(root, tmp_path / "second")
    assert summary["read"] == len(payloads) and summary["accepted"] == len(payloads) - 2
    q = [
        json.loads(line)
        for f in glob.glob(str(tmp_path / "second" / "quarantine" / "quarantine-*"))
        for line in open(f)
    ]
    details = {entry["source"]: entry["detail"] for entry in q}
    assert f"CRC mismatch (corrupted bytes) at byte {second}" in details["events.tfrecord:1"], details
    damaged = next(entry for entry in q if entry["source"] == "events.tfrecord:1")
    assert base64.b64decode(damaged["raw"]) == bytes(
        raw[second + 12 : second + 12 + len(payloads[1])]
    )  # the bytes read
    assert "the rest of the file cannot be framed" in details[f"events.tfrecord:{len(payloads) - 1}"], details


def test_duplicate_with_inline_frames_is_quarantined_verbatim(tmp_path):
    """Inline-frame lines are not staged twice; a duplicate is re-read from its manifest."""
    records = [ed.event(f"e{i}", label="ab"[i % 2]) for i in range(6)]
    duplicate = ed.event("e2", label="b", frames=1)
    ed.write_manifest(str(tmp_path / "data"), records + [duplicate])
    summary = run_ingest(tmp_path / "data", tmp_path / "out")
    assert summary["rejected_by_reason"] == {"duplicate_id": 1} and summary["accepted"] == 6
    (line,) = [
        json.loads(x)
        for f in glob.glob(str(tmp_path / "out" / "quarantine" / "quarantine-dup*"))
        for x in open(f)
    ]
    assert line["record"] == duplicate and line["source"] == "events.jsonl:7"


def test_ingest_fuzz_accounts_for_every_line_record_and_file(tmp_path):
    """Seeded mutations of manifest lines, frame files and a TFRecord: ingest never fails, and
    read == accepted + rejected with every line/record counted and every other file reported."""
    import random

    import tensorflow as tf

    rng = random.Random(7)
    data = tmp_path / "manifests"
    (data / "frames").mkdir(parents=True)
    lines = []
    for i in range(60):
        record = ed.event(f"e{i}", label="ab"[i % 2], frames=2)
        if i % 3 == 0:  # frames as files, some of them damaged on disk
            names = []
            for k in range(2):
                blob = ed.png(seed=i * 7 + k)
                if rng.random() < 0.3:
                    blob = rng.choice(
                        [blob[: rng.randrange(len(blob))], bytes(rng.randrange(256) for _ in range(40)), b""]
                    )
                (data / "frames" / f"{i}-{k}.png").write_bytes(blob)
                names.append(f"frames/{i}-{k}.png")
            record["frames"] = names
        text = json.dumps(record)
        pick = rng.randrange(6)
        if pick == 0:
            text = text[: rng.randrange(len(text))]
        elif pick == 1:
            chars = list(text)
            for _ in range(rng.randrange(1, 8)):
                chars[rng.randrange(len(chars))] = chr(
                    rng.choice([0, 10, 34, 92, 123, 0xFFFD, rng.randrange(32, 127)])
                )
            text = "".join(chars)
        elif pick == 2:
            key = rng.choice(["event_id", "timestamp", "frames", "label", "device_id", "best_frame"])
            record[key] = rng.choice([None, 5, -1, [], {}, "x" * 300, [{"b64": "%%"}], 1e308, True])
            text = json.dumps(record)
        lines.append(text)
    (data / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    (data / "stray.bin").write_bytes(b"\0" * 10)
    expected_read = sum(1 for line in (data / "events.jsonl").read_bytes().split(b"\n") if line.strip())
    summary = run_ingest(data, tmp_path / "out")
    assert summary["read"] == expected_read == summary["accepted"] + summary["rejected"]
    assert summary["rejected"] > 0 and summary["accepted"] > 0
    assert summary["ignored_files"] == 1 and summary["ignored_examples"] == ["stray.bin"]

    # A TFRecord built from the accepted examples, then damaged at random positions.
    payloads = [r.numpy() for r in tf.data.TFRecordDataset(
        sorted(glob.glob(str(tmp_path / "out" / "examples" / "Split-*" / "*.gz"))),
        compression_type="GZIP")]  # fmt: skip
    records = tmp_path / "records"
    records.mkdir()
    path = str(records / "events.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    raw = bytearray(open(path, "rb").read())
    for _ in range(5):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    open(path, "wb").write(bytes(raw[: len(raw) - rng.randrange(0, 40)]))
    again = run_ingest(records, tmp_path / "again")
    assert again["read"] == again["accepted"] + again["rejected"] and again["read"] >= 1
    assert again["accepted"] <= len(payloads)

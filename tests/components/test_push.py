"""components.pusher.push: atomic pushes (a polling reader never sees half a version, concurrent pushers
never collide), versions strictly increasing and never reused, release.json checksums."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from components.pusher import push
from contract.errors import UserError
from fixtures import serving_support as ss
from serving.versions import scan_versions

pytestmark = pytest.mark.unit

NAME = "events"


def _files(root: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, _s, files in os.walk(root) for n in files}


@pytest.fixture(scope="module")
def big_saved_model(tmp_path_factory) -> str:
    """A real SavedModel with an 8 MiB extra asset, so each copy takes a while."""
    src = str(tmp_path_factory.mktemp("src") / "model")
    shutil.copytree(ss.saved_model(1), src)
    with open(os.path.join(src, "assets.extra", "padding.bin"), "wb") as f:
        f.write(os.urandom(8 << 20))
    return src


def test_reader_never_sees_a_partial_version_while_pushers_race(big_saved_model, tmp_path):
    base = str(tmp_path / "base")
    model_dir = os.path.join(base, NAME)
    expected = _files(big_saved_model)
    seen: dict[int, int] = {}
    bad: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                names = os.listdir(model_dir)
            except FileNotFoundError:
                continue
            for name in names:
                if name.isdigit():
                    got = _files(os.path.join(model_dir, name))
                    seen[int(name)] = seen.get(int(name), 0) + 1
                    if got != expected:
                        bad.append(f"version {name} had {len(got)} of {len(expected)} files")
                elif not name.startswith("."):
                    bad.append(f"unexpected visible entry {name!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    code = (
        "import sys, json; from components.pusher.push import push_saved_model\n"
        "print(json.dumps([push_saved_model(sys.argv[1], sys.argv[2], sys.argv[3])['version'] "
        "for _ in range(3)]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, big_saved_model, base, NAME],
            cwd=ss.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        done.set()
        thread.join()
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    versions = sorted(v for out, _err in results for v in json.loads(out.strip().splitlines()[-1]))
    assert versions == list(range(1, 10))  # nine pushes, nine distinct versions, no gaps
    assert not bad, bad[:5]
    assert seen, "the reader never saw a version while the pushes ran"
    assert sorted(scan_versions(model_dir)) == versions  # what the server's scanner sees
    assert push.claimed_versions(model_dir) == versions
    assert [n for n in os.listdir(model_dir) if n.startswith(push.TMP_PREFIX)] == []
    for v in versions:  # TF Serving's layout: saved_model.pb and variables/ at the version root
        assert os.path.isfile(os.path.join(model_dir, str(v), "saved_model.pb"))
        assert os.path.isdir(os.path.join(model_dir, str(v), "variables"))


def test_versions_increase_and_are_never_reused(tmp_path):
    src, base = ss.saved_model(1), str(tmp_path / "base")
    model_dir = os.path.join(base, NAME)
    assert [push.push_saved_model(src, base, NAME)["version"] for _ in range(3)] == [1, 2, 3]
    shutil.rmtree(os.path.join(model_dir, "3"))  # a bad version pulled from serving
    assert push.next_version(model_dir) == 4
    result = push.push_saved_model(src, base, NAME)
    assert result["version"] == 4 and result["path"] == os.path.join(model_dir, "4")
    os.mkdir(os.path.join(model_dir, "9"))  # someone's hand-made directory
    assert push.push_saved_model(src, base, NAME)["version"] == 10
    assert os.listdir(os.path.join(model_dir, "9")) == []
    assert sorted(scan_versions(model_dir)) == [1, 2, 4, 9, 10]

    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(model_dir, "10"))
    assert "serving_default" in loaded.signatures


def test_a_version_taken_between_claim_and_rename_is_left_alone(tmp_path, monkeypatch):
    """The rename never replaces a directory (not even an empty one); the push takes the next number."""
    src, base = ss.saved_model(1), str(tmp_path / "base")
    model_dir = os.path.join(base, NAME)
    original = push._claim
    intruded = []

    def claim_then_intrude(directory: str, source: str) -> int:
        version = original(directory, source)
        if not intruded:
            os.mkdir(os.path.join(directory, str(version)))
            intruded.append(version)
        return version

    monkeypatch.setattr(push, "_claim", claim_then_intrude)
    result = push.push_saved_model(src, base, NAME)
    assert intruded == [1] and result["version"] == 2
    assert os.listdir(os.path.join(model_dir, "1")) == []
    assert _files(os.path.join(model_dir, "2")) == _files(src)


def test_rename_noreplace_refuses_existing_targets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError):
        push.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "empty"))
    assert (tmp_path / "a" / "f").exists()
    push.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b" / "f").read_text() == "x"


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    model_dir = tmp_path / "base" / NAME
    model_dir.mkdir(parents=True)
    stale, live = model_dir / ".push-1-dead", model_dir / ".push-2-live"
    stale.mkdir()
    live.mkdir()
    old = time.time() - push.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    push.push_saved_model(ss.saved_model(1), str(tmp_path / "base"), NAME)
    assert not stale.exists() and live.exists()


def test_refuses_what_is_not_a_model(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.h5").write_bytes(b"x")
    with pytest.raises(UserError, match="not a SavedModel"):
        push.push_saved_model(str(tmp_path / "notamodel"), str(tmp_path / "base"), NAME)
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        push.push_tflite(str(fake), str(tmp_path / "mobile"), NAME, {})
    with pytest.raises(UserError, match="not allowed"):
        push.push_saved_model(ss.saved_model(1), str(tmp_path / "base"), "../escape")
    assert not (tmp_path / "base").exists() or os.listdir(tmp_path / "base") == []
    assert not (tmp_path / "mobile").exists()


def test_tflite_release_has_checksums_labels_input_spec_and_metrics(tmp_path):
    int8, float16 = ss.tflite_model(1, "int8"), ss.tflite_model(1, "float16")
    mobile = str(tmp_path / "mobile")
    release = {
        "metrics": {
            "tflite": {
                "int8": {"accuracy": 0.91, "bytes": os.path.getsize(int8)},
                "parity": {"agreement": 0.995},
            }
        },
        "source": {"pipeline_run_id": "run-7", "student_model_uri": "/pipeline/Distiller/model/12"},
    }
    first = push.push_tflite(int8, mobile, NAME, release, variants={"model_float16.tflite": float16})
    second = push.push_tflite(int8, mobile, NAME, release)
    assert (first["version"], second["version"]) == (1, 2)

    version_dir = os.path.join(mobile, NAME, "1")
    assert sorted(os.listdir(version_dir)) == ["model.tflite", "model_float16.tflite", "release.json"]
    doc = push.read_release(version_dir)
    with open(int8, "rb") as f:
        assert doc["sha256"] == hashlib.sha256(f.read()).hexdigest()
    with open(float16, "rb") as f:
        assert doc["files"]["model_float16.tflite"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert doc["files"]["model.tflite"]["variant"] == "int8"
    assert doc["files"]["model_float16.tflite"]["variant"] == "float16"
    assert doc["version"] == 1 and doc["model_name"] == NAME and doc["format"] == push.RELEASE_FORMAT
    assert doc["labels"] == list(ss.SPEC.classes)
    assert doc["input"]["shape"] == [1, *ss.SPEC.input_shape]
    assert doc["input"]["dtype"] == "int8" and set(doc["input"]["quantization"]) == {"scale", "zero_point"}
    assert doc["input"]["normalization"] == {"mean": [0.0] * 3, "std": [255.0] * 3}
    assert doc["metrics"] == release["metrics"] and doc["source"] == release["source"]
    assert doc["created"].endswith("Z")
    assert push.read_release(os.path.join(mobile, NAME, "2"))["version"] == 2
    assert push.verify_release(version_dir) == []

    with open(os.path.join(version_dir, "model_float16.tflite"), "r+b") as f:  # bit rot
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert push.verify_release(version_dir) == ["model_float16.tflite: sha256/size differs from release.json"]

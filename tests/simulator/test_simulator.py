"""The event simulator: determinism, sharding, counts, geometry, PNG validity and the CLI."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from contract.config import SimulatorConfig
from contract.errors import UserError
from pipeline.cli import main
from simulator import generate, scenes
from simulator.backgrounds import PHOTOS
from simulator.png import encode_png
from simulator.scenes import archetypes_for, render_event

pytestmark = pytest.mark.unit


def _cfg(**kw) -> SimulatorConfig:
    base = dict(
        events=60,
        frames=2,
        size=16,
        channels=3,
        classes=["empty", "person", "vehicle"],
        devices=3,
        unlabelled_fraction=0.2,
        label_noise=0.0,
        shards=2,
        seed=7,
        workers=1,
    )
    base.update(kw)
    return SimulatorConfig(**base)


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def _events(root: str) -> list[dict]:
    lines = []
    for name in sorted(os.listdir(root)):
        if name.endswith(".jsonl"):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                lines.extend(json.loads(line) for line in f)
    return lines


def _frame(root: str, rel: str) -> Image.Image:
    im = Image.open(os.path.join(root, rel))
    im.load()
    return im


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate(a, _cfg(), progress=False)
    generate(b, _cfg(), progress=False)
    generate(c, _cfg(seed=8), progress=False)
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert ta == tb
    assert len([p for p in ta if p.endswith(".png")]) == 60 * 2 + 1  # frames + preview
    assert ta["events-00000-of-00002.jsonl"] != tc["events-00000-of-00002.jsonl"]
    frames_a = {p: v for p, v in ta.items() if p.startswith("frames")}
    frames_c = {p: v for p, v in tc.items() if p.startswith("frames")}
    assert sum(frames_a[p] != frames_c.get(p) for p in frames_a) > 100


def test_shard_count_does_not_change_content(tmp_path):
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    generate(one, _cfg(shards=1), progress=False)
    generate(many, _cfg(shards=3), progress=False)
    assert sorted(n for n in os.listdir(many) if n.endswith(".jsonl")) == [
        f"events-0000{i}-of-00003.jsonl" for i in range(3)
    ]
    assert _events(one) == _events(many)
    t1, t3 = _tree(one), _tree(many)
    frames1 = {p: v for p, v in t1.items() if p.startswith("frames")}
    assert frames1 == {p: v for p, v in t3.items() if p.startswith("frames")}
    s1 = json.loads(t1["simulator.json"])
    s3 = json.loads(t3["simulator.json"])
    assert s1["counts"] == s3["counts"]
    # Shards split the events into contiguous, nearly equal ranges.
    sizes = [len(t3[f"events-0000{i}-of-00003.jsonl"].splitlines()) for i in range(3)]
    assert sizes == [20, 20, 20]


def test_pool_output_matches_in_process_output(tmp_path):
    cfg = _cfg(events=300, shards=2, frames=1, size=8)
    serial, pooled = str(tmp_path / "serial"), str(tmp_path / "pooled")
    generate(serial, cfg, workers=1, progress=False)
    summary = generate(pooled, cfg, workers=2, progress=False)
    assert summary["workers"] == 2
    assert _tree(serial) == _tree(pooled)


def test_counts_classes_and_unlabelled_fraction(tmp_path):
    out = str(tmp_path / "d")
    classes = ["a", "b", "c", "d"]
    summary = generate(
        out,
        _cfg(events=400, classes=classes, unlabelled_fraction=0.25, size=8, frames=1, devices=5),
        progress=False,
    )
    events = _events(out)
    assert len(events) == 400 == summary["events"]
    assert len({e["event_id"] for e in events}) == 400
    unlabelled = [e for e in events if "label" not in e]
    assert summary["counts"]["unlabelled"] == len(unlabelled)
    assert 0.17 < len(unlabelled) / 400 < 0.33
    labels = [e["label"] for e in events if "label" in e]
    assert set(labels) == set(classes)
    assert {k: v for k, v in summary["counts"]["by_label"].items() if k in classes} == {
        c: labels.count(c) for c in classes
    }
    assert sum(summary["counts"]["by_class"].values()) == 400
    assert all(v > 50 for v in summary["counts"]["by_class"].values())
    assert {e["device_id"] for e in events} == {f"cam0{i}" for i in range(5)}
    stamps = [datetime.strptime(e["timestamp"], "%Y-%m-%dT%H:%M:%SZ") for e in events]
    assert stamps == sorted(stamps)
    with open(os.path.join(out, "simulator.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["parameters"]["classes"] == classes
    assert saved["counts"] == summary["counts"]
    assert set(saved["devices"]) == {f"cam0{i}" for i in range(5)}
    assert {d["photo"] for d in saved["devices"].values()} <= set(PHOTOS)


def test_label_noise_is_recorded_not_written(tmp_path):
    out = str(tmp_path / "n")
    cfg = _cfg(events=300, unlabelled_fraction=0.0, label_noise=0.3, size=8, frames=1)
    summary = generate(out, cfg, progress=False)
    events = _events(out)
    archetypes = archetypes_for(cfg.classes)
    wrong = sum(
        e["label"] != cfg.classes[render_event(cfg, i, archetypes).true_class] for i, e in enumerate(events)
    )
    assert wrong == summary["counts"]["noisy_labels"]
    assert 0.2 * 300 < wrong < 0.4 * 300
    assert sum(summary["counts"]["noisy_label_pairs"].values()) == wrong
    assert all(
        set(e) - {"best_frame"} == {"event_id", "device_id", "timestamp", "label", "frames"} for e in events
    )


def test_grayscale_8x8_single_frame(tmp_path):
    out = str(tmp_path / "g")
    generate(out, _cfg(frames=1, size=8, channels=1), progress=False)
    for e in _events(out):
        assert len(e["frames"]) == 1
        im = _frame(out, e["frames"][0])
        assert (im.mode, im.size) == ("L", (8, 8))


def test_rgb_64x64_four_frames_and_objects_move(tmp_path):
    out = str(tmp_path / "rgb")
    cfg = _cfg(
        events=40, frames=4, size=64, channels=3, classes=["empty", "vehicle"], unlabelled_fraction=0.0
    )
    generate(out, cfg, progress=False)
    local_change = {"empty": [], "vehicle": []}
    for i, e in enumerate(_events(out)):
        assert e["frames"] == [f"frames/{e['event_id']}/{k}.png" for k in range(4)]
        ims = [_frame(out, p) for p in e["frames"]]
        assert all((im.mode, im.size) == ("RGB", (64, 64)) for im in ims)
        gray = np.stack([np.asarray(im, dtype=np.float32).mean(-1) for im in ims])
        diff = np.abs(gray[-1] - gray[0])
        true = cfg.classes[render_event(cfg, i).true_class]
        # A moving object changes a region strongly; lighting, shake and noise change everything a bit.
        local_change[true].append(float(np.percentile(diff, 99) - 2 * np.median(diff)))
    assert len(local_change["empty"]) > 5 and len(local_change["vehicle"]) > 5
    assert np.median(local_change["vehicle"]) > 2 * np.median(local_change["empty"])


def test_frames_match_render_and_png_roundtrip(tmp_path):
    out = str(tmp_path / "p")
    cfg = _cfg(events=5, frames=3, size=20, channels=3)
    generate(out, cfg, progress=False)
    for i, e in enumerate(_events(out)):
        ev = render_event(cfg, i)
        for k, rel in enumerate(e["frames"]):
            np.testing.assert_array_equal(np.asarray(_frame(out, rel)), ev.frames[k])
    rng = np.random.default_rng(0)
    for shape in [(8, 8), (9, 13, 1), (7, 5, 3)]:
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        back = np.asarray(Image.open(io.BytesIO(encode_png(a))))
        np.testing.assert_array_equal(back.reshape(a.shape), a)


def test_preview_and_rerun_replaces_previous_output(tmp_path):
    out = str(tmp_path / "r")
    generate(out, _cfg(shards=3), progress=False)
    with Image.open(os.path.join(out, "preview.png")) as im:
        assert im.mode == "RGB" and im.size[0] > 200 and im.size[1] > 3 * 16
    generate(out, _cfg(shards=1, events=10), progress=False)
    assert sorted(os.listdir(out)) == [
        "events-00000-of-00001.jsonl",
        "frames",
        "preview.png",
        "simulator.json",
    ]
    assert len(os.listdir(os.path.join(out, "frames"))) == 10


def test_inline_frames_hold_the_same_pngs(tmp_path):
    files, inline = str(tmp_path / "files"), str(tmp_path / "inline")
    generate(files, _cfg(events=12), progress=False)
    generate(inline, _cfg(events=12, inline_frames=True), progress=False)
    assert not os.path.exists(os.path.join(inline, "frames"))
    for a, b in zip(_events(files), _events(inline), strict=True):
        assert {k: v for k, v in a.items() if k != "frames"} == {k: v for k, v in b.items() if k != "frames"}
        for rel, obj in zip(a["frames"], b["frames"], strict=True):
            with open(os.path.join(files, rel), "rb") as f:
                assert base64.b64decode(obj["b64"]) == f.read()


def test_visible_area_is_the_object_coverage_after_clipping_and_occlusion():
    s, k = 32, 4
    canvas = scenes._Canvas(np.zeros((3, k, s, s), np.float32))
    canvas.track_object(k)
    x = np.array([16.0, 31.0, 40.0, 16.0], np.float32)  # inside, half out, outside, inside
    canvas.paint(scenes._box(3, 3), x, np.full(k, 16.0, np.float32), (3, 3), np.ones(3, np.float32))
    canvas.layer = "occluder"  # a pole 4 px wide over x 14..18, in every frame
    canvas.paint(
        scenes._box(2, s),
        np.full(k, 16.0, np.float32),
        np.full(k, 16.0, np.float32),
        (2, 16),
        np.zeros(3, np.float32),
    )
    np.testing.assert_allclose(canvas.cover.sum(axis=(1, 2)), [12.0, 24.0, 0.0, 12.0], atol=1e-4)
    np.testing.assert_allclose(canvas.whole.sum(axis=(1, 2)), [36.0] * 4, atol=1e-4)  # no edge, no pole
    assert scenes.best_frame(canvas.cover.sum(axis=(1, 2)), canvas.whole.sum(axis=(1, 2))) == 1
    assert (
        scenes.best_frame(np.array([5.0, 9.9, 10.0, 2.0])) == 1
    )  # within 2% of the largest: a tie, earliest wins
    assert scenes.best_frame(np.array([0.0, 0.5, 0.2])) is None  # under a pixel: nothing visible
    assert scenes.best_frame(None) is None


def test_a_pose_does_not_decide_the_best_frame():
    """A swinging leg changes the object's area, not how much of it is hidden: all frames tie."""
    whole = np.array([40.0, 41.5, 42.5, 40.5])  # 6% apart: over the tie, a pose alone
    assert scenes.best_frame(whole, whole) == 0
    assert scenes.best_frame(whole) == 2  # by area alone the leg would name frame 2
    assert scenes.best_frame(whole * [0.5, 1.0, 1.0, 1.0], whole) == 1  # frame 0 half hidden
    assert scenes.best_frame(np.array([0.0, 3.0]), np.array([0.0, 30.0])) == 1  # 0/0 shows nothing


def _render_without_object(cfg, index, monkeypatch):
    """Event ``index`` as rendered, and again with its object painted on a scratch canvas (the same
    random draws, so everything else is identical); shadows are off in both."""
    monkeypatch.setattr(scenes._Canvas, "darken", lambda *a, **kw: None)
    shown = render_event(cfg, index)
    draw = scenes._draw_object

    def hidden(canvas, *args):
        draw(scenes._Canvas(canvas.img.copy()), *args)

    with monkeypatch.context() as m:
        m.setattr(scenes, "_draw_object", hidden)
        return shown, render_event(cfg, index)


def test_best_frame_is_the_frame_that_shows_most_of_the_object(monkeypatch):
    """Checked against the pixels: the frames differ from an object-free render where the object shows."""
    classes = ["empty", "person", "vehicle", "animal", "bird", "package", "ring"]
    cfg = _cfg(events=250, frames=4, size=32, classes=classes, seed=11)
    clear = hidden_frames = 0
    for i in range(cfg.events):
        shown, bare = _render_without_object(cfg, i, monkeypatch)
        area = shown.visible_area
        if classes[shown.true_class] == "empty":
            assert area is None and shown.best_frame is None
            np.testing.assert_array_equal(shown.frames, bare.frames)
            continue
        assert shown.best_frame == scenes.best_frame(area, shown.whole_area)
        assert np.all(area <= shown.whole_area + 1e-3)
        changed = (np.abs(shown.frames.astype(int) - bare.frames.astype(int)).max(axis=-1) >= 12).sum(
            axis=(1, 2)
        )
        for k in np.flatnonzero(area == 0):  # nothing of the object in this frame: no pixel differs
            assert changed[k] == 0
            hidden_frames += 1
        if shown.best_frame is not None:
            share = area / np.maximum(shown.whole_area, 1e-9)
            assert share[shown.best_frame] == pytest.approx(share.max(), rel=scenes.BEST_FRAME_TIE)
            assert changed[shown.best_frame] > 0
            top, second = np.sort(area)[::-1][:2]
            if top >= 4 and top > 1.15 * second:  # one frame clearly shows the most of it
                assert int(np.argmax(changed)) == shown.best_frame
                clear += 1
    assert clear >= 10 and hidden_frames >= 10  # the sample exercises both checks


def test_manifest_best_frame_matches_the_render(tmp_path):
    out = str(tmp_path / "b")
    cfg = _cfg(events=40, frames=3, classes=["empty", "package", "vehicle"])
    generate(out, cfg, progress=False, preview=False)
    seen = set()
    for i, e in enumerate(_events(out)):
        ev = render_event(cfg, i)
        assert e.get("best_frame") == ev.best_frame
        if cfg.classes[ev.true_class] == "empty":
            assert "best_frame" not in e
        else:
            seen.add(ev.best_frame)
            assert [k for k in e if k != "label"] == [
                "event_id",
                "device_id",
                "timestamp",
                "best_frame",
                "frames",
            ]
    assert {1, 2} <= seen  # packages appear after the first frame


@pytest.mark.parametrize(
    "change, message",
    [
        ({"events": 0}, "--events"),
        ({"size": 4}, "--size"),
        ({"channels": 2}, "--channels"),
        ({"classes": ["a", "a"]}, "duplicates"),
        ({"shards": 100}, "--shards"),
        ({"unlabelled_fraction": 1.5}, "--unlabelled-fraction"),
    ],
)
def test_bad_settings_raise_user_errors(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        generate(str(tmp_path / "x"), dataclasses.replace(_cfg(), **change), progress=False)


def test_cli_generate(tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = main(
        [
            "generate",
            "--out",
            out,
            "--events",
            "30",
            "--frames",
            "1",
            "--size",
            "8",
            "--channels",
            "1",
            "--classes",
            "empty,person",
            "--unlabelled-fraction",
            "0",
            "--seed",
            "3",
            "--shards",
            "3",
            "--no-progress",
            "--set",
            "simulator.devices=2",
        ]
    )
    assert rc == 0
    assert "wrote 30 events" in capsys.readouterr().out
    events = _events(out)
    assert len(events) == 30 and {e["label"] for e in events} == {"empty", "person"}
    assert {e["device_id"] for e in events} == {"cam00", "cam01"}
    with open(os.path.join(out, "simulator.json"), encoding="utf-8") as f:
        assert json.load(f)["parameters"]["seed"] == 3
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    rc = main(["generate", "--out", str(tmp_path / "busy"), "--events", "5", "--no-progress"])
    assert rc == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"

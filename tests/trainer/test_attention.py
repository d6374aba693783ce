"""The models' attention measured against the simulator's best frame: ingest keeps it,
evaluation scores it."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil

import apache_beam as beam
import eventdata as ed
import numpy as np
import pytest

from components.event_example_gen import beam_graph
from contract import layout
from contract.config import DataConfig, SimulatorConfig, StudentConfig
from simulator.writer import generate
from trainer import evaluate
from trainer.evaluate import Output, Predictions

pytestmark = pytest.mark.e2e

CLASSES = ["empty", "person", "package"]


def run_ingest(root, out):
    data = DataConfig()
    with beam.Pipeline() as p:
        beam_graph.build_ingest(p, str(root), data, str(out / "examples"), str(out / "quarantine"))
    return beam_graph.finish_outputs(str(out / "examples"), str(out / "quarantine"), data)


def manifest_records(root) -> list[dict]:
    return [json.loads(line) for f in sorted(glob.glob(os.path.join(root, "*.jsonl"))) for line in open(f)]


def example_files(examples) -> list[str]:
    return sorted(glob.glob(os.path.join(examples, "Split-*", "*.gz")))


def stored_best_frames(examples) -> dict[str, int]:
    """event_id -> the best_frame feature of every written example."""
    import tensorflow as tf

    out = {}
    for record in tf.data.TFRecordDataset(example_files(examples), compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        feats = example.features.feature
        out[feats[layout.EVENT_ID].bytes_list.value[0].decode()] = feats[layout.BEST_FRAME].int64_list.value[
            0
        ]
    return out


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """30 simulated 3-frame events plus one whose best_frame names a frame it does not have, ingested."""
    root = tmp_path_factory.mktemp("events")
    cfg = SimulatorConfig(
        events=30, frames=3, size=16, classes=CLASSES, unlabelled_fraction=0.2, seed=5, shards=1
    )
    generate(str(root), cfg, workers=1, progress=False, preview=False)
    records = manifest_records(root)
    bad = {**next(r for r in records if "best_frame" in r), "event_id": "bad-best", "best_frame": 3}
    ed.write_manifest(str(root), [bad], name="zz-injected.jsonl")
    out = tmp_path_factory.mktemp("ingested")
    summary = run_ingest(root, out)
    return root, out, records, summary


def test_ingest_keeps_best_frame_and_rejects_a_bad_one(ingested):
    root, out, records, summary = ingested
    assert summary["rejected_by_reason"] == {"bad_field": 1} and summary["accepted"] == 30
    (q,) = [json.loads(x) for f in glob.glob(str(out / "quarantine" / "quarantine-*")) for x in open(f)]
    assert q["reason"] == "bad_field" and q["event_id"] == "bad-best"
    assert "'best_frame'" in q["detail"] and "got 3" in q["detail"] and q["record"]["best_frame"] == 3
    want = {r["event_id"]: r.get("best_frame", layout.UNKNOWN_FRAME) for r in records}
    assert stored_best_frames(str(out / "examples")) == want
    assert {v for v in want.values() if v >= 0} and layout.UNKNOWN_FRAME in want.values()  # both kinds occur


def test_parse_batch_gives_best_frame_within_the_models_frames(ingested):
    _, out, records, _ = ingested
    want = {r["event_id"]: r.get("best_frame", layout.UNKNOWN_FRAME) for r in records}
    spec = layout.EventSpec.load(str(out / "examples"))
    short = layout.EventSpec(
        spec.classes, 2, spec.height, spec.width, spec.channels
    )  # the model sees frames 0, 1
    for s in (spec, short):
        got = {}
        for batch in layout.dataset(example_files(str(out / "examples")), s, 8):
            ids = [i.decode() for i in batch[layout.EVENT_ID].numpy()]
            got.update(zip(ids, batch[layout.BEST_FRAME].numpy().tolist(), strict=True))
        assert got == {k: (v if v < s.frames else -1) for k, v in want.items()}


def test_tfrecord_input_keeps_best_frame_and_folders_have_none(ingested, tmp_path):
    _, out, records, _ = ingested
    again = tmp_path / "records"
    again.mkdir()
    for f in example_files(str(out / "examples")):
        shutil.copy(f, again / (os.path.basename(os.path.dirname(f)) + ".tfrecord.gz"))
    assert run_ingest(again, tmp_path / "again")["accepted"] == 30
    assert stored_best_frames(str(tmp_path / "again" / "examples")) == stored_best_frames(
        str(out / "examples")
    )

    tree = tmp_path / "tree" / "person" / "ev0"
    tree.mkdir(parents=True)
    for k in range(2):
        (tree / f"{k}.png").write_bytes(ed.png(seed=k))
    assert run_ingest(tmp_path / "tree", tmp_path / "folder")["accepted"] == 1
    assert stored_best_frames(str(tmp_path / "folder" / "examples")) == {"ev0": layout.UNKNOWN_FRAME}


def test_best_frame_accuracy_on_a_constructed_case():
    weights = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]], np.float32
    )
    p = Predictions(
        labels=np.array([0, 1, -1, 2, 1]),
        logits=np.zeros((5, 3), np.float32),
        frame_weights=weights,
        best_frames=np.array([0, 2, 2, -1, 1]),
    )
    np.testing.assert_array_equal(p.named_frames, [0, 1, 2, 0, 2])
    assert p.best_frame_events() == 4
    assert p.best_frame_accuracy() == pytest.approx(2 / 4)  # events 0 and 2 (unlabelled counts too)
    unknown = Predictions(np.zeros(2, np.int64), np.zeros((2, 3)), weights[:2], np.array([-1, -1]))
    assert math.isnan(unknown.best_frame_accuracy()) and unknown.best_frame_events() == 0
    assert math.isnan(
        Predictions(np.zeros(1, np.int64), np.zeros((1, 3)), best_frames=np.array([1])).best_frame_accuracy()
    )
    named_only = Predictions(
        np.zeros(2, np.int64), np.zeros((2, 3)), best_frames=np.array([1, 0]), named_frames=np.array([1, 1])
    )
    assert named_only.best_frame_accuracy() == 0.5 and named_only.frame_weights is None


def test_predictor_results_in_every_form():
    logits, weights = np.ones((2, 3)), np.array([[0.1, 0.9], [0.6, 0.4]])
    for result in (
        Output(logits, weights),
        (logits, weights),
        {"logits": logits, "frame_weights": weights, "class_id": np.zeros(2)},
    ):
        out = evaluate.as_output(result)
        assert out.logits.dtype == np.float32 and out.frame_weights.dtype == np.float32
        np.testing.assert_array_equal(out.best_frame, [1, 0])
    bare = evaluate.as_output(logits)
    assert bare.frame_weights is None and bare.best_frame is None
    served = evaluate.as_output({"logits": logits, "best_frame": np.array([[1], [1]])})
    assert served.frame_weights is None and served.best_frame.tolist() == [1, 1]


def test_confidence_pick_names_the_frame_that_alone_is_surest_of_the_class():
    # A fake model that is confident in class (frame value) only: frame k alone "shows" class v[k].
    def predict(frames):
        values = frames[:, 0, 0, 0, 0].astype(int)  # every frame is frame k after the solo repeat
        logits = np.full((len(frames), 3), -5.0, np.float32)
        logits[np.arange(len(frames)), values] = 5.0
        return logits

    events = np.zeros((3, 3, 1, 1, 1), np.float32)
    events[0, :, 0, 0, 0] = [2, 1, 0]  # label 1 -> frame 1
    events[1, :, 0, 0, 0] = [0, 0, 2]  # label 2 -> frame 2
    events[2, :, 0, 0, 0] = [1, 1, 0]  # unlabelled, predicted 0 by the full model -> frame 2
    solo = evaluate.solo_frame_predictors("m", predict, 3)
    assert sorted(solo) == [f"{evaluate.SOLO_PREFIX}{k}_m" for k in range(3)]
    labels = np.array([1, 2, -1])
    preds = {name: Predictions(labels, f(events)) for name, f in solo.items()}
    preds["m"] = Predictions(labels, np.array([[0, 9, 0], [0, 0, 9], [9, 0, 0]], np.float32))
    np.testing.assert_array_equal(evaluate.confidence_pick(preds, "m", 3), [1, 2, 2])
    assert evaluate.confidence_pick({"m": preds["m"]}, "m", 3) is None  # no solo predictions: no pick


def test_tflite_predictor_returns_the_frame_weights(monkeypatch):
    class FakeClassifier:
        def __init__(self, model, num_threads=1):
            pass

        def prepare(self, frames):
            return frames

        def invoke(self, prepared):
            k = prepared.shape[0]
            weights = np.eye(k, dtype=np.float32)[int(prepared.mean() * 10) % k]
            return np.arange(3, dtype=np.float32), weights

    monkeypatch.setattr(evaluate, "LiteEventClassifier", FakeClassifier)  # the name evaluate runs
    out = evaluate.as_output(evaluate.tflite_predictor(b"")(np.full((2, 4, 2, 2, 1), 0.1, np.float32)))
    assert out.logits.shape == (2, 3) and out.frame_weights.shape == (2, 4)
    assert out.best_frame.tolist() == [1, 1]


def test_predict_split_scores_the_students_attention(ingested, tmp_path):
    """End to end on ingested events: an (untrained) student through Keras and its SavedModel."""
    import tf_keras as keras

    from trainer.models.export import export_saved_model
    from trainer.models.student import SCORE_LAYER, build_student

    _, out, records, _ = ingested
    examples = str(out / "examples")
    spec = layout.EventSpec.load(examples)
    files = example_files(examples)
    keras.utils.set_random_seed(3)
    student = build_student(spec, StudentConfig(filters=[8, 16], head_units=16, blocks_per_stage=1))
    scores = student.get_layer(SCORE_LAYER)  # untrained attention is nearly uniform: make it decisive
    kernel, bias = scores.get_weights()
    scores.set_weights([kernel * 1000.0, bias])
    export_saved_model(student, spec, str(tmp_path / "student"))
    preds = evaluate.predict_split(
        files,
        spec,
        {
            "keras": evaluate.keras_predictor(student),
            "saved_model": evaluate.saved_model_predictor(str(tmp_path / "student")),
            "logits_only": lambda frames: student(frames, training=False)["logits"].numpy(),
        },
        batch_size=8,
    )
    # Ground truth in the events' order, read the same way.
    truth = {r["event_id"]: r.get("best_frame", -1) for r in records}
    order = [i.decode() for b in layout.dataset(files, spec, 8) for i in b[layout.EVENT_ID].numpy()]
    keras_preds = preds["keras"]
    np.testing.assert_array_equal(keras_preds.best_frames, [truth[i] for i in order])
    assert keras_preds.frame_weights.shape == (30, spec.frames)
    np.testing.assert_allclose(keras_preds.frame_weights.sum(axis=1), 1.0, rtol=1e-5)
    known = keras_preds.best_frames >= 0
    assert keras_preds.best_frame_events() == int(known.sum()) > 0
    expected = np.mean(np.argmax(keras_preds.frame_weights, axis=1)[known] == keras_preds.best_frames[known])
    assert keras_preds.best_frame_accuracy() == pytest.approx(expected)

    served = preds["saved_model"]
    assert served.frame_weights is None and served.named_frames.shape == (30,)
    top2 = np.sort(keras_preds.frame_weights, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # where float noise cannot flip the argmax
    assert clear.sum() >= 20
    np.testing.assert_array_equal(served.named_frames[clear], keras_preds.named_frames[clear])
    np.testing.assert_allclose(served.logits, keras_preds.logits, atol=1e-4)

    bare = preds["logits_only"]  # a predictor of logits alone still works, and names no frame
    assert bare.named_frames is None and math.isnan(bare.best_frame_accuracy())
    assert bare.accuracy() == keras_preds.accuracy()
    np.testing.assert_array_equal(bare.best_frames, keras_preds.best_frames)


def test_tfrecord_best_frame_of_the_wrong_type_is_rejected_not_dropped(tmp_path):
    import tensorflow as tf

    from components.event_example_gen import checks, sources

    def example(event_id, **best):
        return layout.make_example(
            frames=[ed.png(seed=0), ed.png(seed=1)], height=8, width=8, channels=3, label=-1, label_name="a",
            event_id=event_id, device_id="cam01", timestamp="2026-01-05T12:00:00Z", **best,
        )  # fmt: skip

    odd = example("odd")
    odd.features.feature[layout.BEST_FRAME].Clear()
    odd.features.feature[layout.BEST_FRAME].bytes_list.value.append(b"1")
    with tf.io.TFRecordWriter(str(tmp_path / "events.tfrecord")) as w:
        for ex in (example("known", best_frame=1), example("unknown"), example("too-far", best_frame=2), odd):
            w.write(ex.SerializeToString())
    rules = checks.Rules(data_root=str(tmp_path), max_frames=4)
    (unit,) = sources.discover(str(tmp_path))
    results = {e.record["event_id"]: checks.check(e, rules) for e in sources.read_unit(unit, str(tmp_path))}
    assert results["known"].best_frame == 1 and results["unknown"].best_frame is None
    for name in ("too-far", "odd"):
        assert results[name].reason == checks.BAD_FIELD and "'best_frame'" in results[name].detail
    assert "bytes_list" in results["odd"].detail

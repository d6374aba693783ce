"""Productionize building blocks: distillation loss, pruning, gates, TFLite metadata, measurement.

Fast: no teacher training, tiny models. The whole Distiller -> LiteConverter chain is in
tests/trainer/test_productionize_pipeline.py.
"""

import gzip
import os
from typing import Any

import numpy as np
import pytest

from contract.config import StudentConfig
from contract.layout import EventSpec

pytestmark = pytest.mark.unit

SPEC = EventSpec(("a", "b", "c"), frames=2, height=8, width=8, channels=1)
# Wide enough that the pointwise kernels (32x64, 64x64) and the head pass MIN_PRUNABLE_WEIGHTS.
STUDENT = StudentConfig(filters=[32, 64], head_units=32, blocks_per_stage=2, epochs=1, batch_size=8)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -- distillation input ------------------------------------------------------------------------


def _epoch(ds, batches):
    """(label, logit, frame checksum) per event of ``batches`` batches, sorted."""
    rows = []
    for frames, targets in ds.take(batches):
        for f, y, t in zip(
            frames.numpy(), targets["label"].numpy(), targets["teacher_logits"].numpy(), strict=True
        ):
            rows.append((int(y), float(t[0]), round(float(f.sum()), 3)))
    return sorted(rows)


def test_decoded_cache_holds_exactly_the_streamed_events(tmp_path):
    """In memory or streamed from the files, a distillation epoch is the same events, each still
    paired with its own teacher logits; a budget too small for the data streams."""
    from productionize_fixtures import write_examples

    from contract import layout
    from trainer.distill import kd

    spec = EventSpec(("a", "b", "c"), frames=2, height=8, width=8, channels=1)
    root = write_examples(str(tmp_path / "ex"), spec, {layout.TRAIN: 24})
    files = sorted(str(p) for p in (tmp_path / "ex").glob("Split-train/*"))
    logits = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)  # logit[0] names the record
    assert root and kd.decoded_bytes(24, spec) == 2 * 24 * 2 * 8 * 8 * 4

    streamed = kd.distillation_dataset(files, logits, spec, 8, seed=3, cache_bytes=0)
    cached = kd.distillation_dataset(files, logits, spec, 8, seed=3, cache_bytes=10**6)
    in_order = kd.distillation_dataset(files, logits, spec, 8, shuffle=False, cache_bytes=10**6)
    assert _epoch(streamed, 3) == _epoch(cached, 3) == _epoch(in_order, 3)
    assert [float(t[0]) for _, tg in in_order for t in tg["teacher_logits"].numpy()] == list(logits[:, 0])
    # Endless and reshuffled: the second epoch is the same events in another order.
    stream = iter(cached)
    first = [r for _ in range(3) for r in next(stream)[1]["teacher_logits"].numpy()[:, 0]]
    for f in files:  # decoded once: later epochs never read the files again
        os.remove(f)
    second = [r for _ in range(3) for r in next(stream)[1]["teacher_logits"].numpy()[:, 0]]
    assert sorted(first) == sorted(second) and first != second


def test_each_pass_shows_every_event_as_its_next_view_with_that_views_teacher_outputs(tmp_path):
    """Consistent teaching: pass e over the events shows each one as augmented view e % V, the
    exact frames the teacher labelled for that view (same stateless seed), paired with that
    view's logits and best-frame pick; in memory or streamed alike, also where a batch spans two
    passes (10 events, batches of 4)."""
    import tensorflow as tf
    from productionize_fixtures import write_examples

    from contract import layout
    from trainer.data import augment_events
    from trainer.distill import kd

    write_examples(str(tmp_path / "ex"), SPEC, {layout.TRAIN: 10})
    files = sorted(str(p) for p in (tmp_path / "ex").glob("Split-train/*"))
    raw = np.concatenate([b[layout.FRAMES].numpy() for b in layout.dataset(files, SPEC, 64)])
    known = np.concatenate([b[layout.BEST_FRAME].numpy() for b in layout.dataset(files, SPEC, 64)])
    assert (known < 0).all()  # no known best frame: every event's is the teacher's pick
    views, events = 3, 10
    # logit[0] names (event, view)
    logits = np.arange(events * views * 3, dtype=np.float32).reshape(events, views, 3)
    picks = np.arange(events * views, dtype=np.int32).reshape(events, views) % SPEC.frames
    for cache_bytes in (0, 10**6):
        ds = kd.distillation_dataset(
            files, logits, SPEC, 4, seed=5, cache_bytes=cache_bytes, teacher_frames=picks, views=views
        )
        seen = []
        for frames, targets in ds.take(10):  # 40 events: passes 0-3
            outputs = (targets["teacher_logits"].numpy(), targets["best_frame"].numpy())
            for f, t, b in zip(frames.numpy(), *outputs, strict=True):
                event, view = divmod(int(t[0]) // 3, views)
                assert view == (len(seen) // events) % views
                assert b == (known[event] if known[event] >= 0 else picks[event, view])
                position = kd.view_positions(event, view, views)
                one = tf.constant(raw[event : event + 1])
                expected = augment_events(one, tf.reshape(position, [1]), 5, flip=False)
                np.testing.assert_allclose(f, expected.numpy()[0], atol=1e-6)
                seen.append(event)
        for p in range(4):  # every event once per pass
            assert sorted(seen[p * events : (p + 1) * events]) == list(range(events))
    shifted = augment_events(tf.constant(raw[:1]), tf.constant([0], tf.int64), 5, flip=False)
    assert not np.allclose(shifted, raw[:1])
    with pytest.raises(ValueError, match="hold 3 views per event"):
        kd.distillation_dataset(files, logits, SPEC, 4, views=2)


def test_teacher_labels_each_view_on_the_frames_the_student_will_see(tmp_path):
    """The teacher's logits for view v of an event are its logits on that augmented view, and
    views 0 is one view of the event as it is."""
    import tensorflow as tf
    import tf_keras as keras
    from productionize_fixtures import write_examples

    from contract import layout
    from trainer.data import augment_events
    from trainer.distill import kd
    from trainer.models.export import export_saved_model
    from trainer.models.student import build_student

    write_examples(str(tmp_path / "ex"), SPEC, {layout.TRAIN: 10})
    files = sorted(str(p) for p in (tmp_path / "ex").glob("Split-train/*"))
    keras.utils.set_random_seed(0)
    teacher = build_student(SPEC, STUDENT)
    head = teacher.get_layer("logits")  # a fresh head's logits are ~1e-6: scale them to ~1
    head.set_weights([w * 1e5 for w in head.get_weights()])
    export_saved_model(teacher, SPEC, str(tmp_path / "teacher"))
    raw = np.concatenate([b[layout.FRAMES].numpy() for b in layout.dataset(files, SPEC, 64)])

    plain, plain_frames = kd.teacher_soft_labels(str(tmp_path / "teacher"), files, SPEC, 4)
    assert plain.shape == (10, 1, 3) and plain_frames.shape == (10, 1)
    np.testing.assert_allclose(plain[:, 0], teacher(raw)["logits"].numpy(), atol=1e-3)
    viewed, _ = kd.teacher_soft_labels(str(tmp_path / "teacher"), files, SPEC, 4, views=2, seed=7)
    assert viewed.shape == (10, 2, 3)
    for view in range(2):
        positions = kd.view_positions(tf.range(10, dtype=tf.int64), view, 2)
        expected = teacher(augment_events(tf.constant(raw), positions, 7, flip=False))["logits"].numpy()
        np.testing.assert_allclose(viewed[:, view], expected, atol=1e-3)
    assert np.abs(plain).mean() > 0.05 and not np.allclose(viewed[:, 0], viewed[:, 1], atol=1e-2)


# -- distillation loss -------------------------------------------------------------------------
def test_distillation_loss_matches_hand_computed_values():
    from trainer.distill.kd import distillation_loss

    labels = np.array([0, 2, -1], np.int32)  # the last event is unlabelled
    student = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 0.0]], np.float32)
    teacher = np.array([[3.0, 0.0, -2.0], [0.0, 0.0, 2.0], [-1.0, 2.0, 0.5]], np.float32)
    t, alpha = 2.0, 0.3

    got = distillation_loss(labels, student, teacher, t, alpha).numpy()

    p_t, p_s = _softmax(teacher / t), _softmax(student / t)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)
    ce = -np.log(_softmax(student)[np.arange(3), np.maximum(labels, 0)])
    expected = alpha * ce * (labels >= 0) + (1 - alpha) * t * t * kl
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The unlabelled event is pure distillation: exactly (1 - alpha) T^2 KL.
    np.testing.assert_allclose(got[2], (1 - alpha) * t * t * kl[2], rtol=1e-5)


def test_distillation_loss_limits():
    from trainer.distill.kd import distillation_loss

    labels = np.array([1, 0], np.int32)
    logits = np.array([[0.3, 1.2, -0.4], [2.0, -1.0, 0.0]], np.float32)
    # A student equal to its teacher has zero KD loss; alpha=0 leaves nothing else.
    np.testing.assert_allclose(distillation_loss(labels, logits, logits, 4.0, 0.0).numpy(), 0.0, atol=1e-6)
    # alpha=1 is plain cross-entropy, whatever the teacher says.
    ce = -np.log(_softmax(logits)[[0, 1], labels])
    got = distillation_loss(labels, logits, -logits, 4.0, 1.0).numpy()
    np.testing.assert_allclose(got, ce, rtol=1e-5)
    # A disagreeing teacher costs more than an agreeing one.
    assert np.all(distillation_loss(labels, logits, -logits, 4.0, 0.5).numpy() > got * 0.5)


# -- student -----------------------------------------------------------------------------------
def test_student_outputs_and_size():
    import tf_keras as keras

    from trainer.models.student import build_student

    model = build_student(SPEC, STUDENT)
    out = model(np.random.default_rng(0).uniform(size=(3, *SPEC.input_shape)).astype(np.float32))
    assert out["logits"].shape == (3, 3)
    assert out["frame_weights"].shape == (3, 2)
    np.testing.assert_allclose(out["frame_weights"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    from contract.config import TeacherConfig
    from trainer.models.teacher import build_teacher

    demo = EventSpec(("empty", "person", "vehicle", "animal"), 4, 32, 32, 3)
    default = build_student(demo)
    assert default.count_params() <= 300_000  # "a few hundred thousand at most"
    teacher = build_teacher(demo, TeacherConfig())
    assert teacher.count_params() >= 20 * default.count_params()

    def conv_params(model: Any, heads: tuple[str, ...]) -> int:
        return sum(
            int(v.shape.num_elements()) for v in model.trainable_variables if not v.name.startswith(heads)
        )

    # The teacher is big where accuracy comes from: its backbone, not its fully-connected head.
    teacher_conv = conv_params(teacher, ("fc_", "logits", "attention"))
    assert teacher_conv >= 10 * conv_params(default, ("head", "logits", "frame_"))
    assert teacher_conv > teacher.count_params() / 2
    single = build_teacher(EventSpec(tuple("abc"), 1, 28, 28, 1), TeacherConfig())
    assert "event_contrast" not in [layer.name for layer in single.layers]  # one frame: no difference
    assert single.get_layer("conv_stem").kernel.shape[2] == 1
    half = build_student(SPEC, StudentConfig(filters=[32, 64], head_units=32, depth_multiplier=0.5))
    assert half.count_params() < model.count_params()
    assert all(
        isinstance(layer, (keras.layers.DepthwiseConv2D,))
        for layer in model.layers
        if layer.name.endswith("_dw")
    )


def test_student_stem_sees_what_moved():
    """FrameContrast is each frame minus its event's mean frame; the stem uses it, or not (config)."""
    import dataclasses

    from trainer.models.student import CONTRAST_LAYER, CONTRAST_STEM_LAYER, FrameContrast, build_student

    frames = np.random.default_rng(1).uniform(size=(3, *SPEC.input_shape)).astype(np.float32)
    folded = frames.reshape(-1, *SPEC.input_shape[1:])
    got = FrameContrast(SPEC.frames)(folded).numpy().reshape(frames.shape)
    np.testing.assert_allclose(got, frames - frames.mean(axis=1, keepdims=True), atol=1e-6)
    # A static scene has no contrast: every frame of an event identical -> all zeros.
    still = np.repeat(frames[:, :1], SPEC.frames, axis=1).reshape(folded.shape)
    np.testing.assert_allclose(FrameContrast(SPEC.frames)(still).numpy(), 0.0, atol=1e-6)

    with_contrast = build_student(SPEC, STUDENT)
    names = {layer.name for layer in with_contrast.layers}
    assert {CONTRAST_LAYER, CONTRAST_STEM_LAYER} <= names
    without = build_student(SPEC, dataclasses.replace(STUDENT, frame_contrast=False))
    assert CONTRAST_LAYER not in {layer.name for layer in without.layers}
    assert without.count_params() < with_contrast.count_params()
    # One frame: nothing can move and the contrast would be all zeros (no int8 range: the TFLite
    # converter aborted on the digits set), so the branch is left out.
    single = EventSpec(SPEC.classes, frames=1, height=8, width=8, channels=1)
    assert CONTRAST_LAYER not in {layer.name for layer in build_student(single, STUDENT).layers}


# -- pruning -----------------------------------------------------------------------------------
def test_plan_schedule_lands_on_target_step():
    from trainer.distill.prune import plan_schedule

    plan = plan_schedule(total_steps=100, target_sparsity=0.75, begin_fraction=0.1, end_fraction=0.8)
    assert plan.begin_step == 10
    assert (plan.end_step - plan.begin_step) % plan.frequency == 0
    assert plan.end_step <= 99
    with pytest.raises(ValueError):
        plan_schedule(100, 0.75, 0.8, 0.2)
    with pytest.raises(ValueError):
        plan_schedule(100, 1.0, 0.0, 0.5)


def test_pruning_reaches_target_sparsity_and_keeps_the_dense_model():
    import tensorflow as tf

    from trainer.distill import kd, prune
    from trainer.models.student import build_student

    rng = np.random.default_rng(1)
    n = 64
    frames = rng.uniform(size=(n, *SPEC.input_shape)).astype(np.float32)
    labels = rng.integers(-1, 3, size=n).astype(np.int32)
    teacher = rng.normal(size=(n, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((frames, {"label": labels, kd.TEACHER_LOGITS: teacher})).batch(8)

    student = build_student(SPEC, StudentConfig(filters=[32, 64], head_units=32, blocks_per_stage=1))
    dense_before = [w.copy() for w in student.get_weights()]
    plan = prune.plan_schedule(16, 0.75, 0.0, 0.5)
    pruning = prune.apply_pruning(student, plan)
    names = prune.pruned_layer_names(pruning)
    assert "logits" not in names and "frame_score" not in names and "stem" not in names
    assert set(names) == {"stage1_down_pw", "head"}  # the kernels of >= MIN_PRUNABLE_WEIGHTS (2048)
    # Wrapping copies the trained weights.
    np.testing.assert_array_equal(
        pruning.get_layer("prune_low_magnitude_stage1_down_pw").layer.kernel.numpy(),
        student.get_layer("stage1_down_pw").kernel.numpy(),
    )
    kd.distill(pruning, ds, steps=8, epochs=2, cfg=STUDENT, learning_rate=1e-3,
                callbacks=prune.pruning_callbacks())  # fmt: skip
    stripped = prune.strip(pruning)
    report = prune.sparsity_report(stripped, names)
    assert report["total"] == pytest.approx(0.75, abs=0.01)
    for layer in report["layers"].values():
        assert layer["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert 0 < report["all_weights"] < report["total"]
    # The dense student was not touched by pruning.
    for before, after in zip(dense_before, student.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


# -- parity ------------------------------------------------------------------------------------
def test_parity_gate_threshold():
    from trainer.lite.tflite import parity

    reference = np.array([0, 1, 2, 1] * 25)
    same = parity(reference, reference.copy(), 0.99)
    assert same.blessed and same.agreement == 1.0 and same.disagreements == 0
    off = reference.copy()
    off[:2] = (off[:2] + 1) % 3  # 98% agreement
    result = parity(reference, off, 0.99)
    assert not result.blessed and result.agreement == pytest.approx(0.98) and result.disagreements == 2
    assert not parity(np.array([]), np.array([]), 0.99).blessed  # no evidence, no blessing


# -- metadata ----------------------------------------------------------------------------------
def test_standard_metadata_is_read_alike_by_tflite_support_and_without_it(tmp_path):
    import json

    from tensorflow.lite.tools import flatbuffer_utils

    from ondevice.metadata import (
        EVENT_SPEC_FILE,
        LABELS_FILE,
        METADATA_NAME,
        MetadataError,
        metadata_entries,
        read_metadata,
    )
    from trainer.lite.tflite import (
        build_metadata,
        convert,
        display_metadata,
        embed_metadata,
        strip_internal_names,
    )
    from trainer.models.student import build_student

    model = build_student(SPEC, StudentConfig(filters=[8], head_units=8, blocks_per_stage=1))
    content = strip_internal_names(convert(model, SPEC, "float32"))
    meta = build_metadata(content, SPEC, "float32", {"note": "ünïcode"})
    tagged = embed_metadata(content, meta)
    assert read_metadata(tagged) == meta
    assert meta["labels"] == ["a", "b", "c"] and meta["input"]["shape"] == [1, 2, 8, 8, 1]
    assert meta["input"]["normalization"] == {"mean": [0.0], "std": [255.0]}

    # tflite-support's own reader sees the standard fields.
    shown = display_metadata(tagged)
    assert shown["files"][LABELS_FILE].decode().splitlines() == ["a", "b", "c"]
    subgraph = shown["metadata"]["subgraph_metadata"][0]
    (inp,) = subgraph["input_tensor_metadata"]
    assert inp["name"] == "frames"
    assert inp["process_units"][0]["options_type"] == "NormalizationOptions"
    assert inp["process_units"][0]["options"] == {"mean": [0.0], "std": [255.0]}
    logits_md = next(t for t in subgraph["output_tensor_metadata"] if t["name"] == "logits")
    assert [(f["name"], f["type"]) for f in logits_md["associated_files"]] == [
        (LABELS_FILE, "TENSOR_AXIS_LABELS")
    ]
    assert [f["name"] for f in shown["metadata"]["associated_files"]] == [EVENT_SPEC_FILE]
    # The metadata's output order is the subgraph's (not the signature's alphabetical one).
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(tagged))
    by_index = {t.tensorIndex: t.name.decode() for t in flat.signatureDefs[0].outputs}
    subgraph_order = [by_index[i] for i in flat.subgraphs[0].outputs]
    assert [t["name"] for t in subgraph["output_tensor_metadata"]] == subgraph_order
    assert list(read_metadata(tagged)["outputs"]) == subgraph_order
    # One source of truth: the event spec file holds no second copy of labels or normalization.
    doc = json.loads(shown["files"][EVENT_SPEC_FILE])
    assert "labels" not in doc and "normalization" not in doc["input"] and "classes" not in doc["event_spec"]
    assert doc["note"] == "ünïcode" and doc["input"]["frames"] == 2

    # The README's snippet, in a fresh interpreter of this venv (TensorFlow imported first, as in any
    # app of ours): tflite-support's MetadataDisplayer reads the labels and the event spec.
    import subprocess
    import sys

    path = tmp_path / "with_metadata.tflite"
    path.write_bytes(tagged)
    snippet = (
        "import tensorflow\n"
        "from tensorflow_lite_support.metadata.python.metadata import MetadataDisplayer\n"
        f"d = MetadataDisplayer.with_model_file({str(path)!r})\n"
        "print(sorted(d.get_packed_associated_file_list()))\n"
        "print(d.get_associated_file_buffer('labels.txt').decode().split())\n"
    )
    shown_by_tool = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300
    )
    assert shown_by_tool.returncode == 0, shown_by_tool.stderr[-2000:]
    assert shown_by_tool.stdout.split("\n")[:2] == [
        str(sorted([EVENT_SPEC_FILE, LABELS_FILE])),
        "['a', 'b', 'c']",
    ]

    # Re-embedding replaces the metadata instead of adding a second copy; converter entries survive.
    again = embed_metadata(tagged, {**meta, "variant": "x", "labels": ["p", "q", "r"]})
    names = [m.name for m in flatbuffer_utils.convert_bytearray_to_object(bytearray(again)).metadata]
    assert names.count(METADATA_NAME.encode()) == 1 and b"min_runtime_version" in names
    assert read_metadata(again)["variant"] == "x" and read_metadata(again)["labels"] == ["p", "q", "r"]
    assert METADATA_NAME not in metadata_entries(content)
    with pytest.raises(MetadataError, match="no TFLITE_METADATA"):
        read_metadata(content)
    with pytest.raises(MetadataError, match="not a TFLite model"):
        read_metadata(b"\x00" * 64)
    # Hostile files are a MetadataError, never a traceback or a memory blow-up: a flatbuffer cut
    # short, and an associated file that would inflate to far more than labels ever need.
    with pytest.raises(MetadataError):
        read_metadata(tagged[: len(tagged) // 3])
    import io
    import zipfile

    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(EVENT_SPEC_FILE, b"0" * (8 * 1024 * 1024))
    with pytest.raises(MetadataError, match="inflates to"):
        read_metadata(tagged + bomb.getvalue())  # the last archive in the file is the one read
    path = tmp_path / "m.tflite"
    path.write_bytes(tagged)
    assert read_metadata(str(path))["variant"] == "float32"


def test_metadata_reader_field_slots_match_tflite_support_schema():
    """The stdlib reader's slots are the generated code's vtable offsets: (offset - 4) / 2."""
    import inspect
    import re

    from tensorflow_lite_support.metadata import metadata_schema_py_generated as fb

    from ondevice import metadata as md

    def slot(cls, method):
        offset = int(
            re.search(r"Offset\((\d+)\)", inspect.getsource(getattr(getattr(fb, cls), method))).group(1)
        )
        return (offset - 4) // 2

    expected = {
        "_MM_NAME": ("ModelMetadata", "Name"), "_MM_DESCRIPTION": ("ModelMetadata", "Description"),
        "_MM_VERSION": ("ModelMetadata", "Version"), "_MM_SUBGRAPHS": ("ModelMetadata", "SubgraphMetadata"),
        "_MM_FILES": ("ModelMetadata", "AssociatedFiles"),
        "_MM_MIN_PARSER": ("ModelMetadata", "MinParserVersion"),
        "_SG_INPUTS": ("SubGraphMetadata", "InputTensorMetadata"),
        "_SG_OUTPUTS": ("SubGraphMetadata", "OutputTensorMetadata"),
        "_TM_NAME": ("TensorMetadata", "Name"), "_TM_DESCRIPTION": ("TensorMetadata", "Description"),
        "_TM_PROCESS_UNITS": ("TensorMetadata", "ProcessUnits"),
        "_TM_FILES": ("TensorMetadata", "AssociatedFiles"),
        "_PU_OPTIONS_TYPE": ("ProcessUnit", "OptionsType"), "_PU_OPTIONS": ("ProcessUnit", "Options"),
        "_NORM_MEAN": ("NormalizationOptions", "Mean"), "_NORM_STD": ("NormalizationOptions", "Std"),
        "_AF_NAME": ("AssociatedFile", "Name"), "_AF_DESCRIPTION": ("AssociatedFile", "Description"),
        "_AF_TYPE": ("AssociatedFile", "Type"),
    }  # fmt: skip
    assert {name: getattr(md, name) for name in expected} == {
        name: slot(*where) for name, where in expected.items()
    }
    assert md.TENSOR_AXIS_LABELS == fb.AssociatedFileType.TENSOR_AXIS_LABELS
    assert md.NORMALIZATION_OPTIONS == fb.ProcessUnitOptions.NormalizationOptions


# -- measurement -------------------------------------------------------------------------------
def test_sizes_and_flops_are_sane(tmp_path):
    import tf_keras as keras

    from trainer.lite import measure

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "zeros.bin").write_bytes(b"\x00" * 10000)
    (tmp_path / "d" / "random.bin").write_bytes(os.urandom(5000))
    sizes = measure.path_bytes(str(tmp_path / "d"))
    assert sizes["raw"] == 15000
    assert 5000 < sizes["gzipped"] < 15000
    single = measure.path_bytes(str(tmp_path / "d" / "zeros.bin"))
    assert single["raw"] == 10000 and single["gzipped"] == len(gzip.compress(b"\x00" * 10000, 9, mtime=0))

    inputs = keras.Input((2, 10))
    model = keras.Model(inputs, keras.layers.Dense(20)(keras.layers.Flatten()(inputs)))
    # MatMul [1,20]x[20,20] = 2*20*20 FLOPs plus 20 bias adds.
    assert measure.keras_flops_per_event(model, (2, 10)) == 2 * 20 * 20 + 20
    assert measure.count_params(model) == 20 * 20 + 20
    stats = measure.summarize([0.001] * 98 + [0.010, 0.020])
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["p99_ms"] > 9.0 and stats["runs"] == 100


def test_uint8_input_takes_camera_pixels_unchanged():
    from ondevice.runtime import LiteEventClassifier
    from trainer.lite.tflite import convert_variant
    from trainer.models.student import build_student

    model = build_student(SPEC, StudentConfig(filters=[8], head_units=8, blocks_per_stage=1))
    rng = np.random.default_rng(0)
    representative = [rng.uniform(size=(1, *SPEC.input_shape)).astype(np.float32) for _ in range(8)]
    representative[0].reshape(-1)[:2] = [0.0, 1.0]  # what representative_events does: pin [0, 1]
    lite_model = convert_variant(model, SPEC, "int8", representative=representative, input_type="uint8")
    assert lite_model.metadata["input"]["dtype"] == "uint8"
    assert lite_model.metadata["input"]["quantization"]["zero_point"] == 0
    classifier = LiteEventClassifier(lite_model.content)
    pixels = rng.integers(0, 256, size=SPEC.input_shape).astype(np.uint8)
    prepared = classifier.prepare_pixels(pixels)
    assert prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared.reshape(SPEC.input_shape), pixels)  # q = pixel exactly
    out = classifier.classify(pixels / 255.0)
    assert out["class_name"] in SPEC.classes and out["probabilities"].sum() == pytest.approx(1.0, rel=1e-5)


def test_converter_native_logs_are_kept_off_the_terminal_unless_conversion_fails(capfd):
    from trainer.lite.tflite import convert
    from trainer.models.student import build_student

    model = build_student(SPEC, StudentConfig(filters=[8], head_units=8, blocks_per_stage=1))
    capfd.readouterr()
    assert convert(model, SPEC, "float16")[4:8] == b"TFL3"
    out, err = capfd.readouterr()
    assert "W0000" not in err and "Ignored output_format" not in err + out

    wrong_shape = [np.zeros((1, 3, 5, 5, 1), np.float32)]  # not the model's [1, 2, 8, 8, 1]
    with pytest.raises(RuntimeError, match="TFLite int8 conversion failed"):
        convert(model, SPEC, "int8", representative=wrong_shape)

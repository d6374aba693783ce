"""Self-supervised pre-training of the teacher's backbone: the pretext learns, the teacher starts
from it and exports as before, hybrid computes what single does, and the pipeline's Pretrainer is
recorded in ML Metadata as the TeacherTrainer's input."""

import json
import os
import subprocess
import sys

import numpy as np
import productionize_fixtures as fx
import pytest
from repo import REPO

from contract import layout
from contract.config import Config, ConfigError, PretrainConfig, check_pretrain, pretrain_problems
from contract.errors import UserError
from contract.layout import EventSpec

SPEC = EventSpec(fx.CLASSES, frames=2, height=12, width=12, channels=3)


def tiny_config(strategy: str = "single") -> Config:
    cfg = Config()
    for key, value in {
        "teacher.strategy": strategy, "teacher.conv_filters": [8, 16], "teacher.fc_units": [32, 32],
        "teacher.stem_stride": 1, "teacher.logical_devices": 2, "teacher.mesh": "batch=1,model=2",
        "teacher.global_batch_size": 16,
        # 8 and 16 channels: 32 groups would be one channel each, under which this 40-step
        # pretext task barely moves (docs/benchmarks.md, "Teacher: patience while annealing");
        # the production widths need 32 (test_the_pretext_learns_at_the_production_teacher_widths).
        "teacher.norm_groups": 8,
        "pretrain.steps": 40, "pretrain.batch": 16, "pretrain.projection_units": [32, 16],
    }.items():  # fmt: skip
        cfg.set(key, value)
    return cfg


def three_cameras(root: str, spec: EventSpec) -> str:
    """Three cameras of 32 events: camera negatives (the default) group them, a batch of 16 from each."""
    return fx.write_examples(root, spec, {"train": 32, "eval": 24, "unlabelled": 64}, devices=3)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Examples with an unlabelled majority, and a backbone pre-trained on them (single).

    Training runs in a child process, as the pipeline runs it: in-process it would switch this
    test process's Keras to its tf.random.Generator mode and change every later test's models.
    """
    from trainer.parallel import launch

    root = tmp_path_factory.mktemp("pretrain")
    examples = three_cameras(str(root / "examples"), SPEC)
    cfg = tiny_config()
    report = launch.pretrain(
        cfg, examples, str(root / "run"), export_dir=str(root / "backbone"), log=lambda line: None
    )
    return root, examples, cfg, report


@pytest.mark.unit
def test_bad_pretrain_fields_are_named():
    bad = PretrainConfig(temperature=0, batch=1, augmentations=["flip", "rotate"], projection_units=[8],
                         negatives="anywhere")  # fmt: skip
    text = "; ".join(pretrain_problems(bad))
    for field in ("pretrain.temperature", "pretrain.batch", "pretrain.augmentations", "'rotate'",
                  "pretrain.projection_units",
                  "pretrain.negatives must be one of camera, batch, got 'anywhere'"):  # fmt: skip
        assert field in text
    text = "; ".join(pretrain_problems(PretrainConfig(temperature=0.05, epochs=float("nan"))))
    assert "pretrain.temperature must be >= 0.1" in text and "pretrain.epochs" in text
    cfg = Config()
    cfg.set("teacher.strategy", "multiworker")
    with pytest.raises(ConfigError, match="pretrain.strategy"):
        check_pretrain(cfg)
    cfg.set("pretrain.strategy", "single")
    check_pretrain(cfg)  # an explicit strategy overrides the teacher's
    with pytest.raises(ConfigError, match="pretrain.strategy"):
        check_pretrain(Config.from_dict({"pretrain": {"strategy": "mirrored"}}))
    # Hybrid's sizes against the teacher's mesh, before any process starts (not after ingest).
    cfg = Config.from_dict({"teacher": {"mesh": "batch=2,model=4", "fc_layout": "2d"},
                            "pretrain": {"strategy": "hybrid", "batch": 5,
                                         "projection_units": [30, 16]}})  # fmt: skip
    with pytest.raises(ConfigError) as error:
        check_pretrain(cfg)
    assert "pretrain.batch 5 must be a multiple of the batch axis (2)" in str(error.value)
    assert "pretrain.projection_units [30, 16]" in str(error.value) and "model axis (4)" in str(error.value)
    cfg.set("pretrain.batch", 6)
    cfg.set("pretrain.projection_units", [32, 16])
    check_pretrain(cfg)
    assert Config().pretrain.enabled is False  # the default pipeline is unchanged


@pytest.mark.unit
def test_camera_negatives_batch_events_of_one_camera(tmp_path):
    """Every batch holds one camera's events (the negatives share the background) and never the
    same event twice, every event comes round, cameras too small for a group of their own are
    batched together, and ``batch`` negatives mix cameras."""
    import tensorflow as tf

    from trainer.pretrain.views import camera_groups, event_batches, events_per_camera

    # cam00..cam02 with 10 events each, plus cam03/cam04 with 3 each (too few for batches of 4).
    big = fx.write_examples(str(tmp_path / "big"), SPEC, {"train": 30}, devices=3)
    small = fx.write_examples(str(tmp_path / "small"), SPEC, {"unlabelled": 6}, devices=2)
    for path in layout.split_files(small, layout.UNLABELLED_SPLIT):  # rename cam00/01 -> cam03/04
        records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path, "GZIP")]
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            for r in records:
                ids = r.features.feature[layout.DEVICE_ID].bytes_list.value
                ids[:] = [b"cam0" + bytes([ord("3") + int(ids[0][-1:])])]
                w.write(r.SerializeToString())
    files = layout.split_files(big, layout.TRAIN) + layout.split_files(small, layout.UNLABELLED_SPLIT)
    events = events_per_camera(files)
    groups = camera_groups(events, batch_size=4)
    assert sorted(groups) == [b"cam00", b"cam01", b"cam02"] and len(set(groups.values())) == 3
    assert events[b"cam03"] == events[b"cam04"] == 3
    fields = {
        layout.DEVICE_ID: tf.io.FixedLenFeature([], tf.string),
        layout.EVENT_ID: tf.io.FixedLenFeature([], tf.string),
    }

    def read(grouped: bool, batches: int) -> list[tuple[set[bytes], list[bytes]]]:
        out = []
        for _, serialized in event_batches(files, batch_size=4, seed=0, epoch_size=36,
                                           groups=groups if grouped else None).take(batches):  # fmt: skip
            parsed = tf.io.parse_example(serialized, fields)
            out.append(
                (set(parsed[layout.DEVICE_ID].numpy().tolist()), parsed[layout.EVENT_ID].numpy().tolist())
            )
        return out

    grouped = read(True, 27)  # three epochs' worth
    for cameras, ids in grouped:
        assert cameras <= {b"cam03", b"cam04"} or len(cameras) == 1, cameras
        assert len(set(ids)) == len(ids), ids  # a repeat would be a false negative
    assert {i for _, ids in grouped for i in ids} == {f"train-{i:06d}".encode() for i in range(30)} | {
        f"unlabelled-{i:06d}".encode() for i in range(6)}  # fmt: skip
    assert any(len(c) > 1 for c, _ in read(False, 8))


@pytest.mark.e2e
def test_pretext_loss_falls_and_the_backbone_moves(pretrained):
    root, _, cfg, report = pretrained
    assert report["events"] == {"train": 32, "unlabelled": 64, "total": 96, "eval_held_out": True}
    assert len(report["losses"]) == cfg.pretrain.steps
    assert report["initial_loss"] == pytest.approx(report["chance_loss"], abs=0.3)  # starts near chance
    assert report["final_loss"] < report["initial_loss"] - 0.02, report["losses"]
    assert report["backbone_relative_change"] > 0.01
    assert os.path.exists(report["plots"]["pretrain_curve"])
    with np.load(report["backbone"]) as stored:
        assert "conv_stem/0" in stored.files and not any(k.startswith("proj") for k in stored.files)


@pytest.mark.e2e
def test_the_pretext_learns_at_the_production_teacher_widths(tmp_path):
    """The default teacher's backbone (every conv width and norm as shipped) leaves chance.

    With 8 norm groups it did not: every frame got nearly the same embedding from the start, and
    the loss sat at chance for all 800 pre-training steps of the reduced `make bench-labels`
    (docs/benchmarks.md, "Label efficiency", 2026-12-05); on these events, too, for all 80 steps.
    """
    from trainer.parallel import launch

    examples = three_cameras(
        str(tmp_path / "examples"), EventSpec(fx.CLASSES, frames=2, height=32, width=32, channels=3)
    )
    cfg = Config.from_dict({"teacher": {"strategy": "single"}, "pretrain": {"steps": 80, "batch": 16}})
    report = launch.pretrain(
        cfg, examples, str(tmp_path / "run"), export_dir=str(tmp_path / "backbone"), log=lambda line: None
    )
    assert report["final_loss"] < report["chance_loss"] - 0.2, (report["chance_loss"], report["losses"])


@pytest.mark.e2e
def test_a_teacher_starts_from_the_backbone_trains_and_exports(pretrained):
    from trainer.models.teacher import backbone_layers, build_teacher
    from trainer.parallel import launch
    from trainer.pretrain.model import load_backbone

    root, examples, cfg, report = pretrained
    teacher = build_teacher(SPEC, cfg.teacher)
    names = load_backbone(teacher, str(root / "backbone"), cfg.teacher)
    assert names == [layer.name for layer in backbone_layers(teacher)] and "conv_stem" in names
    with np.load(report["backbone"]) as stored:
        np.testing.assert_array_equal(teacher.get_layer("conv_stem").get_weights()[0], stored["conv_stem/0"])

    cfg.set("teacher.steps", 8)
    cfg.set("teacher.logical_devices", 1)
    out = launch.train(cfg, examples, str(root / "teacher"), export_dir=str(root / "teacher_model"),
                       log=lambda line: None, init_backbone=str(root / "backbone"))  # fmt: skip
    assert out["pretrained_backbone"]["layers"] == names
    assert os.path.exists(root / "teacher_model" / "saved_model.pb")
    assert 0 <= out["final_eval_accuracy"] <= 1

    other = Config()
    other.set("teacher.conv_filters", [4, 8])
    with pytest.raises(UserError, match="teacher.conv_filters"):
        load_backbone(build_teacher(SPEC, other.teacher), str(root / "backbone"), other.teacher)
    other = Config()
    other.set("teacher.norm_groups", 2 * cfg.teacher.norm_groups)  # the same weights, another function
    with pytest.raises(UserError, match="norm_groups"):
        load_backbone(build_teacher(SPEC, other.teacher), str(root / "backbone"), other.teacher)


@pytest.mark.e2e
def test_hybrid_pretraining_computes_what_single_does(pretrained):
    """One child process, 2 logical devices: backbone data parallel, projection head sharded."""
    from trainer.parallel import launch

    root, examples, _, single = pretrained
    cfg = tiny_config("hybrid")  # the same steps, so the same learning-rate schedule
    hybrid = launch.pretrain(cfg, examples, str(root / "hybrid"), export_dir=None, log=lambda line: None)
    assert hybrid["strategy"] == "hybrid" and hybrid["mesh"] == {"devices": 2}
    np.testing.assert_allclose(hybrid["losses"], single["losses"], rtol=1e-4)


@pytest.mark.e2e
def test_pipeline_with_pretrain_records_the_pretrainer_and_its_lineage_to_the_teacher(tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    from contract.config import SimulatorConfig
    from pipeline import outputs, runners
    from simulator.writer import generate

    generate(
        str(tmp_path / "events"),
        SimulatorConfig(events=96, frames=2, size=12, classes=["empty", "person", "vehicle"],
                        unlabelled_fraction=0.5, seed=2),
        workers=1, progress=False, preview=False,
    )  # fmt: skip
    work = tmp_path / "work"
    args = [
        "run", "--data", str(tmp_path / "events"), "--workdir", str(work), "--through", "train", "--pretrain",
        "--strategy", "single", "--set", "teacher.steps=6", "--set", "teacher.conv_filters=8,16",
        "--set", "teacher.fc_units=32,32", "--set", "teacher.global_batch_size=16",
        "--set", "pretrain.steps=10", "--set", "pretrain.batch=16",
        "--set", "pretrain.projection_units=32,16",
        "--set", "gates.min_accuracy=0", "--set", "gates.min_class_accuracy=0",
    ]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Pretrainer" in result.stdout and "NT-Xent" in result.stdout

    report = json.loads((work / "report.json").read_text())
    pre = report["pretrain"]
    assert pre["steps"] == 10 and len(pre["losses"]) == 10 and pre["events"]["unlabelled"] > 0
    assert pre["events"]["total"] == pre["events"]["train"] + pre["events"]["unlabelled"]
    assert os.path.exists(pre["plots"]["pretrain_curve"])
    train_report = json.loads(open(report["teacher"]["train_report"]).read())
    assert train_report["pretrained_backbone"]["path"].startswith(
        pre["backbone"].rsplit("/Format-Serving", 1)[0]
    )

    cfg = Config()
    cfg.set("run.workdir", str(work))
    connection = runners.metadata_connection(cfg)
    found = outputs.latest_run(connection)
    assert found["Pretrainer"].state == "COMPLETE" and found["TeacherTrainer"].state == "COMPLETE"
    store = outputs.open_store(connection)
    [model] = store.get_artifacts_by_uri(found["Pretrainer"].uris["model"][0])
    readers = {
        e.execution_id
        for e in store.get_events_by_artifact_ids([model.id])
        if e.type == metadata_store_pb2.Event.INPUT
    }
    assert (
        found["TeacherTrainer"].execution_id in readers
    )  # the teacher's base_model is the Pretrainer's model
    inputs = store.get_events_by_execution_ids([found["TeacherTrainer"].execution_id])
    assert any(e.artifact_id == model.id and e.path.steps[0].key == "base_model" for e in inputs)
    assert layout.TRAIN in pre["events"]


@pytest.mark.unit
def test_a_backbone_saved_before_norm_groups_existed_loads_only_into_an_eight_group_teacher(tmp_path):
    from contract.config import TeacherConfig
    from trainer.models.teacher import build_teacher
    from trainer.pretrain.model import BACKBONE_INFO, load_backbone, save_backbone

    old = TeacherConfig(conv_filters=[8, 16], fc_units=[8], norm_groups=8)
    save_backbone(build_teacher(SPEC, old), str(tmp_path), SPEC, old, {})
    info_path = tmp_path / BACKBONE_INFO
    info = json.loads(info_path.read_text())
    del info["norm_groups"]  # as written before the field existed
    info_path.write_text(json.dumps(info))
    assert load_backbone(build_teacher(SPEC, old), str(tmp_path), old)
    new = TeacherConfig(conv_filters=[8, 16], fc_units=[8], norm_groups=32)
    with pytest.raises(UserError, match="norm_groups"):
        load_backbone(build_teacher(SPEC, new), str(tmp_path), new)

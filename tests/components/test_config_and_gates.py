"""The typed config (defaults < file < --set < flags) and the pure gate decisions."""

import json

import pytest

from components.gates.ingest import ingest_verdict as verdict
from components.gates.release import decide
from contract.config import Config, ConfigError, load_config, parse_mesh
from pipeline.cli import build_parser

pytestmark = pytest.mark.unit


def test_precedence_defaults_file_set_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"teacher": {"steps": 11, "seed": 5}, "data": {"classes": ["x", "y"]}}))
    args = build_parser().parse_args(
        [
            "validate",
            "--config",
            str(path),
            "--set",
            "teacher.steps=22",
            "--set",
            "data.max_frames=3",
            "--max-frames",
            "9",
        ]
    )
    cfg = load_config(args)
    assert cfg.teacher.steps == 22  # --set beats the file
    assert cfg.teacher.seed == 5  # the file beats defaults
    assert cfg.data.classes == ["x", "y"]
    assert cfg.data.max_frames == 9  # the dedicated flag beats --set
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg  # round trip


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("teacher.nope", "1", "teacher has:"),
        ("nosection.x", "1", "sections:"),
        ("teacher.steps", "many", "cannot use 'many' as int"),
        ("run.enable_cache", "maybe", "as bool"),
    ],
)
def test_bad_overrides_say_what_is_wrong(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config().set(key, value)


def test_list_and_bool_coercion():
    cfg = Config()
    cfg.apply_overrides(["data.classes=a, b ,c", "teacher.fc_units=64,32", "run.enable_cache=false"])
    assert (
        cfg.data.classes == ["a", "b", "c"]
        and cfg.teacher.fc_units == [64, 32]
        and cfg.run.enable_cache is False
    )


def test_parse_mesh():
    assert parse_mesh("batch=2,model=2") == {"batch": 2, "model": 2}
    for bad in ("batch=2", "batch=x,model=2", "batch=2,model=0", "rows=2,cols=2"):
        with pytest.raises(ConfigError):
            parse_mesh(bad)


SUMMARY = {
    "read": 100,
    "rejected": 3,
    "rejected_by_reason": {"bad_timestamp": 3},
    "splits": {"train": 80, "eval": 17},
}


def test_ingest_verdict_passes_within_rate_and_names_reasons_beyond():
    assert verdict(SUMMARY, [], 0.05, "/q")["blessed"]
    v = verdict(SUMMARY, [], 0.02, "/q")
    assert not v["blessed"] and "bad_timestamp=3" in v["problems"][0] and "/q" in v["problems"][0]


def test_ingest_verdict_blocks_anomalies_and_missing_eval():
    anomaly = {"split": "eval", "feature": "frames", "short": "s", "detail": "Unexpected type"}
    assert "frames" in verdict(SUMMARY, [anomaly], 0.05, "/q")["problems"][0]
    no_eval = dict(SUMMARY, splits={"train": 97})
    assert "both train and eval" in verdict(no_eval, [], 0.05, "/q")["problems"][0]


def gate(**kw):
    args = dict(
        teacher_accuracy=0.9, student_accuracy=0.88, failures=[], teacher_blessed=True, student_blessed=True,
        lite={"blessed": True, "agreement": 1.0, "min_agreement": 0.99}, infra_blessed=True,
        max_student_drop=0.05,
    )  # fmt: skip
    args.update(kw)
    return decide(**args)


def test_release_gate_blesses_a_good_student():
    result = gate()
    assert result["blessed"] and result["problems"] == [] and result["failures"] == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"student_accuracy": 0.80}, "student vs teacher: sparse_categorical_accuracy on the overall slice "
                                     "is 0.800 for the student, "
                                     "below (1 - 0.05) x the teacher's 0.900 = 0.855"),
        ({"student_blessed": False}, "student: TFMA did not bless it"),
        ({"teacher_blessed": False}, "teacher: TFMA did not bless it"),
        ({"failures": [{"model": "teacher", "message": "teacher: sparse_categorical_accuracy ... (TFMA)"}]},
         "teacher: sparse_categorical_accuracy ... (TFMA)"),
        ({"lite": {"blessed": False, "agreement": 0.9, "min_agreement": 0.99, "events": 300,
                   "reference": "student_qat"}},
         "int8 TFLite: top-1 agreement with student_qat is 90.0% of 300 events (train, unlabelled and eval), "
         "below lite.min_agreement 99.0%"),
        ({"lite": {"blessed": False, "agreement": 1.0, "min_agreement": 0.99, "events": 300,
                   "float16": {"agreement": 0.98, "min_agreement": 0.99, "events": 300}}},
         "float16 TFLite: top-1 agreement with the float student is 98.0% of 300 events "
         "(train, unlabelled and eval)"),
        ({"infra_blessed": False}, "ServingValidator"),
    ],
)  # fmt: skip
def test_release_gate_blocks_each_failure(change, words):
    result = gate(**change)
    assert not result["blessed"]
    assert any(words in p for p in result["problems"]), result["problems"]


def test_student_vs_teacher_failure_is_structured():
    [failure] = gate(student_accuracy=0.80)["failures"]
    assert (failure["model"], failure["metric"], failure["slice"], failure["kind"]) == (
        "student",
        "sparse_categorical_accuracy",
        "overall",
        "student_vs_teacher",
    )
    assert failure["value"] == 0.80 and failure["threshold"]["baseline"] == 0.9
    assert failure["threshold"]["lower_bound"] == pytest.approx(0.855)
    assert failure["threshold"]["allowed_relative_change"] == -0.05


def test_per_class_floor_is_its_own_setting():
    from components.gates.accuracy import eval_config
    from contract.config import GateConfig

    gates = GateConfig(min_accuracy=0.7, min_class_accuracy=0.4, max_regression=0.02)
    [overall, per_class] = (
        eval_config(gates, with_baseline=True).metrics_specs[0].metrics[0].per_slice_thresholds
    )
    assert list(overall.slicing_specs[0].feature_keys) == []  # the overall slice only
    assert overall.threshold.value_threshold.lower_bound.value == pytest.approx(0.7)
    assert overall.threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    assert list(per_class.slicing_specs[0].feature_keys) == ["label_name"]
    assert per_class.threshold.value_threshold.lower_bound.value == pytest.approx(0.4)
    assert not per_class.threshold.HasField("change_threshold")
    first = eval_config(gates, with_baseline=False).metrics_specs[0].metrics[0].per_slice_thresholds[0]
    assert not first.threshold.HasField("change_threshold")


# -- components.gates.release.decide_on_accuracies: the same verdict on plain numbers (benchmarks) -----
def test_decide_on_accuracies_applies_the_pipeline_gates_to_numbers():
    from components.gates.release import decide_on_accuracies
    from contract.config import GateConfig

    gates = GateConfig(min_accuracy=0.6, min_class_accuracy=0.5, max_student_drop=0.05, max_regression=0.02)
    first = decide_on_accuracies(0.90, 0.86, gates)  # 0.86 >= 0.95 x 0.90 = 0.855; no baseline yet
    assert first["blessed"] and first["problems"] == [] and first["regression"].startswith("skipped")
    low = decide_on_accuracies(teacher_accuracy=0.62, student_accuracy=0.59, gates=gates)
    assert (
        low["problems"][0]
        == "student: sparse_categorical_accuracy on the overall slice is 0.590, below the floor 0.600"
    )
    assert len(low["problems"]) == 1  # 0.59 >= 0.95 x 0.62 = 0.589: only the floor
    assert not decide_on_accuracies(0.90, 0.85, gates)["blessed"]  # below 0.855
    regressed = decide_on_accuracies(0.90, 0.86, gates, baseline_accuracy=0.89)
    assert regressed["problems"] == [
        "student: sparse_categorical_accuracy on the overall slice changed by -0.030 "
        "against the last blessed student (0.890), more than the allowed -0.020"
    ]
    assert regressed["failures"][0]["kind"] == "regression"
    assert decide_on_accuracies(0.90, 0.88, gates, baseline_accuracy=0.89)["blessed"]


def test_decide_on_accuracies_checks_every_class_it_is_given():
    from components.gates.release import decide_on_accuracies
    from contract.config import GateConfig

    gates = GateConfig(min_accuracy=0.5, min_class_accuracy=0.5)
    per_class = {"person": 0.95, "animal": 0.43, "vehicle": 0.9}
    refused = decide_on_accuracies(0.762, 0.75, gates, teacher_class_accuracy=per_class)
    assert refused["problems"] == [
        "teacher: sparse_categorical_accuracy on slice label_name=animal is 0.430, "
        "below the per-class floor 0.500"
    ]
    [failure] = refused["failures"]
    assert (failure["model"], failure["slice"], failure["kind"]) == (
        "teacher",
        "label_name=animal",
        "class_floor",
    )
    assert failure["value"] == 0.43 and failure["threshold"] == 0.5
    assert decide_on_accuracies(
        0.762, 0.75, GateConfig(min_class_accuracy=0.4), teacher_class_accuracy=per_class
    )["blessed"]


def test_release_locations_follow_one_rule_for_every_runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config()
    cfg.run.workdir = "w"
    assert cfg.pipeline_root == str(tmp_path / "w" / "pipeline")
    assert cfg.serving_base == str(tmp_path / "w" / "serving") and cfg.mobile_base == str(
        tmp_path / "w" / "mobile"
    )
    cfg.run.pipeline_root = "gs://bucket/root"  # a cluster's root: pushes go beside it, as given
    assert (cfg.pipeline_root, cfg.serving_base, cfg.mobile_base) == (
        "gs://bucket/root",
        "gs://bucket/serving",
        "gs://bucket/mobile",
    )
    cfg.run.pipeline_root = "gs://bucket"  # a whole bucket: pushes go inside it, not to other buckets
    assert (cfg.serving_base, cfg.mobile_base) == ("gs://bucket/serving", "gs://bucket/mobile")
    cfg.run.serving_base = "models"  # an explicit local path is made absolute
    assert cfg.serving_base == str(tmp_path / "models")


def test_small_frames_keep_their_size_through_the_stem():
    from contract.config import stem_stride
    from contract.layout import EventSpec
    from trainer.models.student import build_student

    assert [stem_stride(2, h, w) for h, w in [(32, 32), (480, 640), (28, 28), (8, 8), (40, 30)]] == [
        2,
        2,
        1,
        1,
        1,
    ]
    for size, expected in ((8, 8), (32, 16)):
        spec = EventSpec(("a", "b"), 1, size, size, 1)
        stem = build_student(spec).get_layer("stem")
        assert stem.output.shape[1:3] == (expected, expected)


def test_single_frame_teachers_pool_the_maximum_and_multi_frame_ones_the_mean():
    import tf_keras as keras

    from contract.config import TeacherConfig, frame_pool
    from contract.layout import EventSpec
    from trainer.models.teacher import build_teacher

    assert [frame_pool("auto", k) for k in (1, 2, 4)] == ["max", "avg", "avg"]
    assert frame_pool("avgmax", 1) == "avgmax"
    with pytest.raises(ValueError, match="teacher.pool"):
        frame_pool("median", 4)
    small = {"conv_filters": [8, 16], "fc_units": [16]}
    for frames, pool, layer_type, width in ((1, "auto", "GlobalMaxPooling2D", 16),
                                             (3, "auto", "GlobalAveragePooling2D", 16),
                                             (2, "avgmax", "AvgMaxPool", 32)):  # fmt: skip
        model = build_teacher(EventSpec(("a", "b"), frames, 16, 16, 1), TeacherConfig(pool=pool, **small))
        layer = model.get_layer("conv_pool")
        assert type(layer).__name__ == layer_type and layer.output.shape[-1] == width
        x = keras.backend.random_uniform((2, frames, 16, 16, 1), seed=0)
        assert model(x)["logits"].shape == (2, 2)


def test_teacher_architecture_fields_are_checked_before_anything_runs():
    from contract.config import ConfigError, TeacherConfig, check_teacher
    from pipeline.cli import main

    check_teacher(TeacherConfig())
    with pytest.raises(ConfigError) as e:
        check_teacher(TeacherConfig(pool="median", norm="batch", norm_groups=0))
    assert "teacher.pool must be auto, avg, max, avgmax; got 'median'" in str(e.value)
    assert "teacher.norm must be group or pixel; got 'batch'" in str(e.value)
    assert "teacher.norm_groups must be >= 1; got 0" in str(e.value)
    assert main(["run", "--data", "/nonexistent", "--set", "teacher.pool=median"]) == 2  # before any workdir

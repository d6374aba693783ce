"""The typed config (defaults < file < --set < flags) and the pure gate decisions."""

import json

import pytest

from components.ingest_gate.component import verdict
from components.release_gate.component import decide
from pipeline.cli import build_parser, load_config
from pipeline.config import Config, ConfigError, parse_mesh


def test_precedence_defaults_file_set_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"teacher": {"steps": 11, "seed": 5}, "data": {"classes": ["x", "y"]}}))
    args = build_parser().parse_args(
        ["validate", "--config", str(path), "--set", "teacher.steps=22", "--set", "data.max_frames=3", "--max-frames", "9"]
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
    assert cfg.data.classes == ["a", "b", "c"] and cfg.teacher.fc_units == [64, 32] and cfg.run.enable_cache is False


def test_parse_mesh():
    assert parse_mesh("batch=2,model=2") == {"batch": 2, "model": 2}
    for bad in ("batch=2", "batch=x,model=2", "batch=2,model=0", "rows=2,cols=2"):
        with pytest.raises(ConfigError):
            parse_mesh(bad)


SUMMARY = {"read": 100, "rejected": 3, "rejected_by_reason": {"bad_timestamp": 3}, "splits": {"train": 80, "eval": 17}}


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
        teacher_accuracy=0.9, student_accuracy=0.88, teacher_blessed=True, student_blessed=True,
        lite={"blessed": True, "agreement": 1.0, "min_agreement": 0.99}, infra_blessed=True,
        max_student_drop=0.05, min_accuracy=0.5,
    )  # fmt: skip
    args.update(kw)
    return decide(**args)


def test_release_gate_blesses_a_good_student():
    assert gate()["blessed"]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"student_accuracy": 0.80}, "x teacher"),
        ({"student_blessed": False}, "failed TFMA"),
        ({"teacher_blessed": False}, "teacher accuracy"),
        ({"lite": {"blessed": False, "agreement": 0.9, "min_agreement": 0.99}}, "int8 TFLite agrees"),
        ({"infra_blessed": False}, "ServingValidator"),
    ],
)
def test_release_gate_blocks_each_failure(change, words):
    result = gate(**change)
    assert not result["blessed"]
    assert any(words in p for p in result["problems"])

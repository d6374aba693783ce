"""TF Serving's configuration files and flags, read the way tensorflow_model_server reads them."""

from __future__ import annotations

import logging

import pytest
from google.protobuf import text_format

from contract.errors import UserError

pytestmark = pytest.mark.unit


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_declared_messages_carry_tf_servings_names_and_numbers():
    """A BatchingParameters / MonitoringConfig written for TF Serving is byte-for-byte the same message."""
    from serving.config_files import BatchingParameters, MonitoringConfig

    batching = BatchingParameters.DESCRIPTOR
    assert batching.full_name == "tensorflow.serving.BatchingParameters"
    numbers = {f.name: f.number for f in batching.fields}
    assert numbers == {
        "max_batch_size": 1, "batch_timeout_micros": 2, "max_enqueued_batches": 3, "num_batch_threads": 4,
        "thread_pool_name": 5, "allowed_batch_sizes": 6, "pad_variable_length_inputs": 7,
    }  # fmt: skip
    assert batching.fields_by_name["max_batch_size"].message_type.full_name == "google.protobuf.Int64Value"
    monitoring = MonitoringConfig.DESCRIPTOR
    assert monitoring.full_name == "tensorflow.serving.MonitoringConfig"
    prometheus = monitoring.fields_by_name["prometheus_config"].message_type
    assert {f.name: f.number for f in prometheus.fields} == {"enable": 1, "path": 2}
    # Wire compatibility: field 1 of an Int64Value wrapper holding 16 -> 0a 02 08 10.
    msg = text_format.Parse("max_batch_size { value: 16 }", BatchingParameters())
    assert msg.SerializeToString() == b"\x0a\x02\x08\x10"


def test_batching_parameters_file(tmp_path, caplog):
    from serving.batching import BatchingOptions
    from serving.config_files import read_batching_file

    defaults = BatchingOptions(16, 0.002, 2)
    path = _write(
        tmp_path, "batching.txt",
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 4 }\n"
        "max_enqueued_batches { value: 100 }\n",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="eventpipe.serving"):
        assert read_batching_file(path, defaults) == BatchingOptions(8, 0.0005, 4)
    assert "max_enqueued_batches not applied" in caplog.text  # set but not honoured: said, not dropped
    assert "num_batch_threads" not in caplog.text  # honoured
    assert read_batching_file(_write(tmp_path, "empty.txt", ""), defaults) == defaults
    for text, message in [
        ("max_batch_size: 8", 'Expected "{"'),
        ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be >= 0"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size"),
        ("max_batch_sise { value: 8 }", "has no field named"),
    ]:
        with pytest.raises(UserError, match=message) as err:
            read_batching_file(_write(tmp_path, "bad.txt", text), defaults)
        assert "--batching_parameters_file" in str(err.value)


def test_monitoring_config_file(tmp_path):
    from serving.config_files import PROMETHEUS_PATH, read_monitoring_file

    assert (
        read_monitoring_file(_write(tmp_path, "on.txt", "prometheus_config { enable: true }"))
        == PROMETHEUS_PATH
    )
    assert (
        read_monitoring_file(_write(tmp_path, "at.txt", 'prometheus_config { enable: true path: "/m" }'))
        == "/m"
    )
    assert read_monitoring_file(_write(tmp_path, "off.txt", "prometheus_config { enable: false }")) is None
    with pytest.raises(UserError, match="outside /v1/"):
        read_monitoring_file(
            _write(tmp_path, "v1.txt", 'prometheus_config { enable: true path: "/v1/models" }')
        )


def test_model_config_file(tmp_path):
    from serving.config_files import read_model_config_file
    from serving.versions import VersionPolicy

    path = _write(
        tmp_path,
        "models.config",
        f"""model_config_list {{
          config {{ name: "student" base_path: "{tmp_path}/student" model_platform: "tensorflow"
                   model_version_policy {{ specific {{ versions: 2 versions: 1 }} }}
                   version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }}
          config {{ name: "teacher" base_path: "relative/teacher"
                   model_version_policy {{ latest {{ num_versions: 2 }} }} }}
          config {{ name: "all" base_path: "/srv/all" model_version_policy {{ all {{}} }} }}
        }}""",
    )
    student, teacher, every = read_model_config_file(path)
    assert (student.name, student.base_path) == ("student", f"{tmp_path}/student")
    assert student.policy == VersionPolicy("specific", (1, 2))
    assert student.labels == {"stable": 1, "canary": 2}
    assert teacher.policy == VersionPolicy("latest", count=2) and teacher.labels is None
    assert teacher.base_path.endswith("/relative/teacher") and teacher.base_path.startswith("/")
    assert every.policy == VersionPolicy("all")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "lists no model"),
        ('model_config_list { config { base_path: "/x" } }', "name is required"),
        ('model_config_list { config { name: "m" } }', "base_path is required"),
        ('model_config_list { config { name: "../m" base_path: "/x" } }', "is not allowed"),
        (
            'model_config_list { config { name: "m" base_path: "/x" } config { name: "m" base_path: "/y" } }',
            "listed twice",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/x" model_platform: "pytorch" } }',
            "is not served",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/x" '
            'version_labels { key: "1x" value: 1 } } }',
            "must start with a letter",
        ),
        (
            'model_config_list { config { name: "m" base_path: "/x" model_version_policy { specific {} } } }',
            "needs positive versions",
        ),
        ('custom_model_config { type_url: "x" }', "custom_model_config is not supported"),
        ("model_config_list { config { name: 'm' base_path: '/x' } ", "Expected"),
    ],
)
def test_model_config_file_errors_name_the_entry_and_the_fix(tmp_path, text, message):
    from serving.config_files import read_model_config_file

    with pytest.raises(UserError, match=message) as err:
        read_model_config_file(_write(tmp_path, "models.config", text))
    assert "--model_config_file" in str(err.value)


def test_serve_flags_have_tf_servings_meaning(tmp_path):
    """--rest_api_port 0 turns REST off, --enable_batching takes TF Serving's boolean forms, and the
    config-file and single-model flags do not mix."""
    import argparse

    from contract.config import load_config
    from serving import cli
    from serving.server import served_models

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "--model_name", "m", "--model_base_path", str(tmp_path), "--port", "9000",
         "--rest_api_port", "0", "--rest_api_num_threads", "7", "--file_system_poll_wait_seconds", "0",
         "--enable_batching=false"]
    )  # fmt: skip
    s = load_config(args).serving
    assert (s.model_name, s.model_base_path, s.grpc_port, s.rest_port) == ("m", str(tmp_path), 9000, -1)
    assert (s.max_connections, s.poll_seconds, s.enable_batching) == (7, 0.0, False)
    assert load_config(parser.parse_args(["serve", "--enable_batching"])).serving.enable_batching is True
    served = served_models(s)
    assert [(m.name, m.base_path) for m in served] == [("m", str(tmp_path))]
    s.model_config_file = str(tmp_path / "models.config")
    with pytest.raises(UserError, match="cannot both be given"):
        served_models(s)


class _RecordingManager:
    """Stands in for ModelManager (which loads TensorFlow models) to watch the registry's decisions."""

    def __init__(self, served, log):
        self.model_name, self.directory, self.policy = served.name, served.base_path, served.policy
        self.log = log

    def start(self):
        self.log.append(("start", self.model_name, self.directory))

    def stop(self):
        self.log.append(("stop", self.model_name, self.directory))

    def reconfigure(self, policy, labels):
        self.policy = policy
        self.log.append(("reconfigure", self.model_name, str(policy), labels))

    def resolve(self, name, version=None, label=None):
        return (name, version, label)


def test_registry_applies_config_changes_and_keeps_the_models_on_a_bad_file(tmp_path):
    import time

    from serving.models import ModelRegistry
    from serving.status import ServingError

    log: list[tuple] = []
    config = tmp_path / "models.config"

    def write(*entries: str) -> None:
        config.write_text("model_config_list { " + " ".join(f"config {{ {e} }}" for e in entries) + " }")

    write('name: "a" base_path: "/srv/a"', 'name: "b" base_path: "/srv/b"')
    from serving.config_files import read_model_config_file

    registry = ModelRegistry(
        read_model_config_file(str(config)), lambda served: _RecordingManager(served, log),
        config_file=str(config), config_poll_seconds=0.05,
    )  # fmt: skip
    registry.start()
    try:
        assert registry.names == ["a", "b"] and log == [("start", "a", "/srv/a"), ("start", "b", "/srv/b")]
        assert registry.get("a").directory == "/srv/a"
        with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(c\)"):
            registry.resolve("c")
        log.clear()
        write(
            'name: "a" base_path: "/srv/a" model_version_policy { all {} }',  # policy changes in place
            'name: "c" base_path: "/srv/c"',  # b removed, c added
        )
        deadline = time.monotonic() + 10
        while registry.names != ["a", "c"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.names == ["a", "c"]
        assert sorted(log) == [
            ("reconfigure", "a", "all", None),
            ("start", "c", "/srv/c"),
            ("stop", "b", "/srv/b"),
        ]
        log.clear()
        config.write_text("model_config_list { config { name: ")  # a half-saved edit
        time.sleep(0.3)
        assert registry.names == ["a", "c"] and log == []
        write(
            'name: "a" base_path: "/srv/a2"', 'name: "c" base_path: "/srv/c"'
        )  # a new base path: a new model
        deadline = time.monotonic() + 10
        while len(log) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log == [("stop", "a", "/srv/a"), ("start", "a", "/srv/a2")]
    finally:
        registry.stop()


def test_config_file_base_path_that_is_a_file_and_labels_flag_are_refused(tmp_path):
    from contract.config import ServingConfig
    from serving.config_files import read_model_config_file
    from serving.server import served_models

    (tmp_path / "afile").write_text("x")
    path = _write(
        tmp_path, "m.config", f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}/afile" }} }}'
    )
    with pytest.raises(UserError, match="is not a directory"):
        read_model_config_file(path)
    good = _write(
        tmp_path, "ok.config", f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}" }} }}'
    )
    with pytest.raises(UserError, match="give each model its version_labels in the config file"):
        served_models(ServingConfig(model_config_file=good, version_labels=str(tmp_path / "labels.json")))


def test_an_oversized_warmup_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import numpy as np

    from serving import warmup

    frames = np.array([[b"a" * 100, b""]], dtype=object)
    path = warmup.write_warmup_file(str(tmp_path), warmup.predict_logs(frames, "m"))
    assert len(warmup.read_warmup_file(path)) == 1
    monkeypatch.setattr(warmup, "MAX_FILE_BYTES", 64)
    with pytest.raises(warmup.WarmupError, match="bytes of warm-up records"):
        warmup.read_warmup_file(path)

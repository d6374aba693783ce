"""TF Serving's configuration files, read into TF Serving's own messages.

``--model_config_file`` is a ``ModelServerConfig`` text proto (the message ships with
``tensorflow_serving.config``). ``--batching_parameters_file`` (``BatchingParameters``) and
``--monitoring_config_file`` (``MonitoringConfig``) are messages the ``tensorflow-serving-api``
wheel does not ship, so they are declared here as a descriptor built at runtime, with TF
Serving's package, field names and field numbers (session_bundle_config.proto,
monitoring_config.proto): a file written for ``tensorflow_model_server`` parses unchanged, and
protobuf's ``text_format`` does the parsing, with its own line-and-column errors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from contract.errors import UserError
from serving.batching import BatchingOptions
from serving.versions import VersionPolicy, validate_label, validate_model_name

log = logging.getLogger("eventpipe.serving")

PACKAGE = "tensorflow.serving"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config file is text a person wrote: anything bigger is a mistake

_F = descriptor_pb2.FieldDescriptorProto


def _declare() -> tuple[type[Message], type[Message]]:
    """``tensorflow.serving.BatchingParameters`` and ``MonitoringConfig``, as TF Serving numbers them."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="eventpipe/tensorflow_serving_options.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    batching = proto.message_type.add(name="BatchingParameters")
    for number, (name, wrapper) in enumerate(
        [
            ("max_batch_size", "Int64Value"),
            ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"),
            ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue"),
        ],
        start=1,
    ):
        batching.field.add(
            name=name, number=number, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
        )  # fmt: skip
    batching.field.add(name="allowed_batch_sizes", number=6, label=_F.LABEL_REPEATED, type=_F.TYPE_INT64)
    batching.field.add(
        name="pad_variable_length_inputs", number=7, label=_F.LABEL_OPTIONAL, type=_F.TYPE_BOOL
    )
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.PrometheusConfig",
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with a real TF Serving build
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    factory = message_factory.MessageFactory(pool)
    return tuple(  # type: ignore[return-value]
        factory.GetPrototype(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    )


BatchingParameters, MonitoringConfig = _declare()


def read_text_proto(path: str, message: Message, flag: str) -> Message:
    """Parse the text proto at ``path`` into ``message``; UserError names the flag and the problem."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{flag} {path}: {size} bytes; a config file is at most {MAX_CONFIG_BYTES}")
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)  # a FIFO or device reports no size: bound the read
        if len(text) > MAX_CONFIG_BYTES:
            raise UserError(
                f"{flag} {path}: larger than {MAX_CONFIG_BYTES} bytes; a config file is at most that"
            )
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {path}: cannot read it: {e}") from e
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise UserError(f"{flag} {path}: not a {message.DESCRIPTOR.full_name} text proto: {e}") from e


# -- --model_config_file ---------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """One model of the server: where its versions are and which of them to serve.

    ``labels`` None: the labels come from ``<base_path>/labels.json`` (what the pusher writes);
    a config file's ``version_labels`` replace that file for the model.
    """

    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=lambda: VersionPolicy("latest"))
    labels: dict[str, int] | None = None


_PLATFORMS = ("", "tensorflow", "tflite")


def models_from_config(config: model_server_config_pb2.ModelServerConfig, where: str) -> list[ServedModel]:
    """The models a ``ModelServerConfig`` lists; UserError for what eventpipe cannot serve."""
    if config.WhichOneof("config") == "custom_model_config":
        raise UserError(
            f"{where}: custom_model_config is not supported; list the models in model_config_list"
        )
    models: list[ServedModel] = []
    seen: set[str] = set()
    for i, mc in enumerate(config.model_config_list.config):
        what = f"{where}: model_config_list.config[{i}]"
        if not mc.name:
            raise UserError(f"{what}: name is required")
        try:
            validate_model_name(mc.name)
        except UserError as e:
            raise UserError(f"{what}: {e}") from e
        if mc.name in seen:
            raise UserError(f"{what}: model {mc.name!r} is listed twice")
        seen.add(mc.name)
        if not mc.base_path:
            raise UserError(
                f"{what} ({mc.name}): base_path is required (the directory of version directories)"
            )
        if os.path.exists(mc.base_path) and not os.path.isdir(mc.base_path):
            raise UserError(f"{what} ({mc.name}): base_path {mc.base_path} is not a directory")
        if mc.model_platform not in _PLATFORMS:
            raise UserError(
                f'{what} ({mc.name}): model_platform {mc.model_platform!r} is not served; use "tensorflow" '
                "(a SavedModel or model.tflite in each version directory)"
            )
        for key, version in mc.version_labels.items():
            validate_label(key, f"{what} ({mc.name}) version_labels")
            if version <= 0:
                raise UserError(f"{what} ({mc.name}): version_labels {key!r} must name a positive version")
        models.append(
            ServedModel(
                mc.name,
                os.path.abspath(mc.base_path),
                _policy(mc.model_version_policy, f"{what} ({mc.name})"),
                dict(mc.version_labels) if mc.version_labels else None,
            )
        )
    if not models:
        raise UserError(f"{where}: model_config_list lists no model")
    return models


def _policy(policy: Message, where: str) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice is None:
        return VersionPolicy("latest")
    if choice == "latest":
        return VersionPolicy("latest", count=policy.latest.num_versions or 1)  # uint32: never negative
    if choice == "all":
        return VersionPolicy("all")
    versions = tuple(sorted(set(policy.specific.versions)))
    if not versions or any(v <= 0 for v in versions):
        raise UserError(f"{where}: model_version_policy specific needs positive versions")
    return VersionPolicy("specific", versions)


def read_model_config_file(path: str) -> list[ServedModel]:
    config = read_text_proto(path, model_server_config_pb2.ModelServerConfig(), "--model_config_file")
    return models_from_config(config, f"--model_config_file {path}")


# -- --batching_parameters_file ----------------------------------------------------------------
def read_batching_file(path: str, defaults: BatchingOptions) -> BatchingOptions:
    """``BatchingParameters`` from ``path`` over ``defaults``; fields the batcher cannot honour are logged."""
    params = read_text_proto(path, BatchingParameters(), "--batching_parameters_file")
    where = f"--batching_parameters_file {path}"
    max_batch = params.max_batch_size.value if params.HasField("max_batch_size") else defaults.max_batch_size
    timeout_us = params.batch_timeout_micros.value if params.HasField("batch_timeout_micros") else None
    if max_batch < 1:
        raise UserError(f"{where}: max_batch_size must be >= 1, got {max_batch}")
    if timeout_us is not None and timeout_us < 0:
        raise UserError(f"{where}: batch_timeout_micros must be >= 0, got {timeout_us}")
    threads = params.num_batch_threads.value if params.HasField("num_batch_threads") else defaults.threads
    if threads < 1:
        raise UserError(f"{where}: num_batch_threads must be >= 1, got {threads}")
    if params.allowed_batch_sizes and params.allowed_batch_sizes[-1] != max_batch:
        raise UserError(
            f"{where}: the last allowed_batch_sizes entry must equal max_batch_size ({max_batch})"
        )
    ignored = [n for n in ("max_enqueued_batches", "thread_pool_name") if params.HasField(n)]
    ignored += [n for n in ("allowed_batch_sizes", "pad_variable_length_inputs") if getattr(params, n)]
    if ignored:
        log.warning(
            "%s: %s not applied: eventpipe batches on the request threads themselves, queues every "
            "request and never pads", where, ", ".join(ignored),
        )  # fmt: skip
    timeout_s = timeout_us / 1e6 if timeout_us is not None else defaults.batch_timeout_s
    return BatchingOptions(max_batch, timeout_s, threads)


# -- --monitoring_config_file ------------------------------------------------------------------
def read_monitoring_file(path: str) -> str | None:
    """The Prometheus path the file enables, or None when it leaves Prometheus off."""
    config = read_text_proto(path, MonitoringConfig(), "--monitoring_config_file")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    metrics_path = prometheus.path or PROMETHEUS_PATH
    if not metrics_path.startswith("/") or metrics_path.startswith("/v1/"):
        raise UserError(
            f"--monitoring_config_file {path}: prometheus_config.path {metrics_path!r} must start with '/' "
            "and stay outside /v1/ (the model API)"
        )
    return metrics_path

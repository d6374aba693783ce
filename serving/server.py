"""One TF-Serving-compatible server: the served models behind a REST and a gRPC front end."""

from __future__ import annotations

import json
import logging
import os

from contract.config import ServingConfig
from contract.errors import UserError
from serving.batching import NO_BATCHING, BatchingOptions, default_threads
from serving.config_files import (
    PROMETHEUS_PATH,
    ServedModel,
    read_batching_file,
    read_model_config_file,
    read_monitoring_file,
)
from serving.grpc_service import GrpcServer, channel_options
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.models import ModelRegistry
from serving.rest import RestServer
from serving.versions import VersionPolicy, check_base_path, validate_model_name

log = logging.getLogger("eventpipe.serving")


class ModelServer:
    """Starts the models and both front ends; ``stop`` shuts all of them down.

    Configured by the ``serving`` config section (a port below 0: that front end is off;
    ``enable_batching`` false or ``max_batch_size`` of 1 or less: no batching) and the model base
    path of ``serving.model_name`` (TF Serving's: the directory of version directories), or
    ``serving.model_config_file``'s models when it is set.
    """

    def __init__(self, options: ServingConfig, model_base_path: str = "") -> None:
        _check_options(options)
        self.options = options
        self.models_served = served_models(options, model_base_path)
        self.batching = _batching(options)
        metrics_path = _metrics_path(options)
        self.metrics = ServingMetrics()
        self.models = ModelRegistry(
            self.models_served,
            self._make_manager,
            config_file=options.model_config_file,
            config_poll_seconds=options.model_config_file_poll_wait_seconds,
        )
        self.rest: RestServer | None = self._listen_rest(metrics_path)
        self.grpc: GrpcServer | None = self._listen_grpc()

    def _make_manager(self, served: ServedModel) -> ModelManager:
        options = self.options
        return ModelManager(
            served.base_path,
            served.name,
            served.policy,
            poll_seconds=options.poll_seconds,
            labels_path=options.version_labels or None,
            labels=served.labels,
            batching=self.batching,
            prefer_tflite=options.prefer_tflite,
            metrics=self.metrics,
            max_tensor_elements=options.max_tensor_elements,
        )

    def _listen_rest(self, metrics_path: str | None) -> RestServer | None:
        options = self.options
        if options.rest_port < 0:
            return None
        try:
            return RestServer(
                self.models, self.metrics, options.host, options.rest_port, options.max_body_bytes,
                read_timeout_seconds=options.read_timeout_seconds,
                max_connections=options.max_connections,
                max_tensor_elements=options.max_tensor_elements, metrics_path=metrics_path,
            )  # fmt: skip
        except OSError as e:
            raise UserError(f"cannot listen for REST on {options.host}:{options.rest_port}: {e}") from e

    def _listen_grpc(self) -> GrpcServer | None:
        """Called after REST is bound: a gRPC port that cannot be had releases the REST one."""
        options = self.options
        if options.grpc_port < 0:
            return None
        try:
            return GrpcServer(
                self.models,
                self.metrics,
                options.host,
                options.grpc_port,
                options.max_body_bytes,
                workers=options.grpc_threads,
                max_tensor_elements=options.max_tensor_elements,
                channel_arguments=options.grpc_channel_arguments,
            )
        except (OSError, RuntimeError) as e:
            if self.rest:
                self.rest.stop()
            raise UserError(f"cannot listen for gRPC on {options.host}:{options.grpc_port}: {e}") from e

    @property
    def rest_port(self) -> int | None:
        return self.rest.port if self.rest else None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc else None

    def start(self) -> ModelServer:
        self.models.start()
        if self.rest:
            self.rest.start()
        if self.grpc:
            self.grpc.start()
        log.info("%s", self.endpoints())
        return self

    def endpoints(self) -> str:
        host = self.options.host
        rest = f"REST http://{host}:{self.rest_port}" if self.rest else "REST off"
        grpc = f"gRPC {host}:{self.grpc_port}" if self.grpc else "gRPC off"
        models = ", ".join(f"{m.name} from {m.base_path}" for m in self.models.served or self.models_served)
        return f"models {models}; {rest}  {grpc}"

    def wait_until_available(self, version: int | None = None, timeout: float = 60.0, name: str = "") -> bool:
        """True once ``version`` (or any version) of model ``name`` (default: the first) serves."""
        manager = self.models.manager(name or self.models_served[0].name)
        if manager is None:
            return False

        def ready(m: ModelManager) -> bool:
            serving = m.serving_versions()
            return version in serving if version is not None else bool(serving)

        return manager.wait_for(ready, timeout)

    def describe(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": self.options.host,
            "rest_port": self.rest_port,
            "grpc_port": self.grpc_port,
            "models": {m.name: m.base_path for m in self.models.served or self.models_served},
        }

    def write_port_file(self, path: str) -> None:
        """Atomically write ``describe()`` as JSON (tests and scripts wait for this file)."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.describe(), f)
        os.replace(tmp, path)

    def stop(self) -> None:
        if self.rest:
            self.rest.stop()
        if self.grpc:
            self.grpc.stop()
        self.models.stop()


def _check_options(options: ServingConfig) -> None:
    """Refuse a bad setting before anything is loaded or bound."""
    if options.max_body_bytes <= 0:
        raise UserError("serving.max_body_bytes must be positive")
    if options.max_tensor_elements <= 0:
        raise UserError("serving.max_tensor_elements must be positive")
    if options.read_timeout_seconds <= 0 or options.max_connections <= 0:
        raise UserError(
            "serving.read_timeout_seconds and serving.max_connections (--rest_api_num_threads) "
            "must be positive"
        )
    if options.rest_port < 0 and options.grpc_port < 0:
        raise UserError("both front ends are off: give --rest_api_port or --port")
    if options.intra_op_threads < 0 or options.inter_op_threads < 0:
        raise UserError(
            "--tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism must be >= 0"
        )
    if options.grpc_threads <= 0:
        raise UserError("--grpc_max_threads (serving.grpc_threads) must be positive")
    channel_options(options.grpc_channel_arguments)  # a malformed list is an error before anything starts
    if options.num_batch_threads < 0:
        raise UserError("serving.num_batch_threads must be >= 0 (0: one per core)")


def _batching(options: ServingConfig) -> BatchingOptions:
    """The config's batching, overridden by its parameters file (read even when batching is off,
    so a bad file is refused either way)."""
    threads = options.num_batch_threads or default_threads()
    batching = BatchingOptions(options.max_batch_size, options.batch_timeout_ms / 1000.0, threads)
    if options.batching_parameters_file:
        batching = read_batching_file(options.batching_parameters_file, batching)
    return batching if options.enable_batching else NO_BATCHING


def _metrics_path(options: ServingConfig) -> str | None:
    """Where REST serves Prometheus metrics: the monitoring file's choice (None: off), else the default."""
    return (
        read_monitoring_file(options.monitoring_config_file)
        if options.monitoring_config_file
        else PROMETHEUS_PATH
    )


def configure_tensorflow(options: ServingConfig) -> None:
    """TensorFlow's thread pools for this process (TF Serving's two parallelism flags).

    Process-wide and fixed once TensorFlow has run an op, so the server's entry point calls it
    first; servers started inside another program (tests, the pipeline's one-request check)
    keep that program's settings.
    """
    import tensorflow as tf

    threading = tf.config.threading
    wanted = (options.intra_op_threads, options.inter_op_threads)
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) != wanted:
        try:
            threading.set_intra_op_parallelism_threads(options.intra_op_threads)
            threading.set_inter_op_parallelism_threads(options.inter_op_threads)
        except RuntimeError as e:  # TensorFlow already ran an op in this process
            raise UserError(
                f"cannot set TensorFlow's thread pools to intra_op={wanted[0]}, inter_op={wanted[1]}: {e}"
            ) from e
    log.info("TensorFlow thread pools: intra_op %d, inter_op %d (0: TensorFlow's default)", *wanted)


def served_models(options: ServingConfig, model_base_path: str = "") -> list[ServedModel]:
    """The models to serve: the config file's, or ``model_name`` from its base path.

    ``model_base_path``: the default when ``options.model_base_path`` is empty (the CLI passes
    the pusher's ``<serving base>/<model_name>``).
    """
    if options.model_config_file:
        if options.model_base_path:
            raise UserError(
                "--model_config_file and --model_base_path cannot both be given: list every model "
                "(name, base_path) in the config file"
            )
        if options.version_labels:
            raise UserError(
                "--version-labels names one model's labels file; with --model_config_file give each model "
                "its version_labels in the config file (or a labels.json in its base_path)"
            )
        return read_model_config_file(options.model_config_file)
    validate_model_name(options.model_name)
    base = options.model_base_path or model_base_path
    if not base:
        raise UserError(
            "give --model_base_path (the directory of version directories) or --model_config_file"
        )
    return [
        ServedModel(
            options.model_name,
            check_base_path(base, options.model_name),
            VersionPolicy.parse(options.version_policy),
        )
    ]

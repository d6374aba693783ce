"""One TF-Serving-compatible server: the model manager behind a REST and a gRPC front end."""

from __future__ import annotations

import json
import logging
import os

from contract.config import ServingConfig
from contract.errors import UserError
from serving.grpc_service import GrpcServer
from serving.manager import ModelManager
from serving.metrics import ServingMetrics
from serving.rest import RestServer
from serving.versions import VersionPolicy, validate_model_name

log = logging.getLogger("eventpipe.serving")


class ModelServer:
    """Starts the manager and both front ends; ``stop`` shuts all of them down.

    Configured by the ``serving`` config section itself (a ``grpc_port`` below 0: no gRPC front
    end; ``max_batch_size`` of 1 or less: no batching) and the directory that holds the models.
    """

    def __init__(self, options: ServingConfig, model_base_path: str) -> None:
        if not os.path.isdir(model_base_path):
            raise UserError(f"--model-base-path {model_base_path!r} is not a directory")
        validate_model_name(options.model_name)
        if options.max_body_bytes <= 0:
            raise UserError("serving.max_body_bytes must be positive")
        if options.max_tensor_elements <= 0:
            raise UserError("serving.max_tensor_elements must be positive")
        if options.read_timeout_seconds <= 0 or options.max_connections <= 0:
            raise UserError("serving.read_timeout_seconds and serving.max_connections must be positive")
        self.options = options
        self.metrics = ServingMetrics()
        self.manager = ModelManager(
            model_base_path,
            options.model_name,
            VersionPolicy.parse(options.version_policy),
            poll_seconds=options.poll_seconds,
            labels_path=options.version_labels or None,
            max_batch_size=options.max_batch_size,
            batch_timeout_s=options.batch_timeout_ms / 1000.0,
            prefer_tflite=options.prefer_tflite,
            metrics=self.metrics,
        )
        try:
            self.rest = RestServer(
                self.manager, self.metrics, options.host, options.rest_port, options.max_body_bytes,
                read_timeout_seconds=options.read_timeout_seconds, max_connections=options.max_connections,
                max_tensor_elements=options.max_tensor_elements,
            )  # fmt: skip
        except OSError as e:
            raise UserError(f"cannot listen for REST on {options.host}:{options.rest_port}: {e}") from e
        self.grpc: GrpcServer | None = None
        if options.grpc_port >= 0:
            try:
                self.grpc = GrpcServer(
                    self.manager, self.metrics, options.host, options.grpc_port, options.max_body_bytes,
                    max_tensor_elements=options.max_tensor_elements,
                )
            except (OSError, RuntimeError) as e:
                self.rest.stop()
                raise UserError(f"cannot listen for gRPC on {options.host}:{options.grpc_port}: {e}") from e

    @property
    def rest_port(self) -> int:
        return self.rest.port

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc else None

    def start(self) -> ModelServer:
        self.manager.start()
        self.rest.start()
        if self.grpc:
            self.grpc.start()
        log.info(
            "serving model %s from %s: REST http://%s:%d, gRPC %s",
            self.options.model_name,
            self.manager.directory,
            self.options.host,
            self.rest_port,
            f"{self.options.host}:{self.grpc_port}" if self.grpc else "off",
        )
        return self

    def wait_until_available(self, version: int | None = None, timeout: float = 60.0) -> bool:
        """True once ``version`` (or any version) serves."""

        def ready(m: ModelManager) -> bool:
            serving = m.serving_versions()
            return version in serving if version is not None else bool(serving)

        return self.manager.wait_for(ready, timeout)

    def describe(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": self.options.host,
            "rest_port": self.rest_port,
            "grpc_port": self.grpc_port,
            "model_name": self.options.model_name,
            "model_dir": self.manager.directory,
        }

    def write_port_file(self, path: str) -> None:
        """Atomically write ``describe()`` as JSON (tests and scripts wait for this file)."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.describe(), f)
        os.replace(tmp, path)

    def stop(self) -> None:
        self.rest.stop()
        if self.grpc:
            self.grpc.stop()
        self.manager.stop()


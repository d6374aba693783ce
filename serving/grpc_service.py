"""TF Serving's gRPC services: ``PredictionService`` and ``ModelService``.

Registered with the generated ``tensorflow_serving.apis`` servicers, so any client built on
``prediction_service_pb2_grpc.PredictionServiceStub`` / ``ModelServiceStub`` works unchanged.
Classify, Regress and MultiInference answer UNIMPLEMENTED (eventpipe models expose predict
signatures only). ``HandleReloadConfigRequest`` replaces the served models with the request's
``ModelServerConfig``, as in TF Serving.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from contract.errors import UserError
from serving import api
from serving.config_files import models_from_config
from serving.metrics import ServingMetrics
from serving.models import ModelRegistry
from serving.status import INTERNAL, OK, ServingError, internal_error, invalid
from serving.tensors import MAX_TENSOR_ELEMENTS, array_to_proto, proto_inputs

log = logging.getLogger("eventpipe.serving.grpc")


def _version_args(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class _Observed:
    """Times one RPC, records it, and turns ServingError into a gRPC status."""

    def __init__(
        self, metrics: ServingMetrics, method: str, context: grpc.ServicerContext, model: str = ""
    ) -> None:
        self.metrics, self.method, self.context, self.model = metrics, method, context, model

    def __enter__(self) -> _Observed:
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        code = OK
        if isinstance(exc, ServingError):
            code = exc.code
        elif exc is not None and not isinstance(exc, grpc.RpcError):
            exc = internal_error(log, f"gRPC {self.method}", exc_info=(exc_type, exc, tb))
            code = INTERNAL
        self.metrics.observe_request(
            "grpc", self.method, code, time.perf_counter() - self.started, self.model
        )
        if isinstance(exc, ServingError):
            self.context.abort(grpc.StatusCode[exc.code], exc.message)
        return False


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self, models: ModelRegistry, metrics: ServingMetrics, max_tensor_elements: int = MAX_TENSOR_ELEMENTS
    ) -> None:
        self.models, self.metrics = models, metrics
        self.max_tensor_elements = max_tensor_elements

    def _served(self, name: str) -> str:
        """The metrics' model label: a served model's name, "" for any other (no series per made-up name)."""
        return name if name in self.models.names else ""

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:  # noqa: N802
        with _Observed(self.metrics, "predict", context, self._served(request.model_spec.name)):
            spec = request.model_spec
            version, label = _version_args(spec)
            manager = self.models.get(spec.name, version)
            with manager.in_flight:
                lv = manager.resolve(spec.name, version, label)
                signature = lv.signature(spec.signature_name)
                inputs = proto_inputs(request.inputs, signature, self.max_tensor_elements)
                wanted = signature.select_outputs(list(request.output_filter))
                outputs = lv.predict(signature, inputs, wanted)
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(api.model_spec(lv, signature.name))
            for alias, value in outputs.items():
                array_to_proto(value, response.outputs[alias])  # filled in place: no copy
            return response

    def GetModelMetadata(  # noqa: N802
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        with _Observed(self.metrics, "metadata", context, self._served(request.model_spec.name)):
            version, label = _version_args(request.model_spec)
            return api.model_metadata(
                self.models, request.model_spec.name, version, label, list(request.metadata_field)
            )


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ModelRegistry, metrics: ServingMetrics) -> None:
        self.models, self.metrics = models, metrics

    def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        with _Observed(self.metrics, "status", context):
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            version, label = _version_args(request.model_spec)
            return api.model_status(self.models, request.model_spec.name, version, label)

    def HandleReloadConfigRequest(  # noqa: N802
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        with _Observed(self.metrics, "reload_config", context):
            try:
                models = models_from_config(request.config, "ReloadConfigRequest.config")
            except UserError as e:
                raise invalid(str(e)) from e
            self.models.apply(models)
            return model_management_pb2.ReloadConfigResponse()


def channel_options(text: str) -> list[tuple[str, int | str]]:
    """TF Serving's ``--grpc_channel_arguments``: ``key=value,...``; integer values stay integers."""
    options: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"--grpc_channel_arguments: {item!r} is not key=value (e.g. grpc.max_connection_age_ms=2000)"
            )
        try:
            options.append((key.strip(), int(value)))
        except ValueError:
            options.append((key.strip(), value.strip()))
    return options


class GrpcServer:
    """Both services on ``host:port`` (port 0: pick a free one)."""

    def __init__(
        self,
        models: ModelRegistry,
        metrics: ServingMetrics,
        host: str,
        port: int,
        max_message_bytes: int,
        workers: int = 32,
        max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
        channel_arguments: str = "",
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            *channel_options(channel_arguments),
        ]
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"), options=options
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(models, metrics, max_tensor_elements), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(models, metrics), self._server
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 2.0) -> None:
        self._server.stop(grace).wait()

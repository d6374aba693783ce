"""The operations both front ends expose, on TF Serving's protos.

REST and gRPC parse their wire formats and call these; status and metadata responses are
built as the real ``GetModelStatusResponse`` / ``GetModelMetadataResponse`` protos, so the
REST JSON is what ``json_format`` prints for them, as in TF Serving.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.manager import LoadedVersion
from serving.models import ModelRegistry
from serving.status import ServingError, invalid

SIGNATURE_DEF_FIELD = "signature_def"
_STATE = get_model_status_pb2.ModelVersionStatus.State


def model_status(
    models: ModelRegistry, name: str, version: int | None, label: str | None
) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for st in models.status(name, version, label):
        entry = response.model_version_status.add()
        entry.version = st.version
        entry.state = _STATE.Value(st.state)
        entry.status.error_code = _error_code(st.error_code)
        entry.status.error_message = st.error_message
    return response


def _error_code(name: str) -> int:
    return error_codes_pb2.Code.Value(name)


def model_metadata(
    models: ModelRegistry, name: str, version: int | None, label: str | None, fields: list[str]
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not fields:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise invalid(f"Metadata field {field} is not supported")
    lv = models.resolve(name, version, label)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.CopyFrom(model_spec(lv, ""))
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, proto in lv.servable.signature_defs().items():
        sig_map.signature_def[key].CopyFrom(proto)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
    return response


def model_spec(lv: LoadedVersion, signature_name: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=lv.model_name, signature_name=signature_name)
    spec.version.value = lv.version
    return spec


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    return json_format.MessageToJson(response, including_default_value_fields=True).encode("utf-8")


def _dict(message: Any) -> Any:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, including_default_value_fields=True
    )


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """TF Serving's REST metadata shape: model_spec, then the unpacked SignatureDefMap."""

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata[SIGNATURE_DEF_FIELD].Unpack(sig_map):
        raise ServingError("INTERNAL", "Failed to unpack 'Any' object to 'SignatureDefMap'.")
    body = {"model_spec": _dict(response.model_spec), "metadata": {SIGNATURE_DEF_FIELD: _dict(sig_map)}}
    return json.dumps(body, indent=1).encode("utf-8")

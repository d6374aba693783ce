"""Canonical error codes shared by the REST and gRPC front ends.

Errors carry a canonical code name (``tensorflow.error.Code`` / ``grpc.StatusCode``) so one
failure reads the same on both APIs; REST maps it to an HTTP status exactly as TF Serving's
``ToHTTPStatusCode`` does (``tensorflow_serving/model_servers/http_server.cc``).
"""

from __future__ import annotations

import itertools
import logging

OK = "OK"
CANCELLED = "CANCELLED"
UNKNOWN = "UNKNOWN"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
NOT_FOUND = "NOT_FOUND"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
UNIMPLEMENTED = "UNIMPLEMENTED"
INTERNAL = "INTERNAL"
UNAVAILABLE = "UNAVAILABLE"

HTTP_STATUS = {
    OK: 200,
    CANCELLED: 499,
    UNKNOWN: 500,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A request failed with a canonical ``code`` and a message for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


_ERROR_IDS = itertools.count(1)


def internal_error(log: logging.Logger, what: str, exc_info: object = True) -> ServingError:
    """Log a server bug with its traceback under a fresh id; the client gets the id, not the text."""
    error_id = next(_ERROR_IDS)
    log.error("%s failed (error id %d)", what, error_id, exc_info=exc_info)
    return ServingError(INTERNAL, f"Internal server error (error id {error_id} in the server log)")


def invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(NOT_FOUND, message)

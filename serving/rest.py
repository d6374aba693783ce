"""TF Serving's REST API over a threaded stdlib HTTP/1.1 server.

Routes (TF Serving's regular expressions, case-insensitive):

- ``GET  /v1/models/NAME[/versions/N|/labels/L]``            model status
- ``GET  /v1/models/NAME[/versions/N|/labels/L]/metadata``   signature defs
- ``POST /v1/models/NAME[/versions/N|/labels/L]:predict``    row or column form
- ``GET  /monitoring/prometheus/metrics``                    Prometheus text format

Errors are ``{"error": "..."}`` with the HTTP status TF Serving maps the canonical code
to. Bodies over the limit are refused with 413 before they are read. Responses go out in
one write with TCP_NODELAY, so keep-alive clients do not wait on Nagle's algorithm.

Hostile clients: a connection idle for ``read_timeout_seconds`` is closed (408 if it stalled
mid-body); at most ``max_connections`` are served at once, the next is answered 503 and
closed; a body that cannot be framed (bad chunk size, short read) is a 400 and the
connection closes, since the stream can no longer be parsed in step; a server bug is a 500
that names a request id for the log, never the exception text.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from serving import api, tensors
from serving.metrics import ServingMetrics
from serving.models import ModelRegistry
from serving.status import INVALID_ARGUMENT, OK, ServingError, internal_error, invalid

log = logging.getLogger("eventpipe.serving.rest")

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I
)
API_RE = re.compile(r"/v1/.*", re.I)
DRAIN_LIMIT = 16 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "eventpipe-serving"
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_seconds  # StreamRequestHandler sets it on the socket
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (stdlib signature)
        log.debug("%s - %s", self.address_string(), format % args)

    # -- plumbing ------------------------------------------------------------------------
    def _reply(
        self, status: int, body: bytes, content_type: str = "application/json", close: bool = False
    ) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        )
        if close:
            head += "Connection: close\r\n"
            self.close_connection = True
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _Unframed(f"chunk size {line[:40]!r} is not a hexadecimal number") from None
                if size < 0:
                    raise _Unframed(f"chunk size {line[:40]!r} is negative")
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > limit:
                    raise _TooLarge(total, limit)
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise _Unframed(f"the connection ended {size - len(chunk)} bytes into a chunk")
                chunks.append(chunk)
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _Unframed(f"Content-Length {length!r} is not a number") from None
        if n < 0:
            raise _Unframed(f"Content-Length {length!r} is negative")
        if n > limit:
            # Read (and drop) a moderately large body before answering, so the client sees the
            # 413 rather than a connection reset; beyond DRAIN_LIMIT the connection just closes.
            remaining = n if n <= DRAIN_LIMIT else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise _TooLarge(n, limit)
        body = self.rfile.read(n) if n > 0 else b""
        if len(body) < n:
            raise _Unframed(f"the connection ended after {len(body)} of {n} body bytes")
        return body

    def _dispatch(self) -> None:
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        method = "other"
        code = OK
        self.model_name = ""  # set once the path names a model (metrics by model)
        try:
            try:
                body = self._read_body()  # always consumed, so a keep-alive stream stays in step
            except _TooLarge as e:
                code = "RESOURCE_EXHAUSTED"
                self._reply(413, tensors.error_json(str(e)), close=True)
                return
            except _Unframed as e:
                code = INVALID_ARGUMENT
                self._reply(400, tensors.error_json(f"Malformed request body: {e}"), close=True)
                return
            except TimeoutError:
                code = "DEADLINE_EXCEEDED"
                limit = self.server.read_timeout_seconds
                self._reply(
                    408, tensors.error_json(f"Request body not received within {limit:g} s"), close=True
                )
                return
            if path == self.server.metrics_path and self.command == "GET":
                method = "metrics"
                self._reply(200, self.server.metrics.render(), self.server.metrics.content_type)
                return
            if not API_RE.fullmatch(path):
                code = "NOT_FOUND"
                self._reply(404, tensors.error_json(f"Not found: {self.command} {path}"))
                return
            method = _method_label(self.command, path)
            payload = self._route(path, body)
            self._reply(200, payload)
        except ServingError as e:
            code = e.code
            self._reply(e.http_status, tensors.error_json(e.message))
        except Exception:  # noqa: BLE001  (a server bug must still answer the client)
            error = internal_error(log, f"REST {self.command} {path}")
            code = error.code
            self._reply(error.http_status, tensors.error_json(error.message))
        finally:
            self.server.metrics.observe_request(
                "rest", method, code, time.perf_counter() - started, self.model_name
            )

    def _route(self, path: str, body: bytes) -> bytes:
        models = self.server.models
        if self.command == "POST":
            m = PREDICT_RE.fullmatch(path)
            if m:
                name, version, label = _model_args(m.group(1), m.group(2), m.group(3))
                self.model_name = name if name in models.names else ""  # no series per made-up name
                verb = m.group(4).lower()
                if verb != "predict":
                    raise ServingError(
                        INVALID_ARGUMENT,
                        f"{verb} needs a signature with method_name tensorflow/serving/{verb}; "
                        "eventpipe models expose predict signatures only (use :predict)",
                    )
                return self._predict(models, name, version, label, body)
        elif self.command == "GET":
            m = STATUS_RE.fullmatch(path)
            if m:
                if not m.group(1):
                    raise invalid("Missing model name in request.")
                name, version, label = _model_args(m.group(1), m.group(2), m.group(3))
                self.model_name = name if name in models.names else ""  # no series per made-up name
                if m.group(4):
                    response = api.model_metadata(models, name, version, label, [api.SIGNATURE_DEF_FIELD])
                    return api.metadata_json(response)
                return api.status_json(api.model_status(models, name, version, label))
        raise invalid(f"Malformed request: {self.command} {path}")

    def _predict(
        self, models: ModelRegistry, name: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        manager = models.get(name, version)
        with manager.in_flight:
            doc = tensors.parse_predict_body(body)
            lv = manager.resolve(name, version, label)
            signature = lv.signature(doc.get("signature_name", ""))
            inputs, form = tensors.request_inputs(doc, signature, self.server.max_tensor_elements)
            outputs = lv.predict(signature, inputs, sorted(signature.outputs))
        return tensors.response_json(outputs, form)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815  (stdlib naming)


class _Unframed(Exception):
    """The body cannot be delimited: nothing after it on the connection can be trusted."""


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Request body of {size} bytes exceeds the limit of {limit} bytes")


def _method_label(command: str, path: str) -> str:
    if command == "POST":
        return "predict"
    if command == "GET":
        return "metadata" if path.lower().endswith("/metadata") else "status"
    return "other"


def _model_args(name: str, version: str | None, label: str | None) -> tuple[str, int | None, str | None]:
    if version and label:
        raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    parsed = None
    if version:
        try:
            parsed = int(version)
        except ValueError:
            raise invalid(f"Failed to convert version: {version} to numeric.") from None
    return unquote(name), parsed, unquote(label) if label else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], models: ModelRegistry, metrics: ServingMetrics, max_body_bytes: int,
        read_timeout_seconds: float, max_connections: int, max_tensor_elements: int, metrics_path: str | None,
    ) -> None:  # fmt: skip
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.models = models
        self.metrics_path = metrics_path
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.read_timeout_seconds = read_timeout_seconds
        self.max_connections = max_connections
        self.max_tensor_elements = max_tensor_elements
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        """One thread per connection, up to ``max_connections``; beyond that 503 and close."""
        if not self._slots.acquire(blocking=False):
            body = tensors.error_json(
                f"Too many connections (serving.max_connections={self.max_connections}); retry later"
            )
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\nRetry-After: 1\r\n\r\n".encode("latin-1")
                    + body
                )
            except OSError:
                pass
            self.metrics.observe_request("rest", "other", "UNAVAILABLE", 0.0)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # the thread never started
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RestServer:
    """TF Serving's REST API for every served model on ``host:port`` (port 0: pick a free one).

    ``metrics_path``: where Prometheus scrapes (None: not exposed)."""

    def __init__(
        self, models: ModelRegistry, metrics: ServingMetrics, host: str, port: int, max_body_bytes: int,
        *, read_timeout_seconds: float, max_connections: int, max_tensor_elements: int,
        metrics_path: str | None,
    ) -> None:  # fmt: skip
        self._server = _Server(
            (host, port), models, metrics, max_body_bytes, read_timeout_seconds, max_connections,
            max_tensor_elements, metrics_path,
        )  # fmt: skip
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="rest-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Release the port; a server whose loop never started has nothing to shut down (and
        ``shutdown`` would wait for that loop forever)."""
        if self._thread.ident is not None:
            self._server.shutdown()
        self._server.server_close()

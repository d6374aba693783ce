"""Prometheus metrics of one server, served at ``/monitoring/prometheus/metrics``.

A private registry (not the process-global one) so several servers in one process, as in
tests and benchmarks, keep separate counts. Beside eventpipe's own series, the scrape carries
TF Serving's under TF Serving's names and labels (``TfServingSeries``), so a dashboard built for
``tensorflow_model_server`` reads this server unchanged.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # *_created series only add noise to a scrape

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# TF Serving's request_latency sampler: microseconds, 10 * 1.8^i for 33 buckets (~20 minutes).
TFS_LATENCY_BOUNDS_US = tuple(10.0 * 1.8**i for i in range(33))
TFS_API = {"predict": "Predict", "metadata": "GetModelMetadata"}  # our method label -> TF Serving's API
TFS_ENTRYPOINT = {"grpc": "GRPC", "rest": "REST"}


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return ",".join(f'{n}="{v}"' for n, v in zip(names, escaped, strict=True))


class TfServingSeries:
    """TF Serving's own series, in its Prometheus form (``/tensorflow/serving/request_count`` is
    exported as ``:tensorflow:serving:request_count``): request counts by model and status,
    request latency by model, API and entrypoint, and SavedModel load attempts by path and status.
    Rendered by hand: prometheus_client would append ``_total`` to the counters' names."""

    COUNT = ":tensorflow:serving:request_count"
    LATENCY = ":tensorflow:serving:request_latency"
    LOADS = ":tensorflow:cc:saved_model:load_attempt_count"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[tuple[str, str], int] = {}
        self._loads: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str, str], list[float]] = {}  # bucket counts..., sum

    def observe(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._count[model, status] = self._count.get((model, status), 0) + 1
            cells = self._latency.setdefault(
                (model, api, entrypoint), [0.0] * (len(TFS_LATENCY_BOUNDS_US) + 2)
            )
            for i, bound in enumerate(TFS_LATENCY_BOUNDS_US):
                if micros <= bound:
                    cells[i] += 1
            cells[-2] += 1  # +Inf
            cells[-1] += micros

    def observe_load(self, model_path: str, ok: bool) -> None:
        key = (model_path, "success" if ok else "fail")
        with self._lock:
            self._loads[key] = self._loads.get(key, 0) + 1

    def render(self) -> str:
        with self._lock:
            count, loads = dict(self._count), dict(self._loads)
            latency = {k: list(v) for k, v in self._latency.items()}
        out = [f"# HELP {self.COUNT} The total number of requests.", f"# TYPE {self.COUNT} counter"]
        out += [
            f"{self.COUNT}{{{_labels(('model_name', 'status'), k)}}} {v}" for k, v in sorted(count.items())
        ]
        out += [f"# HELP {self.LATENCY} Distribution of wall time (in microseconds) "
                "for Tensorflow Serving request.",
                f"# TYPE {self.LATENCY} histogram"]  # fmt: skip
        for key, cells in sorted(latency.items()):
            labels = _labels(("model_name", "API", "entrypoint"), key)
            out += [f'{self.LATENCY}_bucket{{{labels},le="{b:.10g}"}} {int(cells[i])}'
                    for i, b in enumerate(TFS_LATENCY_BOUNDS_US)]  # fmt: skip
            out += [f'{self.LATENCY}_bucket{{{labels},le="+Inf"}} {int(cells[-2])}',
                    f"{self.LATENCY}_sum{{{labels}}} {cells[-1]!r}",
                    f"{self.LATENCY}_count{{{labels}}} {int(cells[-2])}"]  # fmt: skip
        out += [f"# HELP {self.LOADS} The number of times a SavedModel was successfully loaded.",
                f"# TYPE {self.LOADS} counter"]  # fmt: skip
        out += [
            f"{self.LOADS}{{{_labels(('model_path', 'status'), k)}}} {v}" for k, v in sorted(loads.items())
        ]
        return "\n".join(out) + "\n"


class ServingMetrics:
    """Request counts and latencies, batch sizes, model loads and available versions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "eventpipe_serving_requests",
            "Requests handled, by model (empty before one is named), API, method and canonical status code.",
            ["model", "api", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eventpipe_serving_request_latency_seconds",
            "Wall time from request received to response ready.",
            ["api", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "eventpipe_serving_batch_size",
            "Rows per model call after dynamic batching.",
            ["model", "version", "signature"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batched_requests = Histogram(
            "eventpipe_serving_batch_requests",
            "Requests merged into one model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "eventpipe_serving_model_loads",
            "Model version load attempts, by outcome.",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.available = Gauge(
            "eventpipe_serving_model_version_available",
            "1 for each model version currently serving.",
            ["model", "version", "platform"],
            registry=self.registry,
        )

        self.tf_serving = TfServingSeries()

    def observe_request(self, api: str, method: str, code: str, seconds: float, model: str = "") -> None:
        self.requests.labels(model, api, method, code).inc()
        self.latency.labels(api, method).observe(seconds)
        if model and method in TFS_API:
            self.tf_serving.observe(model, TFS_API[method], TFS_ENTRYPOINT[api], code, seconds)

    def observe_load(self, model: str, version_dir: str, ok: bool) -> None:
        self.loads.labels(model, "success" if ok else "failure").inc()
        self.tf_serving.observe_load(version_dir, ok)

    def set_available(self, model: str, version: int, platform: str, available: bool) -> None:
        if available:
            self.available.labels(model, str(version), platform).set(1)
        else:
            try:
                self.available.remove(model, str(version), platform)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.tf_serving.render().encode("utf-8")

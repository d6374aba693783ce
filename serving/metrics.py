"""Prometheus metrics of one server, served at ``/monitoring/prometheus/metrics``.

A private registry (not the process-global one) so several servers in one process, as in
tests and benchmarks, keep separate counts.
"""

from __future__ import annotations

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
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """Request counts and latencies, batch sizes, model loads and available versions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "eventpipe_serving_requests",
            "Requests handled, by API, method and canonical status code.",
            ["api", "method", "code"],
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

    def observe_request(self, api: str, method: str, code: str, seconds: float) -> None:
        self.requests.labels(api, method, code).inc()
        self.latency.labels(api, method).observe(seconds)

    def set_available(self, model: str, version: int, platform: str, available: bool) -> None:
        if available:
            self.available.labels(model, str(version), platform).set(1)
        else:
            try:
                self.available.remove(model, str(version), platform)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)

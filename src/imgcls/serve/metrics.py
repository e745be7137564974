"""Prometheus metrics of the server: requests, errors, latency and batch sizes."""

from __future__ import annotations

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """One registry per app, so two servers in one process never mix their counts."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        self.registry = CollectorRegistry()
        self.content_type = CONTENT_TYPE_LATEST
        self.requests = Counter(
            "imgcls_requests", "HTTP requests answered", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "imgcls_errors", "HTTP requests answered with a 4xx or 5xx status", ["endpoint"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "imgcls_request_seconds", "Time to answer a request", ["endpoint"],
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "imgcls_batch_images", "Images per forward pass (micro-batching)",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

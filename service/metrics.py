"""Prometheus metrics of one process, kept in a registry of its own (not the global one).

Subsystems add their metrics to ``Metrics.registry``; ``GET /metrics`` renders it. Label
values are bounded: route templates, never raw paths, keys or tenants.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]

_CHILD_CACHE_MAX = 10_000
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The process's registry and the metrics every web process has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request; the labelled children are looked up once, then cached."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            if len(self._request_children) >= _CHILD_CACHE_MAX:
                self._request_children.clear()
            children = (self.http_requests.labels(method, route, str(status)), self.http_request_duration.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

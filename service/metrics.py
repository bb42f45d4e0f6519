"""Prometheus metrics of one process, kept in a registry of its own (not the global one).

Subsystems add their metrics to ``Metrics.registry``; ``GET /metrics`` renders it. Label
values are bounded: route templates, never raw paths, keys or tenants.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "OTHER" (bounded)
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _HttpRequests(Collector):
    """``http_requests_total`` and ``http_request_duration_seconds``, counted in plain numbers.

    Every request is recorded, so the hot path is a few dictionary and list updates with
    no lock (the event loop is one thread); the Prometheus families are built only when
    ``/metrics`` is scraped. Profiling showed the labelled client metrics costing ~3 µs a request.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # route -> [count per bucket (the last one is +Inf), sum of seconds]
        self.durations: dict[str, tuple[list[int], list[float]]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in _METHODS else "OTHER", route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = ([0] * (len(_LATENCY_BUCKETS_S) + 1), [0.0])
        histogram[0][bisect_left(_LATENCY_BUCKETS_S, seconds)] += 1
        histogram[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("http_requests", "HTTP requests answered", labels=["method", "route", "status"])
        for (method, route, status), value in sorted(self.counts.items()):
            requests.add_metric([method, route, str(status)], value)
        durations = HistogramMetricFamily(
            "http_request_duration_seconds", "Time to answer an HTTP request", labels=["route"]
        )
        for route, (counts, total) in sorted(self.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, _LATENCY_BUCKETS_S), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric([route], buckets, total[0])
        yield requests
        yield durations


class Metrics:
    """The process's registry and the metrics every web process has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http = _HttpRequests()
        self.registry.register(self._http)

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        self._http.record(method, route, status, seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

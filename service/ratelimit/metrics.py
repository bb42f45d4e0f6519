"""The limiter's counters and latency histogram, ready to be added to the process registry.

Decisions are counted in plain integers and turned into Prometheus families only when
``/metrics`` is scraped: the hot path pays a dictionary increment, not a labelled
counter's lock. Labels are bounded: outcome, plan (names from the policy file), reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["LimiterMetrics"]

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LimiterMetrics(Collector):
    """Counts of decisions by outcome and plan, Redis errors by reason, Redis call latency."""

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.local_refusals: Counter[str] = Counter()
        self.redis_errors: Counter[str] = Counter()
        self.redis_latency = Histogram(
            "ratelimit_redis_latency_seconds",
            "Time of one limiter round trip to Redis (a batch of decisions)",
            buckets=_LATENCY_BUCKETS_S,
            registry=None,
        )

    def register(self, registry: CollectorRegistry) -> None:
        """Expose these metrics on ``registry`` (the process's ``/metrics``)."""
        registry.register(self)
        registry.register(self.redis_latency)

    def count(self, outcome: str, plan: str, *, local: bool = False) -> None:
        self.decisions[outcome, plan] += 1
        if local:
            self.local_refusals[plan] += 1

    def redis_error(self, reason: str) -> None:
        self.redis_errors[reason] += 1

    def collect(self) -> Iterator[Metric]:
        yield _counter(
            "ratelimit_decisions",
            "Rate-limit decisions: allowed, limited, shadow_limited (admitted, a shadow bucket was short),"
            " fail_open and fail_closed (Redis did not answer in time)",
            ["outcome", "plan"],
            {key: value for key, value in self.decisions.items()},
        )
        yield _counter(
            "ratelimit_local_refusals",
            "Limited decisions taken from the exact local refusal cache, without a Redis round trip",
            ["plan"],
            {(plan,): value for plan, value in self.local_refusals.items()},
        )
        yield _counter(
            "ratelimit_redis_errors",
            "Limiter calls to Redis that failed: timeout, connection, reply, noscript (reloaded and resent)",
            ["reason"],
            {(reason,): value for reason, value in self.redis_errors.items()},
        )


def _counter(name: str, documentation: str, labels: list[str], values: dict[tuple[str, ...], int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family

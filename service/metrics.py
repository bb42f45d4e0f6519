"""Prometheus metrics of one process, kept in a registry of its own (not the global one), and the metrics port.

Subsystems add their collectors to ``Metrics.registry``; values that live in Redis are
brought up to date by the refreshers added with ``add_refresher`` (each caches what it
reads, so two scrapes close together cost Redis one read). ``GET /metrics`` on the public
port and the metrics port (``metrics_listener``) both render through ``Metrics.scrape``.
Label values are bounded: route templates, task names, pool names, never raw paths, keys
or tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import ConnectionPool

from service.logging import get_logger

__all__ = ["CONTENT_TYPE", "ConnectionPools", "Histograms", "Metrics", "metrics_listener"]

log = get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "OTHER" (bounded)
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# A pool's (in use, idle, max) connections, read when metrics are scraped.
PoolReader = Callable[[], tuple[int, int, int]]
Refresher = Callable[[], Awaitable[None]]


class Histograms:
    """Histograms by one label, counted in plain lists and turned into a family only when scraped."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        # label -> (count per bucket, the last one is +Inf; [sum of observations])
        self._values: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, label: str, value: float) -> None:
        histogram = self._values.get(label)
        if histogram is None:
            histogram = self._values[label] = ([0] * (len(self._bounds) + 1), [0.0])
        histogram[0][bisect_left(self._bounds, value)] += 1
        histogram[1][0] += value

    def family(self, name: str, documentation: str, label: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=[label])
        for value, (counts, total) in sorted(self._values.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, self._bounds), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value], buckets, total[0])
        return family


class _HttpRequests(Collector):
    """``http_requests_total`` and ``http_request_duration_seconds``, counted in plain numbers.

    Every request is recorded, so the hot path is a few dictionary and list updates with
    no lock (the event loop is one thread); the Prometheus families are built only when
    ``/metrics`` is scraped. Profiling showed the labelled client metrics costing ~3 µs a request.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.durations = Histograms(_LATENCY_BUCKETS_S)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in _METHODS else "OTHER", route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.durations.observe(route, seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("http_requests", "HTTP requests answered", labels=["method", "route", "status"])
        for (method, route, status), value in sorted(self.counts.items()):
            requests.add_metric([method, route, str(status)], value)
        yield requests
        yield self.durations.family("http_request_duration_seconds", "Time to answer an HTTP request", "route")


def redis_pool_reader(pool: ConnectionPool) -> PoolReader:
    """How many connections of a redis-py pool are in use, idle and allowed (``tests/test_metrics.py`` pins these)."""
    return lambda: (len(pool._in_use_connections), len(pool._available_connections), pool.max_connections)


class ConnectionPools(Collector):
    """The connections of each pool this process has (Redis, PostgreSQL), by pool name."""

    def __init__(self) -> None:
        self._readers: dict[str, PoolReader] = {}

    def track(self, name: str, pool: ConnectionPool | PoolReader) -> None:
        """Report ``pool`` (a redis-py pool, or a reader of another kind of pool) as ``name`` until ``forget``."""
        self._readers[name] = redis_pool_reader(pool) if isinstance(pool, ConnectionPool) else pool

    def forget(self, name: str) -> None:
        self._readers.pop(name, None)

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "connection_pool_connections", "Connections of a pool of this process", labels=["pool", "state"]
        )
        limits = GaugeMetricFamily(
            "connection_pool_max_connections", "The most connections a pool of this process opens", labels=["pool"]
        )
        for name, read in sorted(self._readers.items()):
            in_use, idle, most = read()
            connections.add_metric([name, "in_use"], in_use)
            connections.add_metric([name, "idle"], idle)
            limits.add_metric([name], most)
        yield connections
        yield limits


class Metrics:
    """The process's registry, the metrics every process has, and how it is scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http = _HttpRequests()
        self.registry.register(self._http)
        self.pools = ConnectionPools()
        self.registry.register(self.pools)
        self._refreshers: list[Refresher] = []

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        self._http.record(method, route, status, seconds)

    def add_refresher(self, refresh: Refresher) -> None:
        """Run ``refresh`` before each scrape: it brings values read from elsewhere (Redis) up to date.

        A refresher answers within its own deadline and caches, so a scrape never hangs on a sick
        Redis and scrapes of both ports close together read Redis once.
        """
        self._refreshers.append(refresh)

    async def scrape(self) -> bytes:
        """The registry in the Prometheus text format, after every refresher has run."""
        await asyncio.gather(*(refresh() for refresh in self._refreshers))
        return generate_latest(self.registry)


@contextlib.asynccontextmanager
async def metrics_listener(metrics: Metrics, port: int, *, host: str | None = None) -> AsyncIterator[None]:
    """Serve ``GET /metrics`` with no token on ``port`` while inside; ``0`` serves nothing.

    ``host`` ``None`` listens on every interface, IPv4 and IPv6 (Fly's scraper comes over
    the IPv6 private network). The port is for a scraper on a private network only: it is
    never routed by ``[http_service]``. A port already taken is logged as an error and the
    process runs on without it: metrics are not worth refusing jobs or requests for.
    """
    if port == 0:
        yield
        return

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=await metrics.scrape(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics, allow_head=False)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            log.error("metrics port unavailable; metrics stay on the public /metrics only", port=port, error=str(exc))
        else:
            log.info("metrics port listening", host=host or "*", port=port)
        yield
    finally:
        await runner.cleanup()

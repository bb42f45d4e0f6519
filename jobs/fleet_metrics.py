"""Fleet-wide metrics read from Redis at scrape time: the queue, workers, cron, Redis ``INFO``, maintenance findings.

Every process (web and worker) shows them, so a scraper of any machine sees the fleet; the
values are the same on every process, so aggregate them with ``max``, not ``sum``. One
read is one pipeline (``queue_depth.lua``, ``live_workers.lua``, ``INFO``, the findings
hash) and, with cron on, the schedule's status (``CronStore.status``: two round trips),
cached for ``CACHE_TTL_S``: scrapes of both ports, or several scrapers, within that
time share one read, and concurrent scrapes wait for the same read. A scrape waits at most
``SCRAPE_WAIT_S`` for it; a sick Redis then gives the last known values and
``fleet_metrics_up 0``, never a hung scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from jobs.cron import Schedule
from jobs.cron_store import OUTCOMES as CRON_OUTCOMES
from jobs.cron_store import CronJobStatus, CronStore
from jobs.maintenance import Finding
from jobs.redis_keys import IN_PROGRESS_PREFIX, MAINTENANCE_FINDINGS_KEY, QUEUE_KEY, WORKERS_KEY, worker_key
from jobs.scripts import load_script
from service.logging import get_logger
from service.metrics import Metrics

__all__ = ["CACHE_TTL_S", "SCRAPE_WAIT_S", "FleetMetrics"]

log = get_logger(__name__)

CACHE_TTL_S = 10.0
SCRAPE_WAIT_S = 1.0
_QUEUE_SCAN_MAX = 1000

# INFO field -> (family, kind, help); counters are named without _total (the family adds it).
_INFO_FAMILIES = {
    "used_memory": ("redis_used_memory_bytes", "gauge", "Memory Redis uses (INFO used_memory)"),
    "maxmemory": ("redis_maxmemory_bytes", "gauge", "Redis's memory limit, 0 for none (INFO maxmemory)"),
    "connected_clients": ("redis_connected_clients", "gauge", "Client connections to Redis, every process's"),
    "total_commands_processed": ("redis_commands_processed", "counter", "Commands Redis has processed"),
    "expired_keys": ("redis_expired_keys", "counter", "Keys Redis has expired"),
    "evicted_keys": ("redis_evicted_keys", "counter", "Keys Redis has evicted under memory pressure"),
    "keyspace_hits": ("redis_keyspace_hits", "counter", "Key look-ups that found their key"),
    "keyspace_misses": ("redis_keyspace_misses", "counter", "Key look-ups that found no key"),
}
_QUEUE_STATES = ("queued", "deferred", "in_progress")


@dataclass
class _Snapshot:
    """What the last read found; a part whose reply failed stays as the read before had it."""

    queue: tuple[int, int, int] | None = None
    workers_live: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    cron: list[CronJobStatus] = field(default_factory=list)


class FleetMetrics(Collector):
    """The fleet-wide families of one process, read through ``redis`` and cached; ``schedule``: cron's too."""

    def __init__(self, redis: Redis, schedule: Schedule | None = None) -> None:
        self._redis = redis
        self._cron = CronStore(redis, schedule) if schedule is not None else None
        self._queue_depth = load_script(redis, "queue_depth")
        self._live_workers = load_script(redis, "live_workers")
        self._snapshot = _Snapshot()
        self._read_at = -CACHE_TTL_S  # monotonic time of the last answered read
        self._read_at_s = 0.0  # the same, as Unix time
        self._complete = False  # whether every part of the last read answered in time
        self._reading: asyncio.Task[None] | None = None

    def register(self, metrics: Metrics) -> None:
        """Show these families on ``metrics`` and read them before each of its scrapes."""
        metrics.registry.register(self)
        metrics.add_refresher(self.refresh)

    async def refresh(self) -> None:
        """Read Redis unless the cached values are fresh; wait at most ``SCRAPE_WAIT_S`` for it."""
        if time.monotonic() - self._read_at < CACHE_TTL_S:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._read())
        _, pending = await asyncio.wait({self._reading}, timeout=SCRAPE_WAIT_S)
        if pending:
            self._complete = False  # the read goes on; its answer serves the next scrape

    async def close(self) -> None:
        """Stop a read still under way (the process is stopping)."""
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    async def _read(self) -> None:
        reads = [self._read_pipeline()]
        if self._cron is not None:
            reads.append(self._read_cron())
        complete = await asyncio.gather(*reads)
        self._complete = all(complete)
        if any(complete):
            self._read_at, self._read_at_s = time.monotonic(), time.time()

    async def _read_pipeline(self) -> bool:
        """Queue depth, live workers, ``INFO`` and the findings in one round trip; whether all answered."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._queue_depth(
                    keys=[QUEUE_KEY], args=[int(time.time() * 1000), IN_PROGRESS_PREFIX, _QUEUE_SCAN_MAX], client=pipe
                )
                await self._live_workers(keys=[WORKERS_KEY], args=[worker_key("")], client=pipe)
                pipe.info()
                pipe.hgetall(MAINTENANCE_FINDINGS_KEY)
                queue, workers, info, findings = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # a sick Redis: the scrape shows what is known, and says so
            log.warning("fleet metrics could not be read from redis", error=type(exc).__name__)
            return False
        snapshot = self._snapshot
        if not isinstance(queue, Exception):
            snapshot.queue = (int(queue[0]), int(queue[1]), int(queue[2]))
        if not isinstance(workers, Exception):
            snapshot.workers_live = len(workers)
        if not isinstance(info, Exception):
            snapshot.info = info
        if not isinstance(findings, Exception):
            snapshot.findings = {check.decode(): Finding.from_json(raw) for check, raw in findings.items()}
        return not any(isinstance(reply, Exception) for reply in (queue, workers, info, findings))

    async def _read_cron(self) -> bool:
        assert self._cron is not None
        try:
            self._snapshot.cron = await self._cron.status(history=False)
        except Exception as exc:  # as above
            log.warning("cron metrics could not be read from redis", error=type(exc).__name__)
            return False
        return True

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        yield GaugeMetricFamily(
            "fleet_metrics_up",
            "1 when the last read of the fleet-wide values from Redis answered in full and in time",
            value=1 if self._complete else 0,
        )
        yield GaugeMetricFamily(
            "fleet_metrics_age_seconds",
            "Age of the fleet-wide values shown (they are cached between reads)",
            value=time.time() - self._read_at_s if self._read_at_s else float("nan"),
        )
        depth = GaugeMetricFamily("jobs_queue_depth", "Jobs by state, fleet-wide", labels=["state"])
        if snapshot.queue is not None:
            for state, count in zip(_QUEUE_STATES, snapshot.queue, strict=True):
                depth.add_metric([state], count)
        yield depth
        workers = GaugeMetricFamily("jobs_workers_live", "Workers whose heartbeat is live")
        if snapshot.workers_live is not None:
            workers.add_metric([], snapshot.workers_live)
        yield workers
        for name, (family, kind, documentation) in _INFO_FAMILIES.items():
            metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(family, documentation)
            if name in snapshot.info:
                metric.add_metric([], float(snapshot.info[name]))
            yield metric
        yield from _cron_families(snapshot.cron)
        yield from _finding_families(snapshot.findings)


def _cron_families(statuses: list[CronJobStatus]) -> Iterator[Metric]:
    """Runs of each cron job by outcome, fleet-wide (``jobs.cron_store``), and its last success."""
    runs = CounterMetricFamily(
        "cron_runs", "Cron runs by job and outcome, fleet-wide, since Redis was last emptied", labels=["job", "outcome"]
    )
    last_success = GaugeMetricFamily(
        "cron_last_success_timestamp_seconds", "Unix time the cron job's last successful run ended", labels=["job"]
    )
    for status in statuses:
        for outcome in CRON_OUTCOMES:
            runs.add_metric([status.name, outcome], status.runs_by_outcome.get(outcome, 0))
        if status.last_success_ms is not None:
            last_success.add_metric([status.name], status.last_success_ms / 1000)
    yield runs
    yield last_success


# Gauges taken from one value of a finding: family, help, check, value.
_FINDING_GAUGES = (
    ("redis_memory_used_ratio", "Used memory / maxmemory at the last memory check", "memory", "ratio"),
    ("redis_slowlog_entries", "Slow-log entries in the last digest", "slowlog", "entries"),
    (
        "redis_expired_keys_per_minute",
        "Keys expired per minute between the last two samples",
        "keyspace_rates",
        "expired_per_minute",
    ),
    (
        "redis_evicted_keys_per_minute",
        "Keys evicted per minute between the last two samples",
        "keyspace_rates",
        "evicted_per_minute",
    ),
)


def _finding_families(findings: dict[str, Finding]) -> Iterator[Metric]:
    """The maintenance jobs' last findings (``jobs.maintenance``), whichever worker ran them."""
    usable = {check: finding for check, finding in findings.items() if finding.status != "unavailable"}
    ok = GaugeMetricFamily(
        "maintenance_check_ok", "1 when the check's last finding was ok, 0 a warning", labels=["check"]
    )
    available = GaugeMetricFamily(
        "maintenance_check_available", "0 when this Redis refuses what the check needs", labels=["check"]
    )
    at = GaugeMetricFamily(
        "maintenance_check_timestamp_seconds", "Unix time of the check's last finding", labels=["check"]
    )
    for check, finding in sorted(findings.items()):
        available.add_metric([check], int(check in usable))
        at.add_metric([check], finding.at)
        if check in usable:
            ok.add_metric([check], int(finding.status == "ok"))
    yield from (ok, available, at)

    for name, documentation, check, key in _FINDING_GAUGES:
        gauge = GaugeMetricFamily(name, documentation)
        if check in usable and usable[check].values.get(key) is not None:
            gauge.add_metric([], float(usable[check].values[key]))
        yield gauge

    eviction = GaugeMetricFamily("redis_eviction_policy_safe", "1 when maxmemory-policy is noeviction")
    commands = GaugeMetricFamily(
        "redis_slowlog_commands", "Slow-log entries in the last digest by command name", labels=["command"]
    )
    writes = GaugeMetricFamily(
        "redis_persistence_last_write_ok", "1 when the last AOF or RDB write succeeded", labels=["kind"]
    )
    snapshot_age = GaugeMetricFamily("redis_rdb_last_save_age_seconds", "Age of Redis's last RDB snapshot")
    removed = GaugeMetricFamily("maintenance_cleanup_removed", "What the last cleanup removed", labels=["kind"])
    if "eviction" in usable:
        eviction.add_metric([], int(usable["eviction"].status == "ok"))
    if "slowlog" in usable:
        for command, count in sorted(usable["slowlog"].values["by_command"].items()):
            commands.add_metric([command], count)
    if "persistence" in usable:
        persistence = usable["persistence"]
        writes.add_metric(["rdb"], int(persistence.values["rdb_last_write_ok"]))
        if persistence.values["aof_enabled"]:
            writes.add_metric(["aof"], int(persistence.values["aof_last_write_ok"]))
        # the age when it was measured, plus the time since
        snapshot_age.add_metric([], persistence.values["rdb_last_save_age_s"] + time.time() - persistence.at)
    if "cleanup" in usable:
        for kind in ("index_entries", "idempotency_records", "worker_ids"):
            removed.add_metric([kind], usable["cleanup"].values[f"{kind}_removed"])
    yield from (eviction, commands, writes, snapshot_age, removed)

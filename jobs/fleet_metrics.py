"""Fleet-wide metrics read from Redis at scrape time: the queue, workers, cron, Redis ``INFO``, maintenance findings.

Every process (web and worker) shows them, so a scraper of any machine sees the fleet; the
values are the same on every process, so aggregate them with ``max``, not ``sum``. One
read is two commands sent together: ``fleet_metrics.lua`` (queue depth, live workers, the
maintenance findings, cron's state) and ``INFO``; Upstash bills each command, so a read
is shared for ``CACHE_TTL_S`` (``SharedResult``): scrapes of both ports, or several
scrapers, within that time share one read, and concurrent scrapes wait for the same read. A scrape waits at most
``SCRAPE_WAIT_S`` for it; a sick Redis then gives the last known values and
``fleet_metrics_up 0``, never a hung scrape.
"""

from __future__ import annotations

import asyncio
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
from jobs.maintenance import Finding
from jobs.redis_keys import (
    CRON_KEY,
    IN_PROGRESS_PREFIX,
    MAINTENANCE_FINDINGS_KEY,
    QUEUE_KEY,
    WORKERS_KEY,
    worker_key,
)
from jobs.scripts import load_script
from service.logging import get_logger
from service.metrics import Metrics
from service.shared_result import SharedResult

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


@dataclass(frozen=True)
class _CronCounts:
    runs_by_outcome: dict[str, int]
    last_success_ms: int | None


@dataclass
class _Snapshot:
    """What the last read found; a part whose reply failed stays as the read before had it."""

    queue: tuple[int, int, int] | None = None
    workers_live: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    cron: dict[str, _CronCounts] = field(default_factory=dict)


class FleetMetrics(Collector):
    """The fleet-wide families of one process, read through ``redis`` and cached; ``schedule``: cron's too."""

    def __init__(self, redis: Redis, schedule: Schedule | None = None, *, cache_ttl_s: float = CACHE_TTL_S) -> None:
        self._redis = redis
        self._schedule = schedule
        self._script = load_script(redis, "fleet_metrics")
        self._snapshot = _Snapshot()
        self._read_at_s = 0.0  # Unix time of the last read that answered
        self._complete = False  # whether every part of the last read answered in time
        self._reads = SharedResult(self._read, fresh_s=cache_ttl_s)

    def register(self, metrics: Metrics) -> None:
        """Show these families on ``metrics`` and read them before each of its scrapes."""
        metrics.registry.register(self)
        metrics.add_refresher(self.refresh)

    async def refresh(self, max_age_s: float | None = None) -> None:
        """Read Redis unless the last read is fresh (younger than ``max_age_s``, when given: the
        dashboard wants fresher values than a scrape); wait at most ``SCRAPE_WAIT_S`` for it."""
        try:
            await asyncio.wait_for(self._reads.get(max_age_s), SCRAPE_WAIT_S)
        except TimeoutError:
            self._complete = False  # the read goes on (it is shared); its answer serves the next scrape

    @property
    def queue_depth(self) -> dict[str, int] | None:
        """Jobs queued, deferred and in progress at the last read (None before one answered)."""
        queue = self._snapshot.queue
        return None if queue is None else dict(zip(_QUEUE_STATES, queue, strict=True))

    @property
    def redis_info(self) -> dict[str, Any]:
        """Redis's ``INFO`` at the last read (empty before one answered)."""
        return self._snapshot.info

    async def close(self) -> None:
        """Stop a read still under way (the process is stopping)."""
        await self._reads.close()

    async def _read(self) -> None:
        replies: tuple[Any, Any] = await asyncio.gather(
            self._script(
                keys=[QUEUE_KEY, WORKERS_KEY, MAINTENANCE_FINDINGS_KEY, CRON_KEY],
                args=[int(time.time() * 1000), IN_PROGRESS_PREFIX, _QUEUE_SCAN_MAX, worker_key("")],
            ),
            self._redis.info(),
            return_exceptions=True,
        )
        jobs, info = replies
        snapshot = self._snapshot
        if isinstance(jobs, BaseException):
            log.warning("fleet metrics could not be read from redis", error=type(jobs).__name__)
        else:
            queued, deferred, in_progress, workers, findings, cron = jobs
            snapshot.queue = (int(queued), int(deferred), int(in_progress))
            snapshot.workers_live = int(workers)
            snapshot.findings = _findings(dict(zip(findings[::2], findings[1::2], strict=True)))
            snapshot.cron = self._cron_counts(dict(zip(cron[::2], cron[1::2], strict=True)))
        if isinstance(info, BaseException):
            log.warning("redis INFO could not be read for the metrics", error=type(info).__name__)
        else:
            snapshot.info = info
        self._complete = not isinstance(jobs, BaseException) and not isinstance(info, BaseException)
        if not isinstance(jobs, BaseException) or not isinstance(info, BaseException):
            self._read_at_s = time.time()

    def _cron_counts(self, state: dict[bytes, bytes]) -> dict[str, _CronCounts]:
        """Runs by outcome and the last success of each scheduled job, from ``jobs:cron``'s fields
        ``<name>:n:<outcome>`` and ``<name>:ok`` (the layout ``jobs.redis_keys`` documents)."""
        counts = {}
        for job in self._schedule or ():
            last_ok = state.get(f"{job.name}:ok".encode())
            counts[job.name] = _CronCounts(
                {outcome: int(state.get(f"{job.name}:n:{outcome}".encode(), 0)) for outcome in CRON_OUTCOMES},
                int(last_ok) if last_ok else None,
            )
        return counts

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


def _findings(stored: dict[bytes, bytes]) -> dict[str, Finding]:
    """The findings that can be read (one written by another version of the code may not be)."""
    findings = {}
    for check, raw in stored.items():
        try:
            findings[check.decode()] = Finding.from_json(raw)
        except (TypeError, ValueError):
            log.warning("unreadable maintenance finding", check=check.decode(errors="replace"))
    return findings


def _cron_families(counts: dict[str, _CronCounts]) -> Iterator[Metric]:
    """Runs of each cron job by outcome, fleet-wide (``jobs.cron_store``), and its last success."""
    runs = CounterMetricFamily(
        "cron_runs", "Cron runs by job and outcome, fleet-wide, since Redis was last emptied", labels=["job", "outcome"]
    )
    last_success = GaugeMetricFamily(
        "cron_last_success_timestamp_seconds", "Unix time the cron job's last successful run ended", labels=["job"]
    )
    for name, job in counts.items():
        for outcome, count in job.runs_by_outcome.items():
            runs.add_metric([name, outcome], count)
        if job.last_success_ms is not None:
            last_success.add_metric([name], job.last_success_ms / 1000)
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
    # .get throughout: a finding written by another version of the code must not break a scrape
    if "slowlog" in usable:
        for command, count in sorted(usable["slowlog"].values.get("by_command", {}).items()):
            commands.add_metric([command], count)
    if "persistence" in usable:
        persistence = usable["persistence"].values
        for kind in ("rdb", "aof") if persistence.get("aof_enabled") else ("rdb",):
            if f"{kind}_last_write_ok" in persistence:
                writes.add_metric([kind], int(persistence[f"{kind}_last_write_ok"]))
        if "rdb_last_save_age_s" in persistence:  # the age when it was measured, plus the time since
            snapshot_age.add_metric([], persistence["rdb_last_save_age_s"] + time.time() - usable["persistence"].at)
    if "cleanup" in usable:
        for kind in ("index_entries", "idempotency_records", "worker_ids"):
            removed.add_metric([kind], usable["cleanup"].values.get(f"{kind}_removed", 0))
    yield from (eviction, commands, writes, snapshot_age, removed)

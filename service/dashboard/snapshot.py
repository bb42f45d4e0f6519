"""The dashboard's JSON document: every section read together, one read shared by every viewer of a process.

Each section comes from the part of the service that owns it; nothing here reads their keys
a second way:

- ``ready``: the ``/ready`` body (``service.api.readiness``, itself shared for 1 s);
- ``queue`` and ``redis``: the fleet-wide read of ``/metrics`` (``jobs.fleet_metrics``:
  ``fleet_metrics.lua`` and ``INFO``), asked to be at most ``FRESH_S`` old;
- ``workers``: the live heartbeats (``jobs.heartbeat``); ``cron``: ``CronStore.status``;
- ``throughput``, ``limits`` and ``failures``: ``recent.lua``, one call over the counters
  that the workers (``jobs.failures``) and the limiter (``service.ratelimit.usage``) keep.

A section that cannot be read within ``PART_TIMEOUT_S`` is ``null`` and named in
``unavailable``; the others are still shown. A document costs Redis at most
``ROUND_TRIPS_MAX`` round trips, and one is built per process per ``FRESH_S`` however many
dashboards are open (``tests/test_dashboard.py`` counts them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis

from jobs import failures
from jobs.cron_store import CronStore
from jobs.fleet_metrics import FleetMetrics
from jobs.heartbeat import live_workers
from jobs.redis_keys import FAILURES_KEPT, FAILURES_KEY, MINUTE_STATS_PREFIX
from jobs.serialization import iso_from_ms
from service.ratelimit import usage
from service.settings import Settings
from service.shared_result import SharedResult

__all__ = ["FRESH_S", "ROUND_TRIPS_MAX", "Dashboard"]

FRESH_S = 2.0
PART_TIMEOUT_S = 1.5
MINUTES_SHOWN = 60
TENANTS_SHOWN = 10
FAILURES_SHOWN = 20
CRON_RUNS_SHOWN = 5
# /ready's checks (PING, the heartbeats twice, cron's state in two pipelines), the fleet read
# (its script and INFO), the heartbeats, cron's status (two pipelines) and recent.lua.
ROUND_TRIPS_MAX = 11
_OUTCOMES = ("complete", "failed", "retried", "aborted")


def _count(value: bytes | None) -> int:
    return int(value) if value else 0


def _pairs(flat: list[bytes]) -> list[tuple[str, float]]:
    return [(member.decode(), float(score)) for member, score in zip(flat[::2], flat[1::2], strict=True)]


class Dashboard:
    """Builds the document from the parts that own each section; ``get`` shares one build among the
    callers of ``FRESH_S``."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        readiness: SharedResult[dict[str, Any]],
        fleet: FleetMetrics,
        cron: CronStore,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._readiness = readiness
        self._fleet = fleet
        self._cron_store = cron
        self._recent = redis.register_script(files("service.dashboard").joinpath("recent.lua").read_text())
        self._shared = SharedResult(self._build, fresh_s=FRESH_S)

    async def get(self) -> dict[str, Any]:
        return await self._shared.get()

    async def close(self) -> None:
        await self._shared.close()

    async def _build(self) -> dict[str, Any]:
        fleet = self._fleet
        now = time.time()
        first_minute = int(now // 60) - MINUTES_SHOWN + 1
        parts: dict[str, Awaitable[Any]] = {
            "ready": self._readiness.get(),
            "fleet": fleet.refresh(max_age_s=FRESH_S),
            "workers": live_workers(self._redis),
            "cron": self._cron_store.status(),
            "recent": self._read_recent(first_minute),
        }
        names = list(parts)
        results = await asyncio.gather(
            *(asyncio.wait_for(part, PART_TIMEOUT_S) for part in parts.values()), return_exceptions=True
        )
        read: dict[str, Any] = {
            name: result for name, result in zip(names, results, strict=True) if not isinstance(result, BaseException)
        }
        queue = fleet.queue_depth if "fleet" in read else None
        info = fleet.redis_info if "fleet" in read else {}
        document: dict[str, Any] = {
            "generated_at": iso_from_ms(now * 1000),
            "refresh_s": FRESH_S,
            "ready": read.get("ready"),
            "queue": queue,
            "workers": read.get("workers"),
            "cron": self._cron(read["cron"]) if "cron" in read else None,
            "redis": _redis(info) if info else None,
            "throughput": None,
            "limits": None,
            "failures": None,
        }
        if "recent" in read:
            document.update(_recent(read["recent"], first_minute, rate_limit_enabled=self._settings.rate_limit_enabled))
        document["unavailable"] = [name for name, value in document.items() if value is None]
        return document

    async def _read_recent(self, first_minute: int) -> Any:
        return await self._recent(
            keys=[FAILURES_KEY],
            args=[
                first_minute,
                MINUTES_SHOWN,
                MINUTE_STATS_PREFIX,
                usage.MINUTE_PREFIX,
                usage.REFUSED_PREFIX,
                usage.LOWEST_PREFIX,
                TENANTS_SHOWN,
                FAILURES_KEPT,  # all of them: a job with several failed tries has several, and is shown once
            ],
        )

    def _cron(self, statuses: list[Any]) -> dict[str, Any]:
        jobs = []
        for status in statuses:
            job = status.to_json()
            job["runs"] = job["runs"][:CRON_RUNS_SHOWN]
            jobs.append(job)
        return {"enabled": self._settings.enable_cron, "jobs": jobs}


def _redis(info: dict[str, Any]) -> dict[str, Any]:
    """What of ``INFO`` the page shows (nothing secret: no address, no configuration beyond the memory policy)."""
    return {
        "version": str(info.get("redis_version", "")),
        "used_memory_bytes": int(info.get("used_memory", 0)),
        "maxmemory_bytes": int(info.get("maxmemory", 0)),
        "eviction_policy": str(info.get("maxmemory_policy", "")),
        "connected_clients": int(info.get("connected_clients", 0)),
        "ops_per_s": int(info.get("instantaneous_ops_per_sec", 0)),
    }


def _recent(reply: list[Any], first_minute: int, *, rate_limit_enabled: bool) -> dict[str, Any]:
    jobs_flat, refused_flat, most_refused, lowest, records = reply
    by_outcome: dict[str, list[int]] = {outcome: [] for outcome in _OUTCOMES}
    for index, value in enumerate(jobs_flat):
        by_outcome[_OUTCOMES[index % len(_OUTCOMES)]].append(_count(value))
    tenants: dict[str, dict[str, Any]] = {}
    for minute in most_refused:
        for tenant, count in _pairs(minute):
            entry = tenants.setdefault(tenant, {"tenant": tenant, "lowest_remaining": None, "refused": 0})
            entry["refused"] += int(count)
    for minute in lowest:
        for tenant, share in _pairs(minute):
            entry = tenants.setdefault(tenant, {"tenant": tenant, "lowest_remaining": None, "refused": 0})
            if entry["lowest_remaining"] is None or share < entry["lowest_remaining"]:
                entry["lowest_remaining"] = round(share, 4)
    nearest = sorted(
        tenants.values(),
        key=lambda entry: (
            entry["lowest_remaining"] if entry["lowest_remaining"] is not None else 2.0,
            -entry["refused"],
            entry["tenant"],
        ),
    )
    return {
        "throughput": {"first_minute_at": iso_from_ms(first_minute * 60_000), **by_outcome},
        "limits": {
            "enabled": rate_limit_enabled,
            "refused_per_minute": [_count(value) for value in refused_flat],
            "tenants": nearest[:TENANTS_SHOWN],
        },
        "failures": [failed.to_json() for failed in failures.recent(records)[:FAILURES_SHOWN]],
    }

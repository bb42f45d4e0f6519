"""The operations guide's maintenance tasks: each its own task in the registry, each doing one thing.

- ``maintenance.memory``: used memory against ``maxmemory`` (a warning from 80 %), and
  the eviction policy (a warning unless ``noeviction``: queued jobs live in this Redis);
- ``maintenance.slowlog``: ``SLOWLOG GET``, then ``SLOWLOG RESET``: the slowest commands
  and counts per command (a warning when there are any);
- ``maintenance.keyspace_rates``: expired and evicted keys per minute from ``INFO stats``
  deltas (a warning when keys are evicted);
- ``maintenance.cleanup``: the jobs system's stale bookkeeping (``jobs.cleanup``),
  bounded per run;
- ``maintenance.persistence``: AOF/RDB last write status and the last snapshot's age (a
  warning for a failed write, nothing kept on disk, or an old snapshot with unsaved changes).

Each finding is one structured log line (warning level when something is wrong) and the
check's entry in the hash ``jobs:maintenance:findings``, so every process's ``/metrics``
shows it (``jobs.fleet_metrics``), not only the worker that ran the job. Managed Redis
(Upstash) may refuse ``CONFIG``, ``SLOWLOG`` or ``INFO`` sections: a refusal is a finding
("not available on this Redis"), never a failed job. Slow-log arguments are never kept or
logged (they may hold secrets): only command names.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from marshmallow import Schema
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from jobs.cleanup import clean_up
from jobs.redis_keys import MAINTENANCE_FINDINGS_KEY, MAINTENANCE_STATS_SAMPLE_KEY
from jobs.registry import JobContext, Registry, Task
from service.backoff import Backoff
from service.logging import get_logger

__all__ = [
    "MEMORY_CRITICAL_RATIO",
    "MEMORY_WARNING_RATIO",
    "Finding",
    "register",
]

log = get_logger(__name__)
_T = TypeVar("_T")

MEMORY_WARNING_RATIO = 0.8  # doctor warns here too
MEMORY_CRITICAL_RATIO = 0.95  # doctor's problem: with noeviction, writes are about to be refused
SNAPSHOT_MAX_AGE_S = 3600  # an RDB-only Redis with unsaved changes older than this loses them on a crash
SLOWLOG_READ_MAX = 128
SLOWEST_KEPT = 5
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_.|-]{0,31}")

Status = Literal["ok", "warning", "unavailable"]


@dataclass(frozen=True)
class Finding:
    """The result of one check: its status, a constant summary (the log event) and measured values."""

    check: str
    status: Status
    summary: str
    values: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Finding:
        return cls(**json.loads(raw))


class _Refused(Exception):
    """This Redis refuses the command (renamed, denied by an ACL, not offered by a managed service)."""


async def _ask(call: Awaitable[_T]) -> _T:
    """A read that a managed Redis may refuse; the refusal becomes ``_Refused``."""
    try:
        return await call
    except ResponseError as exc:
        raise _Refused(str(exc)) from None


def _unavailable(check: str, reason: _Refused) -> Finding:
    return Finding(check, "unavailable", "not available on this Redis", {"reason": str(reason)})


async def _record(redis: Redis, findings: list[Finding]) -> dict[str, Any]:
    """Log each finding and keep it for every process's ``/metrics``; the job's result names them all."""
    for finding in findings:
        write = log.warning if finding.status == "warning" else log.info
        write(finding.summary, check=finding.check, status=finding.status, **finding.values)
        try:
            await redis.hset(MAINTENANCE_FINDINGS_KEY, finding.check, finding.to_json())  # type: ignore[misc]
        except ResponseError as exc:  # out of memory under noeviction: the log line is the record
            log.warning("maintenance finding not stored", check=finding.check, error=str(exc))
    return {finding.check: asdict(finding) for finding in findings}


async def _redis_time_s(redis: Redis) -> float:
    """Redis's own clock, so that samples taken by different workers compare."""
    seconds, microseconds = await redis.time()
    return float(seconds) + float(microseconds) / 1e6


def assess_memory(used_bytes: int, maxmemory_bytes: int) -> Finding:
    """Used memory against ``maxmemory``: a warning from ``MEMORY_WARNING_RATIO`` on."""
    if maxmemory_bytes == 0:
        return Finding("memory", "ok", "redis memory has no maxmemory limit", {"used_bytes": used_bytes})
    ratio = used_bytes / maxmemory_bytes
    values = {"used_bytes": used_bytes, "maxmemory_bytes": maxmemory_bytes, "ratio": round(ratio, 4)}
    if ratio >= MEMORY_WARNING_RATIO:
        return Finding("memory", "warning", f"redis memory above {MEMORY_WARNING_RATIO:.0%} of maxmemory", values)
    return Finding("memory", "ok", "redis memory", values)


async def _eviction(redis: Redis, memory: dict[str, Any]) -> Finding:
    policy = memory.get("maxmemory_policy")
    if policy is None:
        try:
            policy = (await _ask(redis.config_get("maxmemory-policy"))).get("maxmemory-policy")
        except _Refused as exc:
            return _unavailable("eviction", exc)
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy != "noeviction":
        return Finding("eviction", "warning", "redis eviction policy can drop queued jobs", {"policy": policy})
    return Finding("eviction", "ok", "redis eviction policy", {"policy": policy})


async def check_memory(job: JobContext) -> dict[str, Any]:
    """Used memory against ``maxmemory``, and the eviction policy."""
    try:
        memory = await _ask(job.redis.info("memory"))
    except _Refused as exc:
        return await _record(job.redis, [_unavailable("memory", exc), _unavailable("eviction", exc)])
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    return await _record(job.redis, [assess_memory(used, limit), await _eviction(job.redis, memory)])


def _command_name(command: bytes | str) -> str:
    """The command's name alone (its arguments may hold secrets), as a bounded label value."""
    text = command.decode(errors="replace") if isinstance(command, bytes) else command
    name = text.split(" ", 1)[0].lower()
    return name if _COMMAND_NAME.fullmatch(name) else "other"


async def digest_slowlog(job: JobContext) -> dict[str, Any]:
    """The slow log since the last digest: its slowest commands and counts per command; then empty it."""
    try:
        entries = await _ask(job.redis.slowlog_get(SLOWLOG_READ_MAX))
        await _ask(job.redis.slowlog_reset())
    except _Refused as exc:
        return await _record(job.redis, [_unavailable("slowlog", exc)])
    named = [(_command_name(entry["command"]), int(entry["duration"]), int(entry["start_time"])) for entry in entries]
    slowest = sorted(named, key=lambda entry: entry[1], reverse=True)[:SLOWEST_KEPT]
    values = {
        "entries": len(named),
        "slowest_us": slowest[0][1] if slowest else 0,
        "by_command": dict(Counter(name for name, _, _ in named)),  # bounded: Redis's command names
        "slowest": [{"command": name, "duration_us": us, "at": at} for name, us, at in slowest],
    }
    if named:
        return await _record(job.redis, [Finding("slowlog", "warning", "redis slow log has slow commands", values)])
    return await _record(job.redis, [Finding("slowlog", "ok", "redis slow log is empty", values)])


async def measure_keyspace_rates(job: JobContext) -> dict[str, Any]:
    """Expired and evicted keys per minute since the previous sample, which any worker may have taken."""
    try:
        stats = await _ask(job.redis.info("stats"))
    except _Refused as exc:
        return await _record(job.redis, [_unavailable("keyspace_rates", exc)])
    if "expired_keys" not in stats or "evicted_keys" not in stats:
        return await _record(job.redis, [_unavailable("keyspace_rates", _Refused("INFO stats has no key counters"))])
    sample = {"at": await _redis_time_s(job.redis), "expired": stats["expired_keys"], "evicted": stats["evicted_keys"]}
    raw = await job.redis.set(MAINTENANCE_STATS_SAMPLE_KEY, json.dumps(sample), get=True)
    previous = json.loads(raw) if raw else None
    window_s = sample["at"] - previous["at"] if previous else 0.0
    if (
        previous is None
        or window_s <= 0
        or sample["expired"] < previous["expired"]
        or sample["evicted"] < previous["evicted"]
    ):
        # The first sample, or Redis restarted (its counters began again): rates from the next run on.
        finding = Finding("keyspace_rates", "ok", "redis keyspace rates known from the next sample", {})
        return await _record(job.redis, [finding])
    values = {
        "expired_per_minute": round((sample["expired"] - previous["expired"]) * 60 / window_s, 3),
        "evicted_per_minute": round((sample["evicted"] - previous["evicted"]) * 60 / window_s, 3),
        "window_s": round(window_s, 3),
    }
    if values["evicted_per_minute"] > 0:
        return await _record(job.redis, [Finding("keyspace_rates", "warning", "redis is evicting keys", values)])
    return await _record(job.redis, [Finding("keyspace_rates", "ok", "redis keyspace rates", values)])


async def clean_up_bookkeeping(job: JobContext) -> dict[str, Any]:
    """Stale index entries, TTL-less idempotency records and dead worker ids, a bounded amount per run."""
    report = await clean_up(job.redis)
    return await _record(job.redis, [Finding("cleanup", "ok", "jobs bookkeeping cleaned up", asdict(report))])


async def check_persistence(job: JobContext) -> dict[str, Any]:
    """AOF/RDB last write status and the age of the last snapshot (the guide's "backups")."""
    try:
        info = await _ask(job.redis.info("persistence"))
    except _Refused as exc:
        return await _record(job.redis, [_unavailable("persistence", exc)])
    try:
        rdb_enabled: bool | None = bool((await _ask(job.redis.config_get("save"))).get("save"))
    except _Refused:
        rdb_enabled = None  # unknown: a managed Redis keeps its own backups
    aof_enabled = int(info.get("aof_enabled", 0)) == 1
    aof_ok = info.get("aof_last_write_status", "ok") == "ok" and info.get("aof_last_bgrewrite_status", "ok") == "ok"
    rdb_ok = info.get("rdb_last_bgsave_status", "ok") == "ok"
    age_s = max(0.0, await _redis_time_s(job.redis) - int(info.get("rdb_last_save_time", 0)))
    unsaved = int(info.get("rdb_changes_since_last_save", 0))
    problems = []
    if aof_enabled and not aof_ok:
        problems.append("the last AOF write or rewrite failed")
    if not rdb_ok:
        problems.append("the last RDB snapshot failed")
    if not aof_enabled and rdb_enabled is False:
        problems.append("neither AOF nor RDB is on: a restart loses every queued job")
    if not aof_enabled and rdb_enabled and unsaved and age_s > SNAPSHOT_MAX_AGE_S:
        problems.append(f"the last snapshot is older than {SNAPSHOT_MAX_AGE_S} s and changes since are unsaved")
    values: dict[str, Any] = {
        "aof_enabled": aof_enabled,
        "aof_last_write_ok": aof_ok,
        "rdb_last_write_ok": rdb_ok,
        "rdb_last_save_age_s": round(age_s, 1),
        "rdb_changes_since_last_save": unsaved,
    }
    if rdb_enabled is not None:
        values["rdb_enabled"] = rdb_enabled
    if problems:
        finding = Finding("persistence", "warning", "redis persistence is unhealthy", {**values, "problems": problems})
    else:
        finding = Finding("persistence", "ok", "redis persistence", values)
    return await _record(job.redis, [finding])


class _NoArgs(Schema):
    pass


def register(registry: Registry) -> None:
    """Add the maintenance tasks to ``registry`` (``jobs.cron.SCHEDULE`` runs them).

    Internal: tenants cannot enqueue them (their findings describe the whole Redis, and a
    slow-log digest empties the log); the schedule and operators' run-now run them. Two
    tries, as cron asks: a run killed with its worker runs again. A refused command is a
    finding, not a failure, so only a lost connection uses the second try.
    """
    for name, run in (
        ("maintenance.memory", check_memory),
        ("maintenance.slowlog", digest_slowlog),
        ("maintenance.keyspace_rates", measure_keyspace_rates),
        ("maintenance.cleanup", clean_up_bookkeeping),
        ("maintenance.persistence", check_persistence),
    ):
        backoff = Backoff(base_s=5.0, cap_s=30.0)
        registry.add(Task(name, run, _NoArgs(), timeout_s=60.0, max_tries=2, backoff=backoff, internal=True))

"""The bounded cleanup of the jobs system's bookkeeping, run by the maintenance task ``maintenance.cleanup``.

Three passes, each bounded per run so that a big keyspace never blocks Redis or the job:
at most ``SCAN_CALLS_MAX`` SCAN calls of ``SCAN_COUNT`` each, and at most
``INDEX_ENTRIES_MAX`` index entries examined. Where a pass stops, its SCAN cursor is kept
in Redis (``jobs:maintenance:cursors``), so the next run, on any worker, goes on from there.

- **Index entries** (``jobs:index:<tenant>``) whose job no longer exists (neither
  ``arq:job:<id>`` nor ``arq:result:<id>``). Job ids are never reused, so a missing job
  never comes back and removing its entry races with nothing. Entries are examined
  oldest first, a chunk at a time, until a chunk holds no stale entry: jobs expire
  roughly in the order they were enqueued, so the stale ones gather at the old end.
- **Idempotency records** (``jobs:idempotency:*``) that lost their TTL (a restore, a
  ``PERSIST``): deleted when their job is gone, else given their TTL back. A record whose
  job is gone but whose TTL still runs is kept: deleting it early would let a retried
  request run its job a second time.
- **Worker ids** in ``jobs:workers`` whose heartbeat key has expired (``prune_workers.lua``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis.asyncio import Redis

from jobs.redis_keys import (
    IDEMPOTENCY_PATTERN,
    IDEMPOTENCY_TTL_S,
    INDEX_PATTERN,
    JOB_PREFIX,
    MAINTENANCE_CURSORS_KEY,
    RESULT_PREFIX,
    WORKERS_KEY,
    worker_key,
)
from jobs.scripts import load_script

__all__ = ["INDEX_ENTRIES_MAX", "SCAN_CALLS_MAX", "SCAN_COUNT", "CleanupReport", "clean_up"]

SCAN_COUNT = 1000  # keys a SCAN call looks at: about a millisecond of Redis time
SCAN_CALLS_MAX = 25  # per pass and run: about 25,000 keys visited, 25 commands (Upstash bills each)
INDEX_ENTRIES_MAX = 5_000
_INDEX_CHUNK = 100
_PIPELINE_MAX = 500


@dataclass
class CleanupReport:
    """What one run removed and how far it got."""

    index_entries_removed: int = 0
    idempotency_records_removed: int = 0
    idempotency_records_given_ttl: int = 0
    worker_ids_removed: int = 0
    keys_examined: int = 0
    passes_completed: int = 0  # passes (of 3) whose SCAN went round the whole keyspace in this run


async def clean_up(redis: Redis) -> CleanupReport:
    """Run the three bounded passes once."""
    report = CleanupReport()
    await _indexes(redis, report)
    await _idempotency_records(redis, report)
    await _workers(redis, report)
    return report


async def _scan(redis: Redis, name: str, pattern: str, report: CleanupReport) -> tuple[list[bytes], int]:
    """Keys matching ``pattern`` from where the last run of pass ``name`` stopped, and the cursor to keep."""
    cursor = int(await redis.hget(MAINTENANCE_CURSORS_KEY, name) or 0)  # type: ignore[misc]
    found: dict[bytes, None] = {}  # SCAN may return a key twice
    for _ in range(SCAN_CALLS_MAX):
        cursor, keys = await redis.scan(cursor, match=pattern, count=SCAN_COUNT)
        found.update(dict.fromkeys(keys))
        if cursor == 0:
            report.passes_completed += 1
            break
    report.keys_examined += len(found)
    return list(found), cursor


async def _keep_cursor(redis: Redis, name: str, cursor: int) -> None:
    await redis.hset(MAINTENANCE_CURSORS_KEY, name, str(cursor))  # type: ignore[misc]


async def _missing_jobs(redis: Redis, job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` with neither a job nor a result key."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(JOB_PREFIX + job_id, RESULT_PREFIX + job_id)
        counts = await pipe.execute()
    return [job_id for job_id, count in zip(job_ids, counts, strict=True) if count == 0]


async def _indexes(redis: Redis, report: CleanupReport) -> None:
    keys, cursor = await _scan(redis, "index", INDEX_PATTERN, report)
    budget = INDEX_ENTRIES_MAX
    for key in keys:
        offset = 0
        while budget > 0:
            members = await redis.zrange(key, offset, offset + min(_INDEX_CHUNK, budget) - 1)
            if not members:
                break
            budget -= len(members)
            stale = await _missing_jobs(redis, [member.decode() for member in members])
            if not stale:
                break
            report.index_entries_removed += await redis.zrem(key, *stale)
            offset += len(members) - len(stale)
        if budget <= 0:
            break  # the rest of this SCAN batch waits for the next round
    await _keep_cursor(redis, "index", cursor)


async def _idempotency_records(redis: Redis, report: CleanupReport) -> None:
    keys, cursor = await _scan(redis, "idempotency", IDEMPOTENCY_PATTERN, report)
    for start in range(0, len(keys), _PIPELINE_MAX):
        batch = keys[start : start + _PIPELINE_MAX]
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.ttl(key)
            ttls = await pipe.execute()
        lasting = [key for key, ttl in zip(batch, ttls, strict=True) if ttl == -1]
        if not lasting:
            continue
        records = await redis.mget(lasting)
        job_of: dict[bytes, str] = {}
        for key, record in zip(lasting, records, strict=True):
            try:
                job_of[key] = str(json.loads(record)["job_id"])
            except (TypeError, ValueError, KeyError):
                job_of[key] = ""  # unreadable: nothing can ever replay it
        gone = set(await _missing_jobs(redis, [job_id for job_id in job_of.values() if job_id]))
        async with redis.pipeline(transaction=False) as pipe:
            for key, job_id in job_of.items():
                if not job_id or job_id in gone:
                    pipe.delete(key)
                    report.idempotency_records_removed += 1
                else:
                    pipe.expire(key, IDEMPOTENCY_TTL_S)
                    report.idempotency_records_given_ttl += 1
            await pipe.execute()
    await _keep_cursor(redis, "idempotency", cursor)


async def _workers(redis: Redis, report: CleanupReport) -> None:
    prune = load_script(redis, "prune_workers")
    cursor = int(await redis.hget(MAINTENANCE_CURSORS_KEY, "workers") or 0)  # type: ignore[misc]
    for _ in range(SCAN_CALLS_MAX):
        next_cursor, examined, removed = await prune(keys=[WORKERS_KEY], args=[worker_key(""), cursor, SCAN_COUNT])
        cursor = int(next_cursor)
        report.keys_examined += int(examined)
        report.worker_ids_removed += int(removed)
        if cursor == 0:
            report.passes_completed += 1
            break
    await _keep_cursor(redis, "workers", cursor)

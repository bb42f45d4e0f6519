"""Per-worker heartbeats: one key per worker with a TTL, and a reader of the live ones.

``jobs:worker:<id>`` holds the worker's id, host, pid, start time, last beat, job
counters and whether it runs the cron schedule, as JSON, and expires
``HEARTBEAT_TTL_FACTOR`` beats after the last one, so a killed worker drops out by itself.
``jobs:workers`` is the set of ids, so that readers never scan the keyspace; the reader
forgets ids whose key has expired, and a worker whose key had expired (a long stall) adds
itself again with its next beat. A worker that stops cleanly deletes only its own key. A
beat is one command (two when it re-registers).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis

from jobs.redis_keys import WORKERS_KEY, worker_key
from jobs.scripts import load_script

__all__ = ["HEARTBEAT_TTL_FACTOR", "Beat", "live_workers", "remove", "write"]

HEARTBEAT_TTL_FACTOR = 3


@dataclass(frozen=True)
class Beat:
    id: str
    host: str
    pid: int
    started_at: float
    beat_at: float
    interval_s: float
    running: int
    complete: int
    failed: int
    retried: int
    cron: bool = False  # it runs the cron schedule: the scheduler heartbeat is any such worker's beat


async def write(redis: Redis, beat: Beat) -> None:
    """Store ``beat``; the first beat (or the first after the key expired) registers the id."""
    ttl_s = max(1, round(beat.interval_s * HEARTBEAT_TTL_FACTOR))
    previous = await redis.set(worker_key(beat.id), json.dumps(asdict(beat)), ex=ttl_s, get=True)
    if previous is None:
        await redis.sadd(WORKERS_KEY, beat.id)  # type: ignore[misc]


async def remove(redis: Redis, worker_id: str) -> None:
    """Forget one worker (its own clean stop)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(worker_key(worker_id))
        pipe.srem(WORKERS_KEY, worker_id)
        await pipe.execute()


async def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat key is live, with ``beat_age_s``, oldest start first."""
    values = await load_script(redis, "live_workers")(keys=[WORKERS_KEY], args=[worker_key("")])
    now = time.time()
    workers = []
    for value in values:
        beat = json.loads(value)
        beat["beat_age_s"] = round(max(now - beat["beat_at"], 0.0), 3)
        workers.append(beat)
    return sorted(workers, key=lambda beat: beat["started_at"])

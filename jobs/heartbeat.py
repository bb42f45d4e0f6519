"""Per-worker heartbeats: one key per worker with a TTL, and a reader of the live ones.

``jobs:worker:<id>`` holds the worker's id, host, pid, start time, last beat and job
counters as JSON and expires ``HEARTBEAT_TTL_FACTOR`` beats after the last one, so a
killed worker drops out by itself. ``jobs:workers`` is the set of ids, so that readers
never scan the keyspace; ids whose key has expired are pruned by the reader. A worker that
stops cleanly deletes only its own key.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis

from jobs.keys import WORKERS_KEY, worker_key

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


async def write(redis: Redis, beat: Beat, *, register: bool = False) -> None:
    """Store ``beat``; ``register`` also adds the worker to the set of ids (first beat)."""
    ttl_s = max(1, round(beat.interval_s * HEARTBEAT_TTL_FACTOR))
    if register:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.sadd(WORKERS_KEY, beat.id)
            pipe.set(worker_key(beat.id), json.dumps(asdict(beat)), ex=ttl_s)
            await pipe.execute()
    else:
        await redis.set(worker_key(beat.id), json.dumps(asdict(beat)), ex=ttl_s)


async def remove(redis: Redis, worker_id: str) -> None:
    """Forget one worker (its own clean stop)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(worker_key(worker_id))
        pipe.srem(WORKERS_KEY, worker_id)
        await pipe.execute()


async def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat key is live, with ``beat_age_s``, oldest start first."""
    ids = sorted(member.decode() for member in await redis.smembers(WORKERS_KEY))  # type: ignore[misc]
    if not ids:
        return []
    values = await redis.mget([worker_key(worker_id) for worker_id in ids])
    dead = [worker_id for worker_id, value in zip(ids, values, strict=True) if value is None]
    if dead:
        await redis.srem(WORKERS_KEY, *dead)  # type: ignore[misc]
    now = time.time()
    workers = []
    for value in values:
        if value is not None:
            beat = json.loads(value)
            beat["beat_age_s"] = round(max(now - beat["beat_at"], 0.0), 3)
            workers.append(beat)
    return sorted(workers, key=lambda beat: beat["started_at"])

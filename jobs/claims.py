"""Claiming due jobs for a worker: ``claim.lua``'s keys, arguments and reply, in one place.

One script call takes the due jobs a worker has room for, serving tenants in turn, and
gives each an in-progress lease that holds a token of this claim (``"<now ms>:<worker
id>"``): the ``Finisher`` records a run, and the ``LeaseKeeper`` renews it, only while the
lease still holds that token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from arq.utils import timestamp_ms
from redis.asyncio import Redis

from jobs import redis_keys
from jobs.scripts import load_script

__all__ = ["Claim", "ClaimedJob", "Claimer"]

# Queue entries one claim examines at most (running jobs stay in arq's queue).
CLAIM_SCAN_MAX = 1000


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    score: int  # when it was due (epoch ms), as arq's ``run_job`` takes it
    tenant: str


@dataclass(frozen=True)
class Claim:
    """What one claim took, the value of their leases, and when something may next be claimable."""

    jobs: list[ClaimedJob]
    lease: str
    next_ms: int  # epoch ms, or -1 when nothing is known


class Claimer:
    """One worker's claims (``claim.lua``); ``with_cron`` says whether it takes cron runs too."""

    def __init__(self, redis: Redis, *, worker_id: str, queue_name: str, lease_ms: int, with_cron: bool) -> None:
        self._script = load_script(redis, "claim", include=["wake"])
        self._worker_id = worker_id
        self._queue_name = queue_name
        self._lease_ms = lease_ms
        # A worker without cron passes the cron runs (the system tenant's jobs) by.
        self._passed_by = "" if with_cron else redis_keys.SYSTEM_TENANT

    async def claim(self, free_slots: int, *, held: Iterable[str]) -> Claim:
        """Claim up to ``free_slots`` due jobs; ``held``: the jobs whose lease this worker holds (not
        one it let go: a lost lease's job may be claimable again)."""
        now_ms = timestamp_ms()
        reply = await self._script(
            keys=[redis_keys.TENANTS_KEY, redis_keys.WAKE_KEY, redis_keys.WORKERS_KEY, self._queue_name],
            args=[
                now_ms,
                free_slots,
                self._lease_ms,
                redis_keys.IN_PROGRESS_PREFIX,
                CLAIM_SCAN_MAX,
                redis_keys.WAKE_TOKENS_MAX,
                redis_keys.READY_PREFIX,
                self._passed_by,
                self._worker_id,
                *held,
            ],
        )
        claimed = [
            ClaimedJob(reply[i].decode(), int(reply[i + 1]), reply[i + 2].decode()) for i in range(1, len(reply), 3)
        ]
        # The value of the claimed jobs' leases, as claim.lua wrote it.
        return Claim(claimed, lease=f"{now_ms}:{self._worker_id}", next_ms=int(reply[0]))

"""The lease keeper: keeps a worker's claims on its running jobs alive, and the worker's heartbeat.

A claim (``claim.lua``) gives each job an in-progress key that expires after ``JOB_LEASE_S``.
The keeper renews the leases of the worker's running jobs every quarter lease, so a job is
never taken from a live worker, while the job of a killed worker is free again when its
lease runs out. The same round trip reads arq's abort set, so an aborted job is cancelled
within a quarter lease; and every ``WORKER_HEARTBEAT_S`` the keeper writes the worker's
heartbeat (``jobs.heartbeat``).

It knows nothing of arq: the worker tells it which jobs run, how to abort one and what
its heartbeat says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs import heartbeat
from jobs.redis_keys import ABORT_KEY, IN_PROGRESS_PREFIX
from service.logging import get_logger

__all__ = ["LeaseKeeper"]

log = get_logger(__name__)


class LeaseKeeper:
    """Renews the leases of a worker's running jobs, cancels the aborted ones, and beats.

    ``running`` returns the ids of the worker's running jobs, ``abort`` cancels one of them
    (called again on each renewal while the job is flagged), and ``beat`` describes the worker.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        lease_s: float,
        beat_every_s: float,
        running: Callable[[], list[str]],
        abort: Callable[[str], None],
        beat: Callable[[], heartbeat.Beat],
    ) -> None:
        self.lease_ms = round(lease_s * 1000)
        self._redis = redis
        self._renew_every_s = lease_s / 4
        self._beat_every_s = beat_every_s
        self._running = running
        self._abort = abort
        self._beat = beat
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Write the first heartbeat (the worker is visible at once), then keep in the background."""
        await heartbeat.write(self._redis, self._beat())
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self) -> None:
        """Stop keeping; leases of jobs still running then run out by themselves."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep(self) -> None:
        next_beat = time.monotonic() + self._beat_every_s
        while True:
            await asyncio.sleep(max(0.0, min(self._renew_every_s, next_beat - time.monotonic())))
            try:
                running = self._running()
                if running:
                    await self._renew(running)
                if time.monotonic() >= next_beat:
                    await heartbeat.write(self._redis, self._beat())
                    next_beat = time.monotonic() + self._beat_every_s
            except (RedisError, OSError) as exc:
                log.warning("worker keeper cannot reach redis", error=str(exc))

    async def _renew(self, job_ids: list[str]) -> None:
        """Extend the leases of ``job_ids`` by a whole lease and abort those flagged in arq's abort set."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.pexpire(IN_PROGRESS_PREFIX + job_id, self.lease_ms)
            pipe.zmscore(ABORT_KEY, job_ids)
            *renewed, abort_scores = await pipe.execute()
        for job_id, kept, abort_score in zip(job_ids, renewed, abort_scores, strict=True):
            if not kept:
                log.warning("job lease was lost; another worker may run it too", job_id=job_id)
            if abort_score is not None:
                self._abort(job_id)

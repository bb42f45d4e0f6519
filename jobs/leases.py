"""The lease keeper: keeps a worker's claims on its running jobs alive, and the worker's heartbeat.

A claim (``claim.lua``) gives each job an in-progress key that expires after ``JOB_LEASE_S``
and holds a token of that claim. The keeper renews the leases of the worker's running jobs
every quarter lease (``renew.lua``, only while a lease still holds this worker's token), so
a job is never taken from a live worker, while the job of a killed worker is free again
when its lease runs out. A lease that ran out anyway (the worker stalled, or Redis was
away longer than a lease) may be another worker's now: the worker is told, and stops
that job. The same round trip reads arq's abort set, so an aborted job is cancelled
within a quarter lease; and every ``WORKER_HEARTBEAT_S`` the keeper writes the worker's
heartbeat (``jobs.heartbeat``).

It knows nothing of arq: the worker tells it which leases it holds, how to abort or drop
a job and what its heartbeat says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs import heartbeat
from jobs.outage import Outage
from jobs.redis_keys import ABORT_KEY, IN_PROGRESS_PREFIX
from jobs.scripts import load_script
from service.logging import get_logger
from service.redis import cancel_until_done

__all__ = ["LeaseKeeper"]

log = get_logger(__name__)


class LeaseKeeper:
    """Renews the leases of a worker's running jobs, cancels the aborted ones, and beats.

    ``leases`` returns the worker's running jobs with the value of each one's lease, ``abort``
    cancels one of them (called again on each renewal while the job is flagged), ``lost``
    is told of a job whose lease is no longer the worker's, and ``beat`` describes the worker.
    Failures to reach Redis go to ``outage``.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        lease_s: float,
        beat_every_s: float,
        leases: Callable[[], dict[str, str]],
        abort: Callable[[str], None],
        lost: Callable[[str], None],
        beat: Callable[[], heartbeat.Beat],
        outage: Outage,
    ) -> None:
        self.lease_ms = round(lease_s * 1000)
        self._redis = redis
        self._renew_every_s = lease_s / 4
        self._beat_every_s = beat_every_s
        self._leases = leases
        self._abort = abort
        self._lost = lost
        self._beat = beat
        self._outage = outage
        self._renew_script = load_script(redis, "renew")
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Write the first heartbeat (the worker is visible at once), then keep in the background."""
        await heartbeat.write(self._redis, self._beat())
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self) -> None:
        """Stop keeping; leases of jobs still running then run out by themselves."""
        if self._task is not None:
            await cancel_until_done(self._task)

    async def _keep(self) -> None:
        next_beat = time.monotonic() + self._beat_every_s
        while True:
            await asyncio.sleep(max(0.0, min(self._renew_every_s, next_beat - time.monotonic())))
            leases = self._leases()
            beat_due = time.monotonic() >= next_beat  # a failed beat is tried again at the next renewal
            if not leases and not beat_due:
                continue
            try:
                if leases:
                    await self._renew(leases)
                if beat_due:
                    await heartbeat.write(self._redis, self._beat())
                    next_beat = time.monotonic() + self._beat_every_s
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
                next_beat = max(next_beat, time.monotonic() + self._renew_every_s)
            else:
                self._outage.succeeded()

    async def _renew(self, leases: dict[str, str]) -> None:
        """Extend the leases still this worker's by a whole lease; report lost ones; abort those flagged."""
        pairs = [item for job_id, value in leases.items() for item in (job_id, value)]
        reply = await self._renew_script(keys=[ABORT_KEY], args=[self.lease_ms, IN_PROGRESS_PREFIX, *pairs])
        still = self._leases()  # a job that was recorded meanwhile gave its lease up: not lost
        for i, (job_id, value) in enumerate(leases.items()):
            kept, aborted = reply[2 * i], reply[2 * i + 1]
            if still.get(job_id) != value:
                continue
            if not kept:
                log.warning("job lease was lost; stopping it here, it runs again where it is claimed", job_id=job_id)
                self._lost(job_id)
            elif aborted:
                self._abort(job_id)

"""The worker: arq's ``Worker`` with leases, wake-ups, per-worker heartbeats and hand-back.

What it changes in stock arq, and why, is in the package's docstring (``jobs/__init__.py``):
each change has its own module, and this class ties them to arq's job running. Every arq
option comes from ``WorkerSettings`` (``jobs.worker_settings``); ``jobs.running`` builds and
runs workers. What else this module relies on in arq is pinned by
``tests/jobs/test_arq_contract.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from typing import Any

from arq.connections import ArqRedis, log_redis_info
from arq.utils import timestamp_ms
from arq.worker import Worker as ArqWorker
from redis.exceptions import AuthenticationError, RedisError

from jobs import heartbeat, redis_keys
from jobs.claims import ClaimedJob, Claimer
from jobs.cron import Schedule, is_cron_run
from jobs.cron_runner import CronRunner
from jobs.finishing import Finisher, never_started
from jobs.leases import LeaseKeeper
from jobs.metrics import JobMetrics, Outcome
from jobs.outage import Outage
from jobs.registry import TryEnd
from jobs.wakeups import WakeUps
from jobs.worker_settings import WorkerSettings
from service.backoff import Backoff
from service.logging import get_logger
from service.metrics import Metrics
from service.redis import cancel_until_done
from service.settings import Settings

__all__ = ["Worker", "WorkerSettings"]  # WorkerSettings: arq's options, ``jobs.worker.WorkerSettings`` as arq names it

log = get_logger(__name__)

# The waits while Redis cannot be reached: up to 0.2 s, 0.4 s, ... 2 s (a worker is back
# within 2 s of Redis; a fleet's failed connects are cheap).
RECONNECT_BACKOFF = Backoff(base_s=0.2, cap_s=2.0)


class Worker(ArqWorker):
    """arq's worker with leases, wake-ups, per-worker heartbeats, hand-back on stop, and cron.

    ``schedule``: the cron schedule this worker runs (its ``worker_settings`` must hold its
    functions), or None for a worker without cron.
    """

    def __init__(
        self,
        settings: Settings,
        worker_settings: WorkerSettings,
        *,
        redis_pool: ArqRedis,
        schedule: Schedule | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(redis_pool=redis_pool, **worker_settings.arq_options())
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self._outage = Outage(self.worker_id)
        self._cron = (
            CronRunner(schedule, redis_pool, worker_id=self.worker_id, outage=self._outage)
            if schedule is not None
            else None
        )
        # The tenant of each running job, from its claim (the task sees it as ``JobContext.tenant``).
        self._job_tenants: dict[str, str] = {}
        self.job_metrics = JobMetrics(self._cancelled_outcome)
        # How each try ended, from its runner (``jobs.registry``), until its finish records it.
        self.try_ends: dict[str, TryEnd] = {}
        self.ctx.update(
            settings=settings,
            worker_id=self.worker_id,
            tenants=self._job_tenants,
            cron=self._cron,
            job_metrics=self.job_metrics,
            try_ends=self.try_ends,
        )
        self._finisher = Finisher(
            redis_pool,
            queue_name=self.queue_name,
            outage=self._outage,
            backoff=RECONNECT_BACKOFF,
            deserializer=worker_settings.job_deserializer,
            look_again=self._look_again,
        )
        self._leases = LeaseKeeper(
            redis_pool,
            lease_s=settings.job_lease_s,
            beat_every_s=settings.worker_heartbeat_s,
            leases=lambda: dict(self._finisher.held),
            abort=self._abort,
            lost=self._lost,
            beat=self._beat,
            outage=self._outage,
        )
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._wake_ups = WakeUps(settings, worker_id=self.worker_id, redis=redis_pool)
        self._started_at = time.time()
        self._claimer = Claimer(
            redis_pool,
            worker_id=self.worker_id,
            queue_name=self.queue_name,
            lease_ms=self._leases.lease_ms,
            with_cron=self._cron is not None,
        )
        self._metrics = metrics
        if metrics is not None:  # the process's /metrics shows this worker's runs and pools
            metrics.registry.register(self.job_metrics)
            metrics.pools.track("worker", redis_pool.connection_pool)
            metrics.pools.track("worker-wake", self._wake_ups.pool)

    # -- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Run ``main`` in the background (``stop`` ends it)."""
        self.main_task = self.loop.create_task(self.main())

    async def main(self) -> None:
        """Start up, then claim, run and wait until stopped; Redis outages are waited out, not fatal."""
        # arq writes two formatted lines per job at INFO; the worker writes one structured
        # line instead when a job's result is recorded (job_id, task, try, duration). arq's
        # warnings and failure tracebacks still come through.
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
        log.info(
            "worker starting", worker_id=self.worker_id, tasks=sorted(self.functions), lease_s=self.settings.job_lease_s
        )
        started = False
        failures = 0
        while not self._stopping:
            try:  # the wait too: a failover drops the blocking pop's connection as well
                if not started:
                    await self._start_up()
                    started = True
                next_ms = await self._iteration()
                self._outage.succeeded()
                failures = 0
                if self.burst:
                    # Done only when no job holds a slot either: a finished job's task can be reaped
                    # before its done callback gives the slot back, and with no slot free the
                    # iteration returns -1 without having looked for jobs.
                    if not self.tasks and not self.job_counter and next_ms < 0:
                        return
                    await self._wait_in_burst(next_ms)
                elif self.job_counter >= self.max_jobs:
                    await self._wait_for_slot()
                elif next_ms < 0 or next_ms > timestamp_ms():
                    await self._wake_ups.wait(self._seconds_to_wait(next_ms))
            except AuthenticationError:
                raise  # the credentials are wrong: waiting cannot fix a configuration error
            except Exception as exc:
                failures += 1
                if isinstance(exc, RedisError | OSError):
                    self._outage.failed(exc)
                elif failures == 1:  # a bug, not an outage: its traceback once, then the same backoff
                    log.exception("worker loop failed; retrying with backoff", worker_id=self.worker_id)
                await self._pause(RECONNECT_BACKOFF.delay_s(failures))

    async def _start_up(self) -> None:
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        if self._cron is not None and not self._cron.started:
            await self._cron.start()  # before the first heartbeat, which says this worker runs cron
        if not self._leases.started:
            await self._leases.start()

    async def _pause(self, delay_s: float) -> None:
        """Wait ``delay_s`` before trying Redis again, or less if ``stop`` is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), delay_s)

    async def _iteration(self) -> int:
        """Reap finished jobs, claim and start due jobs.

        Returns when something may next be claimable (epoch ms), or -1 when nothing is known.
        """
        self._reap()
        if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
            return -1
        claim = await self._claimer.claim(self.max_jobs - self.job_counter, held=self._finisher.held)
        for job in claim.jobs:
            await self._start(job, claim.lease)
        return claim.next_ms

    async def _start(self, job: ClaimedJob, lease: str) -> None:
        await self.sem.acquire()  # never waits: the claim took no more jobs than free slots
        self.job_counter += 1
        self._job_tenants[job.job_id] = job.tenant
        self._finisher.held[job.job_id] = lease
        task = self.loop.create_task(self.run_job(job.job_id, job.score))
        task.add_done_callback(functools.partial(self._on_job_done, job.job_id, lease))
        self.tasks[job.job_id] = task

    def _on_job_done(self, job_id: str, lease: str, _: asyncio.Task[Any]) -> None:
        self._release_sem_dec_counter_on_complete()
        self._slot_free.set()
        # A run that ended without recording (its bookkeeping failed: Redis dropped a call)
        # gives its lease up: the lease runs out, and the job runs again.
        self._finisher.let_go(job_id, lease)

    def _reap(self) -> None:
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                del self._job_tenants[job_id]
                self._finisher.handing_back.discard(job_id)
                if not task.cancelled() and task.exception() is not None:
                    log.error("job bookkeeping failed", job_id=job_id, error=repr(task.exception()))

    # -- waiting ---------------------------------------------------------------------------

    def _seconds_to_wait(self, next_ms: int) -> float:
        now = time.time()
        until = now + self.settings.job_idle_poll_s
        if next_ms >= 0:
            until = min(until, next_ms / 1000)
        return max(until - now, 0.0)

    async def _wait_for_slot(self) -> None:
        self._slot_free.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot_free.wait(), self._seconds_to_wait(-1))

    async def _wait_in_burst(self, next_ms: int) -> None:
        timeout_s = self._seconds_to_wait(next_ms) if next_ms >= 0 else None
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        elif self.job_counter:  # reaped, but its done callback (``_on_job_done``) has yet to free its slot
            await self._wait_for_slot()
        elif timeout_s:
            await asyncio.sleep(timeout_s)

    # -- what the lease keeper asks ---------------------------------------------------------

    def _running_job_ids(self) -> list[str]:
        return [job_id for job_id, task in self.tasks.items() if not task.done()]

    def _lost(self, job_id: str) -> None:
        """The lease of a running job is no longer this worker's: stop the job here (it runs again elsewhere)."""
        self._finisher.let_go(job_id)
        task = self.job_tasks.get(job_id)
        if task is not None:
            task.cancel()

    def _abort(self, job_id: str) -> None:
        """Cancel an aborted job; arq then records it as aborted (``aborting_tasks``), not as a retry."""
        task = self.job_tasks.get(job_id)
        if task is not None and job_id not in self.aborting_tasks:
            log.info("aborting job", job_id=job_id)
            self.aborting_tasks.add(job_id)
            task.cancel()

    def _cancelled_outcome(self, job_id: str) -> Outcome:
        if job_id in self.aborting_tasks:
            return "aborted"
        return "handed_back" if job_id in self._finisher.handing_back else "retried"

    def _beat(self) -> heartbeat.Beat:
        return heartbeat.Beat(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            beat_at=time.time(),
            interval_s=self.settings.worker_heartbeat_s,
            running=len(self._running_job_ids()),
            complete=self.jobs_complete,
            failed=self.jobs_failed,
            retried=self.jobs_retried,
            cron=self._cron is not None,
        )

    # -- finishing -------------------------------------------------------------------------

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's ``finish_job`` as one script call (``finish.lua``), plus: nothing is recorded
        unless the lease is still this worker's, a job handed back on stop gets its try back,
        and a job that goes back to the queue (retry or hand-back) wakes a worker to schedule
        it; the same call counts the try's outcome for the minute and lists a failed try
        (``jobs.failures``). A cron run that is over is recorded by cron."""
        end = self.try_ends.pop(job_id, None)
        if finish and self._cron is not None and is_cron_run(job_id):
            await self._cron.finish(job_id, result_data)
            self._finisher.log_if_complete(job_id, result_data)
            return
        await self._finisher.record(
            job_id,
            self._job_tenants.get(job_id, redis_keys.SYSTEM_TENANT),
            finish,
            result_data,
            keep_result_s=None if keep_result_forever else result_timeout_s,
            incr_score=incr_score,
            keep_in_progress_s=keep_in_progress,
            end=end,
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's ``finish_failed_job`` (a job that expired, was aborted before it started, or ran out of
        tries) through ``finish_job`` too, so the job leaves its tenant's unfinished jobs (a cron run is
        recorded by cron); the job metrics count it as a run that never started."""
        if result_data is not None and not is_cron_run(job_id):
            end = never_started(result_data, self.functions)
            self.job_metrics.record(end.task, end.outcome)
            self.try_ends[job_id] = end
        await self.finish_job(job_id, True, result_data, self.keep_result_s, self.keep_result_forever, None, None)

    async def _look_again(self) -> None:
        """End the main loop's wait: a job this worker let go may be claimable now (no enqueue will say so),
        or held by another worker whose lease the next claim watches."""
        with contextlib.suppress(RedisError, OSError):
            await self._wake_ups.interrupt()

    # -- stopping --------------------------------------------------------------------------

    async def stop(self, grace_s: float) -> None:
        """Take no new jobs, give running ones ``grace_s`` to finish, hand the rest back, close."""
        self.allow_pick_jobs = False
        self._stopping = True
        # A finish that cannot reach Redis gives up then; the job's lease runs out by itself.
        self._finisher.give_up_at(time.monotonic() + grace_s + self.settings.redis_timeout_s)
        self._stop_requested.set()
        self._slot_free.set()
        if self.main_task is not None and not self.main_task.done():
            try:
                await self._wake_ups.interrupt()
            except (RedisError, OSError):
                self.main_task.cancel()  # Redis cannot take the interruption: the blocking pop cannot end by itself
            await asyncio.wait([self.main_task], timeout=self.settings.redis_timeout_s)
            await cancel_until_done(self.main_task)  # Redis does not answer: end the blocking pop
        running = {job_id: task for job_id, task in self.tasks.items() if not task.done()}
        if running:
            log.info("worker stopping; waiting for running jobs", jobs=len(running), grace_s=grace_s)
            _, pending = await asyncio.wait(running.values(), timeout=grace_s)
            if pending:
                handed_back = sorted(job_id for job_id, task in running.items() if task in pending)
                self._finisher.handing_back.update(handed_back)
                log.info("handing jobs back to the queue", job_ids=handed_back)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=self.settings.redis_timeout_s)
        await self._finisher.wait(timeout_s=self.settings.redis_timeout_s + grace_s)
        if self._cron is not None:
            await self._cron.stop()
        await self._leases.stop()
        await self.close()
        log.info(
            "worker stopped",
            worker_id=self.worker_id,
            complete=self.jobs_complete,
            failed=self.jobs_failed,
            retried=self.jobs_retried,
        )

    async def close(self) -> None:
        """arq's ``close`` with redis-py 5's ``aclose``, removing only this worker's heartbeat."""
        if self._pool is None:
            return
        if self.tasks:
            await asyncio.wait(self.tasks.values(), timeout=self.settings.redis_timeout_s)
        with contextlib.suppress(RedisError, OSError):
            await heartbeat.remove(self.pool, self.worker_id)
            await self._wake_ups.forget()
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        await self._wake_ups.close()
        self._pool = None
        if self._metrics is not None:
            self._metrics.registry.unregister(self.job_metrics)
            self._metrics.pools.forget("worker")
            self._metrics.pools.forget("worker-wake")

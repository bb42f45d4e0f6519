"""The worker: arq's ``Worker`` with leases, wake-ups, per-worker heartbeats and hand-back.

What it changes in stock arq, and why (see ``FINDINGS.md``):

- **Fair claims**: tenants are served in turn (``claim.lua``, keys in ``jobs.redis_keys``),
  not first-in first-out across tenants, so one tenant's backlog cannot hold another's
  job back by more than about one job's run time.
- **Claims** go through one Lua call (``claim.lua``) that gives each due job a short
  in-progress *lease* (``JOB_LEASE_S``, 10 s) instead of arq's "longest timeout + 10 s";
  the lease keeper (``jobs.leases``) renews the leases of running jobs every quarter
  lease. The job of a killed worker is free again when its lease runs out, whatever the
  tasks' timeouts.
- **No polling**: an idle worker blocks on ``BLPOP jobs:wake`` (``jobs.wakeups``), which
  every enqueue pushes to, until the next thing it knows of is due: a deferred job (a
  cron job's next slot is one), the end of another worker's lease, or the fallback poll
  (``JOB_IDLE_POLL_S``, 30 s). When there are peers, a claim pushes a token too, so an
  idle peer wakes and watches the new leases run out.
- **Heartbeats** are one key per worker with a TTL (``jobs.heartbeat``), not arq's one
  shared health-check key that any closing worker deletes (arq's ``record_health`` never runs).
- **Stopping** (``stop``): take no new jobs, let running ones finish within
  ``JOB_GRACE_S``, then cancel the rest and hand them back: they are due at once for
  another worker and the interrupted try is not counted.
- **Redis outages** do not end it: every loop, renewal and finish that cannot reach Redis
  retries with capped, jittered backoff (``jobs.outage`` logs one line when Redis is lost
  and one when it is back). A run is recorded only while its lease still holds this
  claim's token (``jobs.finishing``): one whose lease ran out meanwhile runs again
  elsewhere. Only refused credentials (a configuration error) end the main loop.
- Jobs and results are JSON (``jobs.serialization``), never pickle.
- **Cron** (``jobs.cron``) in place of arq's: with ``ENABLE_CRON`` the worker runs cron
  runs (jobs named ``cron:...``) and records their ends (``jobs.cron_runner``); without it,
  its claims pass them by.

Every arq option comes from ``WorkerSettings``; what else this module relies on in arq is
pinned by ``tests/jobs/test_arq_contract.py``.
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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from arq.connections import ArqRedis, log_redis_info
from arq.jobs import Deserializer, Serializer, deserialize_result
from arq.utils import timestamp_ms, to_ms
from arq.worker import Function
from arq.worker import Worker as ArqWorker
from redis.exceptions import AuthenticationError, RedisError

from jobs import failures, heartbeat, redis_keys
from jobs.cron import SCHEDULE, Schedule, is_cron_run
from jobs.cron_runner import CronRunner, arq_functions
from jobs.finishing import Finisher
from jobs.leases import LeaseKeeper
from jobs.metrics import JobMetrics, Outcome
from jobs.outage import Outage
from jobs.registry import Registry, TryEnd
from jobs.scripts import load_script
from jobs.serialization import ABORTED, deserialize, serialize, stored_error
from jobs.tasks import TASKS
from jobs.wakeups import WakeUps
from service.backoff import Backoff
from service.logging import get_logger
from service.metrics import Metrics
from service.redis import cancel_until_done, connection_pool
from service.settings import Settings

__all__ = ["Worker", "WorkerSettings", "create_worker", "running_worker"]

log = get_logger(__name__)

# Queue entries one claim examines at most (running jobs stay in arq's queue).
CLAIM_SCAN_MAX = 1000
# The waits while Redis cannot be reached: up to 0.2 s, 0.4 s, ... 2 s (a worker is back
# within 2 s of Redis; a fleet's failed connects are cheap).
RECONNECT_BACKOFF = Backoff(base_s=0.2, cap_s=2.0)


@dataclass(frozen=True)
class WorkerSettings:
    """arq's ``WorkerSettings``: the options of arq's ``Worker``, under arq's names.

    ``from_settings`` fills the per-deployment ones from ``Settings``; the worker passes
    every field, and nothing else, to arq's ``Worker`` (beside its Redis pool).
    """

    functions: Sequence[Function]
    max_jobs: int
    keep_result: float
    burst: bool = False
    queue_name: str = redis_keys.QUEUE_KEY
    job_serializer: Serializer = serialize
    job_deserializer: Deserializer = deserialize
    allow_abort_jobs: bool = True
    # ``stop`` ends a worker (``python -m jobs`` calls it on SIGTERM and SIGINT) and hands its jobs back.
    handle_signals: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, registry: Registry = TASKS, schedule: Schedule | None = None, **options: Any
    ) -> WorkerSettings:
        """The options of a worker running ``registry``'s tasks and, when given, the cron ``schedule``;
        ``options`` set other fields (``burst``, ...)."""
        cron = arq_functions(schedule, registry) if schedule is not None else []
        return cls(
            functions=[*registry.arq_functions(keep_result_s=settings.job_retention_s), *cron],
            max_jobs=settings.worker_concurrency,
            keep_result=settings.job_retention_s,
            **options,
        )

    def arq_options(self) -> dict[str, Any]:
        """The keyword arguments of arq's ``Worker``."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


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
        self._claim_script = load_script(redis_pool, "claim")
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
                    if not self.tasks and next_ms < 0:
                        return
                    await self._wait_in_burst(next_ms)
                elif self.job_counter >= self.max_jobs:
                    await self._wait_for_slot()
                elif next_ms < 0 or next_ms > timestamp_ms():
                    await self._wake_ups.wait(self._seconds_to_wait(next_ms))
            except AuthenticationError:
                raise  # the credentials are wrong: waiting cannot fix a configuration error
            except (RedisError, OSError) as exc:
                failures += 1
                self._outage.failed(exc)
                await self._pause(RECONNECT_BACKOFF.delay_s(failures))
            except Exception:
                failures += 1
                if failures == 1:  # a bug, not an outage: its traceback once, then the same backoff
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
        now_ms = timestamp_ms()
        reply = await self._claim_script(
            keys=[redis_keys.TENANTS_KEY, redis_keys.WAKE_KEY, redis_keys.WORKERS_KEY, self.queue_name],
            args=[
                now_ms,
                self.max_jobs - self.job_counter,
                self._leases.lease_ms,
                redis_keys.IN_PROGRESS_PREFIX,
                CLAIM_SCAN_MAX,
                redis_keys.WAKE_TOKENS_MAX,
                redis_keys.READY_PREFIX,
                "" if self._cron is not None else redis_keys.SYSTEM_TENANT,
                self.worker_id,
                *self._finisher.held,  # not a job this worker let go (a lost lease): it may be claimable again
            ],
        )
        lease = f"{now_ms}:{self.worker_id}"  # the value of the claimed jobs' leases, as claim.lua wrote it
        for i in range(1, len(reply), 3):
            await self._start(reply[i].decode(), int(reply[i + 1]), reply[i + 2].decode(), lease)
        return int(reply[0])

    async def _start(self, job_id: str, score: int, tenant: str, lease: str) -> None:
        await self.sem.acquire()  # never waits: the claim took no more jobs than free slots
        self.job_counter += 1
        self._job_tenants[job_id] = tenant
        self._finisher.held[job_id] = lease
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(functools.partial(self._on_job_done, job_id, lease))
        self.tasks[job_id] = task

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
        keep_ms = "" if keep_result_forever or result_timeout_s is None else to_ms(result_timeout_s)
        tenant = self._job_tenants.get(job_id, redis_keys.SYSTEM_TENANT)
        counted, failure = _what_ended(job_id, tenant, end)
        await self._finisher.record(
            job_id,
            tenant,
            finish,
            result_data,
            keep_ms,
            incr_score or "",
            "" if keep_in_progress is None else to_ms(keep_in_progress),
            counted=counted,
            failure=failure,
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's ``finish_failed_job`` (a job that expired, was aborted before it started, or ran out of
        tries) through ``finish_job`` too, so the job leaves its tenant's unfinished jobs (a cron run is
        recorded by cron); the job metrics count it as a run that never started."""
        if result_data is not None and not is_cron_run(job_id):
            ended = deserialize_result(result_data, deserializer=deserialize)
            aborted = isinstance(ended.result, dict) and ended.result.get("type") == ABORTED
            outcome: Outcome = "aborted" if aborted else "failed"
            self.job_metrics.record(ended.function, outcome)
            tries = int(ended.job_try or 0)
            function = self.functions.get(ended.function)
            max_tries = function.max_tries if function is not None and function.max_tries else tries
            error = None if aborted else stored_error(ended.result)
            self.try_ends[job_id] = TryEnd(ended.function, outcome, tries, max_tries, error)
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


def _what_ended(job_id: str, tenant: str, end: TryEnd | None) -> tuple[str, str]:
    """What ``finish.lua`` adds for this end of a try: the outcome it counts for the minute ("": none,
    for a hand-back or a cron run) and the failed try it lists (JSON, or "": none, or a job no tenant
    enqueued, which no operator can enqueue again)."""
    if end is None or end.outcome == "handed_back" or is_cron_run(job_id):
        return "", ""
    failure = ""
    if end.error is not None and tenant != redis_keys.SYSTEM_TENANT:
        failure = failures.failed_try(
            job_id=job_id,
            task=end.task,
            tenant=tenant,
            error=end.error,
            try_number=end.try_number,
            max_tries=end.max_tries,
            will_retry=end.outcome == "retried",
            at_ms=timestamp_ms(),
        )
    return end.outcome, failure


def create_worker(
    settings: Settings,
    *,
    registry: Registry = TASKS,
    schedule: Schedule = SCHEDULE,
    metrics: Metrics | None = None,
    **options: Any,
) -> Worker:
    """A worker on its own Redis pools, built from ``WorkerSettings`` (``options`` set its fields: ``burst``, ...).

    It runs the cron ``schedule`` with ``ENABLE_CRON``, unless in burst mode (a burst worker
    stops when nothing is due, and a cron job always has a run to come). With ``metrics``
    (the process's registry) it reports its job runs and pools there. Call it inside the
    event loop that will run the worker.
    """
    cron = schedule if settings.enable_cron and not options.get("burst") else None
    worker_settings = WorkerSettings.from_settings(settings, registry=registry, schedule=cron, **options)
    pool = ArqRedis(
        connection_pool(
            settings.require_redis(),
            max_connections=settings.worker_concurrency + 5,
            timeout_s=settings.redis_timeout_s,
            retries=0,  # a claim or a finish must never be sent twice
            client_name="ottoai-worker",
        ),
        job_serializer=worker_settings.job_serializer,
        job_deserializer=worker_settings.job_deserializer,
        default_queue_name=worker_settings.queue_name,
    )
    return Worker(settings, worker_settings, redis_pool=pool, schedule=cron, metrics=metrics)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    *,
    registry: Registry = TASKS,
    schedule: Schedule = SCHEDULE,
    metrics: Metrics | None = None,
    **options: Any,
) -> AsyncIterator[Worker]:
    """A worker running in this event loop; leaving stops it gracefully (``JOB_GRACE_S``)."""
    worker = create_worker(settings, registry=registry, schedule=schedule, metrics=metrics, **options)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(settings.job_grace_s)

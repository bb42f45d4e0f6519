"""What a worker with ``ENABLE_CRON`` does for the schedule (``jobs.cron``).

- Each cron job is an arq function, ``cron:<name>``, that runs the job's task (under the
  task's timeout and tries) after one check: the first try of a slot that starts later
  than the job's grace window after the latest slot is skipped, and recorded as missed.
- ``CronRunner.finish`` is the worker's ``finish_job`` for a cron run that is over: it
  works out the outcome, how many slots the run stood for and the next slot, and records
  them in one script call (``CronStore.finish``).
- ``CronRunner.start`` keeps every job scheduled: a full sync when the worker starts, then
  a cheap check every ``CRON_HEAL_S`` that recreates a pending run lost with Redis data.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from arq.jobs import deserialize_result
from arq.utils import timestamp_ms
from arq.worker import Function
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs.cron import CronJob, RunId, Schedule
from jobs.cron_store import CronRun, CronStore, Outcome
from jobs.outage import Outage
from jobs.registry import Registry, Task, arq_function, runner
from jobs.serialization import ABORTED, deserialize, iso_from_ms
from service.backoff import Backoff
from service.logging import bind_context, get_logger
from service.redis import cancel_until_done

__all__ = ["CRON_HEAL_S", "CronRunner", "arq_functions"]

log = get_logger(__name__)

# How often a worker checks that every cron job has its pending run (three Redis commands).
CRON_HEAL_S = 300.0
SYNC_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)
# arq serializes a run's result only when it keeps one; the cron finish reads it for the
# history and stores nothing under arq:result.
_RESULT_READ_S = 60.0


def arq_functions(schedule: Schedule, registry: Registry) -> list[Function]:
    """The schedule's jobs as arq functions; ``ValueError`` when one does not fit ``registry``."""
    schedule.check(registry)
    return [_arq_function(job, registry[job.task]) for job in schedule]


def _arq_function(job: CronJob, task: Task) -> Function:
    run_task = runner(task)

    async def run(ctx: dict[str, Any]) -> Any:
        bind_context(cron=job.name)
        cron: CronRunner = ctx["cron"]
        if cron.missed(job, ctx["job_id"], ctx["job_try"]):
            return None
        return await run_task(ctx, **job.args)

    return arq_function(task, keep_result_s=_RESULT_READ_S, name=job.function, run=run)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _error(value: Any) -> dict[str, str]:
    if isinstance(value, dict) and "type" in value:
        return {"type": str(value["type"]), "message": str(value.get("message", ""))}
    return {"type": "JobError", "message": str(value)}


class CronRunner:
    """One worker's part in running the schedule."""

    def __init__(self, schedule: Schedule, redis: Redis, *, worker_id: str, outage: Outage) -> None:
        self._store = CronStore(redis, schedule)
        self._schedule = schedule
        self._worker_id = worker_id
        self._outage = outage  # the worker's: an outage is one line however many parts retry
        self._missed: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def missed(self, job: CronJob, job_id: str, try_number: int) -> bool:
        """Whether the run ``job_id`` is to be skipped: it is a slot's first try, later than grace.

        A retry, a run killed with its worker, and a run-now always run.
        """
        run_id = RunId.parse(job_id)
        if run_id.manual or try_number > 1:
            return False
        now_ms = timestamp_ms()
        latest_ms = job.when.latest_at_or_before(now_ms)
        if now_ms - latest_ms <= job.grace_s * 1000:
            return False
        self._missed.add(job_id)
        log.warning(
            "cron slot missed: no worker ran it within its grace",
            slot=iso_from_ms(run_id.at_ms),
            latest_slot=iso_from_ms(latest_ms),
            grace_s=job.grace_s,
        )
        return True

    async def finish(self, job_id: str, result_data: bytes | None) -> None:
        """Record the end of the run ``job_id`` and create the job's next run (the slot after its start)."""
        run_id = RunId.parse(job_id)
        job = self._schedule.get(run_id.name)
        started_ms = finished_ms = timestamp_ms()
        tries, error = 1, {"type": "SerializationError", "message": "the run's result could not be serialized"}
        success = False
        if result_data is not None:
            result = deserialize_result(result_data, deserializer=deserialize)
            started_ms, finished_ms = _ms(result.start_time), _ms(result.finish_time)
            tries, success = result.job_try or 1, result.success
            error = _error(result.result)
        outcome: Outcome = "complete" if success else "aborted" if error["type"] == ABORTED else "failed"
        if job_id in self._missed:
            self._missed.discard(job_id)
            outcome = "missed"
        slots = 0
        if job is not None and not run_id.manual:
            slots = max(1, job.when.count(run_id.at_ms, job.when.latest_at_or_before(started_ms)))
        run = CronRun(
            job_id=job_id,
            slot_ms=run_id.at_ms,
            manual=run_id.manual,
            started_ms=started_ms,
            finished_ms=finished_ms,
            outcome=outcome,
            worker=self._worker_id,
            tries=tries,
            slots=slots,
            error=None if outcome in ("complete", "missed") else error,
        )
        await self._store.finish(run, next_run_ms=job.when.next_after(started_ms) if job is not None else None)
        if slots > 1:
            log.info("cron run stood for missed slots", cron=run_id.name, job_id=job_id, slots=slots, outcome=outcome)

    @property
    def started(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Put every job on the schedule now, then keep it there in the background until ``stop``.

        Now: the worker writes its heartbeat (which says it runs cron) after this, and
        readiness takes that to mean the schedule is in Redis.
        """
        await self._sync(full=True)
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_until_done(self._task)

    async def _sync(self, *, full: bool) -> None:
        created = await self._store.sync(full=full)
        if created:
            log.info("cron runs scheduled", cron_jobs=created)

    async def _keep(self) -> None:
        full, failures, delay_s = False, 0, CRON_HEAL_S
        while True:
            await asyncio.sleep(delay_s)
            try:
                await self._sync(full=full)
            except (RedisError, OSError) as exc:
                failures += 1
                delay_s = SYNC_BACKOFF.delay_s(failures)
                self._outage.failed(exc)
            else:
                self._outage.succeeded()
                full, failures, delay_s = False, 0, CRON_HEAL_S

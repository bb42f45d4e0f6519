"""The cron schedule's state in Redis, shared by workers, the web API and the command line.

Per cron job (see ``jobs/redis_keys.py``): the id of its current run (pending in arq's queue,
or running), whether it is paused, the schedule text in force, when it last succeeded,
its runs by outcome, and its last ``RUNS_KEPT`` runs. Every change is one Lua call:

- ``cron_sync.lua``: each job of a worker's schedule has one pending run (at start, and a
  cheap check now and then);
- ``cron_finish.lua``: a run's end is recorded and the next run created, together;
- ``cron_control.lua``: pause, resume, run now.

``status`` reads all of it in two round trips (``/internal/cron``, metrics, readiness).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from jobs.cron import CronJob, RunId, Schedule
from jobs.heartbeat import live_workers
from jobs.redis_keys import (
    ABORT_KEY,
    CRON_KEY,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    QUEUE_KEY,
    RETRY_PREFIX,
    SYSTEM_TENANT,
    TENANTS_KEY,
    WAKE_KEY,
    WAKE_TOKENS_MAX,
    cron_runs_key,
    ready_key,
)
from jobs.scripts import load_script
from jobs.serialization import iso_from_ms, serialize

__all__ = [
    "OUTCOMES",
    "RUNS_KEPT",
    "CronJobRunning",
    "CronJobStatus",
    "CronRun",
    "CronStore",
    "Outcome",
    "SchedulerHealth",
]

RUNS_KEPT = 20
# Cron runs belong to the system tenant: claims look at them in its ready set, like any tenant's.
_READY = ready_key(SYSTEM_TENANT)
Outcome = Literal["complete", "failed", "aborted", "missed"]
OUTCOMES: tuple[Outcome, ...] = ("complete", "failed", "aborted", "missed")


class CronJobRunning(Exception):
    """The cron job has a run in progress (a run-now would overlap it)."""


@dataclass(frozen=True)
class CronRun:
    """One run of a cron job, as its history keeps it (times in epoch ms)."""

    job_id: str
    slot_ms: int  # the slot it ran for; for a run-now, when it was asked for
    manual: bool
    started_ms: int
    finished_ms: int
    outcome: Outcome
    worker: str
    tries: int
    slots: int  # the scheduled slots it stands for: 1 on time, more when missed slots coalesced, 0 for a run-now
    error: dict[str, str] | None = None

    def record(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_record(cls, raw: bytes | str) -> CronRun:
        return cls(**json.loads(raw))

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "slot": iso_from_ms(self.slot_ms),
            "trigger": "manual" if self.manual else "schedule",
            "started_at": iso_from_ms(self.started_ms),
            "finished_at": iso_from_ms(self.finished_ms),
            "duration_s": round(max(self.finished_ms - self.started_ms, 0) / 1000, 3),
            "outcome": self.outcome,
            "worker": self.worker,
            "tries": self.tries,
            "slots": self.slots,
            "error": self.error,
        }


@dataclass(frozen=True)
class CronJobStatus:
    """A cron job as operators (and metrics) see it."""

    name: str
    task: str
    schedule: str
    grace_s: float
    known: bool  # a worker has put it on the schedule (False: no worker of this release has started yet)
    paused: bool
    running: bool
    current_run: str | None  # the job id of its pending or running run
    next_run_ms: int | None  # when its pending run is due; None while it runs or is paused
    last_success_ms: int | None
    runs_by_outcome: dict[str, int]  # since Redis was last emptied
    runs: tuple[CronRun, ...]  # newest first

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "schedule": self.schedule,
            "grace_s": self.grace_s,
            "known": self.known,
            "paused": self.paused,
            "running": self.running,
            "current_run": self.current_run,
            "next_run_at": None if self.next_run_ms is None else iso_from_ms(self.next_run_ms),
            "last_success_at": None if self.last_success_ms is None else iso_from_ms(self.last_success_ms),
            "runs_by_outcome": self.runs_by_outcome,
            "runs": [run.to_json() for run in self.runs],
        }


@dataclass(frozen=True)
class SchedulerHealth:
    """Whether the schedule is being run: a worker with cron is live and no job is stalled.

    A job no worker has scheduled yet (new in a release whose workers have not started) is
    ``unknown``, not stalled: a deploy that checks readiness must not wait on itself.
    """

    workers: int  # live workers that run the schedule
    last_beat_age_s: float | None  # of the freshest of them
    stalled: tuple[str, ...]  # known jobs, not paused, with no pending run or one overdue past its grace
    unknown: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.workers > 0 and not self.stalled


def _payload(job: CronJob, now_ms: int) -> bytes:
    # Arguments come from the schedule in code when the run starts, not from the payload.
    return serialize_job(job.function, (), {}, None, now_ms, serializer=serialize)


class CronStore:
    """The Redis side of ``schedule``: sync, finish, status, pause, resume and run now."""

    def __init__(self, redis: Redis, schedule: Schedule) -> None:
        self.redis = redis
        self.schedule = schedule
        self._sync = load_script(redis, "cron_sync", include=["wake"])
        self._finish = load_script(redis, "cron_finish", include=["wake"])
        self._control = load_script(redis, "cron_control", include=["wake"])

    async def sync(self, *, full: bool, now_ms: int | None = None) -> list[str]:
        """Give each job without a pending run one at its next slot after ``now_ms``; the names of those given one.

        ``full`` (a worker starting) also moves the pending run of a job whose schedule changed
        and forgets jobs that left the schedule.
        """
        now_ms = timestamp_ms() if now_ms is None else now_ms
        mode = "full" if full else "heal"
        args: list[Any] = [mode, JOB_PREFIX, IN_PROGRESS_PREFIX, cron_runs_key(""), WAKE_TOKENS_MAX, SYSTEM_TENANT]
        for job in self.schedule:
            due_ms = job.when.next_after(now_ms)
            args += [job.name, job.when.text, str(RunId(job.name, due_ms)), _payload(job, now_ms), due_ms]
        created = await self._sync(keys=[CRON_KEY, QUEUE_KEY, WAKE_KEY, _READY, TENANTS_KEY], args=args)
        return [name.decode() for name in created]

    async def finish(self, run: CronRun, *, next_run_ms: int | None) -> str | None:
        """Record ``run`` and, unless the job is paused (or ``next_run_ms`` is None), create its next run.

        Returns the next run's job id, or None when none was created.
        """
        name = RunId.parse(run.job_id).name
        job = self.schedule.get(name)
        next_id = str(RunId(name, next_run_ms)) if job is not None and next_run_ms is not None else ""
        created = await self._finish(
            keys=[
                IN_PROGRESS_PREFIX + run.job_id,
                RETRY_PREFIX + run.job_id,
                JOB_PREFIX + run.job_id,
                ABORT_KEY,
                QUEUE_KEY,
                WAKE_KEY,
                CRON_KEY,
                cron_runs_key(name),
                JOB_PREFIX + (next_id or run.job_id),
                _READY,
                TENANTS_KEY,
            ],
            args=[
                run.job_id,
                name,
                run.record(),
                run.outcome,
                RUNS_KEPT,
                next_id,
                _payload(job, run.finished_ms) if job is not None and next_id else "",
                next_run_ms or "",
                run.finished_ms,
                WAKE_TOKENS_MAX,
                SYSTEM_TENANT,
            ],
        )
        return created.decode() or None

    async def status(self, name: str | None = None, *, history: bool = True) -> list[CronJobStatus]:
        """Every job of the schedule (or only ``name``: ``UnknownCronJob``), in two round trips."""
        jobs = [self.schedule[name]] if name is not None else list(self.schedule)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(CRON_KEY)
            for job in jobs if history else ():
                pipe.lrange(cron_runs_key(job.name), 0, RUNS_KEPT - 1)
            state_raw, *histories = await pipe.execute()
        state = {field.decode(): value.decode() for field, value in state_raw.items()}
        current = {job.name: state.get(job.name) for job in jobs}
        ids = [run_id for run_id in current.values() if run_id]
        scores: dict[str, float | None] = {}
        leased: dict[str, bool] = {}
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zmscore(_READY, ids)
                for run_id in ids:
                    pipe.exists(IN_PROGRESS_PREFIX + run_id)
                found, *leases = await pipe.execute()
            scores = dict(zip(ids, found, strict=True))
            leased = {run_id: bool(lease) for run_id, lease in zip(ids, leases, strict=True)}
        statuses = []
        for index, job in enumerate(jobs):
            run_id = current[job.name]
            score = scores.get(run_id) if run_id else None
            running = bool(run_id and leased.get(run_id))
            ok = state.get(f"{job.name}:ok")
            statuses.append(
                CronJobStatus(
                    name=job.name,
                    task=job.task,
                    schedule=job.when.text,
                    grace_s=job.grace_s,
                    known=f"{job.name}:schedule" in state,
                    paused=f"{job.name}:paused" in state,
                    running=running,
                    current_run=run_id if score is not None else None,
                    next_run_ms=int(score) if score is not None and not running else None,
                    last_success_ms=int(ok) if ok else None,
                    runs_by_outcome={outcome: int(state.get(f"{job.name}:n:{outcome}", 0)) for outcome in OUTCOMES},
                    runs=tuple(CronRun.from_record(raw) for raw in histories[index]) if history else (),
                )
            )
        return statuses

    async def health(self) -> SchedulerHealth:
        """The scheduler heartbeat: live workers with cron, and jobs that are not being run."""
        beats = [beat for beat in await live_workers(self.redis) if beat.get("cron")]
        now_ms = time.time() * 1000
        statuses = await self.status(history=False)
        stalled = tuple(
            status.name
            for status in statuses
            if status.known
            and not status.paused
            and not status.running
            and (status.next_run_ms is None or now_ms - status.next_run_ms > status.grace_s * 1000)
        )
        unknown = tuple(status.name for status in statuses if not status.known)
        age = min((beat["beat_age_s"] for beat in beats), default=None)
        return SchedulerHealth(workers=len(beats), last_beat_age_s=age, stalled=stalled, unknown=unknown)

    async def pause(self, name: str) -> CronJobStatus:
        """Remove the job's pending run and create no more until ``resume`` (a running run finishes)."""
        await self._command("pause", self.schedule[name], "", "", "")
        return (await self.status(name))[0]

    async def resume(self, name: str) -> CronJobStatus:
        """Give a paused job its pending run again, at its next slot."""
        job = self.schedule[name]
        now_ms = timestamp_ms()
        due_ms = job.when.next_after(now_ms)
        await self._command("resume", job, str(RunId(name, due_ms)), _payload(job, now_ms), due_ms)
        return (await self.status(name))[0]

    async def run_now(self, name: str) -> str:
        """Run the job at once, in place of its pending run (the schedule goes on after it); its job id.

        ``CronJobRunning`` when a run is in progress. A paused job runs once and stays paused.
        """
        job = self.schedule[name]
        now_ms = timestamp_ms()
        run_id = str(RunId(name, now_ms, manual=True))
        if await self._command("run", job, run_id, _payload(job, now_ms), now_ms) == "running":
            raise CronJobRunning(f"cron job {name!r} is running now; try again when it has finished")
        return run_id

    async def _command(self, command: str, job: CronJob, run_id: str, payload: bytes | str, due_ms: int | str) -> str:
        reply = await self._control(
            keys=[CRON_KEY, QUEUE_KEY, WAKE_KEY, _READY, TENANTS_KEY],
            args=[
                command,
                job.name,
                JOB_PREFIX,
                IN_PROGRESS_PREFIX,
                run_id,
                payload,
                due_ms,
                WAKE_TOKENS_MAX,
                SYSTEM_TENANT,
            ],
        )
        return reply.decode() if isinstance(reply, bytes) else str(reply)

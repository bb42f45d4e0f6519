"""The cron schedule: which task runs when, in UTC (in place of Celery beat).

Each ``CronJob`` names a registered task (its timeout and tries are the task's), when it
runs (``Crontab.parse("*/15 * * * *")`` or arq's fields, ``Crontab.at(hour=3, minute=0)``),
the task's arguments, and a grace window. To add one, register its task in
``jobs/tasks.py`` with at least 2 tries (a run killed with its worker runs again, which
takes a try) and add a ``CronJob`` to ``SCHEDULE`` below.

Every worker with ``ENABLE_CRON`` runs the schedule; none is special. Each cron job has
exactly one pending run, an ordinary job of the system tenant (``@system``) whose id names
its slot (``cron:<name>:<slot ms>``), so it gets the leases, hand-back, log line and wake-ups
of every job, and N workers run each slot once. When a run ends, the same script call schedules the
next one (``jobs.cron_store``): runs never overlap, and slots that came due while a run
was going coalesce into one run, due at once. A slot whose worker fleet was down runs once
when a worker returns within the job's grace window after the latest slot (the run records
how many slots it stands for); later than that it is recorded as ``missed``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.crontab import Crontab
from jobs.redis_keys import CRON_JOB_PREFIX
from jobs.registry import InvalidArguments, Registry, UnknownTask

__all__ = ["SCHEDULE", "CronJob", "RunId", "Schedule", "UnknownCronJob", "is_cron_run"]

DEFAULT_GRACE_S = 3600.0
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_MANUAL = "manual"


class UnknownCronJob(LookupError):
    """No cron job has this name."""


@dataclass(frozen=True)
class CronJob:
    """One entry of the schedule: ``task`` with ``args`` at the slots of ``when``.

    ``grace_s``: a slot missed while no worker was up still runs (once, for all the slots
    missed) when a worker comes back within this long after the latest of them.
    """

    name: str
    task: str
    when: Crontab
    args: Mapping[str, Any] = field(default_factory=dict)
    grace_s: float = DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"cron job name {self.name!r}: use [a-z0-9][a-z0-9_.-]*, at most 63 characters")
        if self.grace_s < 1:
            raise ValueError(f"cron job {self.name!r}: grace_s must be at least 1 s")

    @property
    def function(self) -> str:
        """The arq function name of its runs (the worker wraps the task in the slot's checks)."""
        return CRON_JOB_PREFIX + self.name


@dataclass(frozen=True)
class RunId:
    """What a cron run's job id says: ``cron:<name>:<slot ms>``, or ``cron:<name>:<ms>:manual`` for a run-now."""

    name: str
    at_ms: int
    manual: bool = False

    def __str__(self) -> str:
        suffix = f":{_MANUAL}" if self.manual else ""
        return f"{CRON_JOB_PREFIX}{self.name}:{self.at_ms}{suffix}"

    @classmethod
    def parse(cls, job_id: str) -> RunId:
        """``ValueError`` for an id that is not a cron run's."""
        parts = job_id.removeprefix(CRON_JOB_PREFIX).split(":")
        if not job_id.startswith(CRON_JOB_PREFIX) or len(parts) not in (2, 3) or not parts[1].isdigit():
            raise ValueError(f"not a cron run id: {job_id!r}")
        if len(parts) == 3 and parts[2] != _MANUAL:
            raise ValueError(f"not a cron run id: {job_id!r}")
        return cls(parts[0], int(parts[1]), manual=len(parts) == 3)


def is_cron_run(job_id: str) -> bool:
    return job_id.startswith(CRON_JOB_PREFIX)


class Schedule:
    """The cron jobs of a deployment, by name, in the order given."""

    def __init__(self, jobs: Iterable[CronJob] = ()) -> None:
        self._jobs: dict[str, CronJob] = {}
        for job in jobs:
            if job.name in self._jobs:
                raise ValueError(f"cron job {job.name!r} is in the schedule twice")
            self._jobs[job.name] = job

    def __iter__(self) -> Iterator[CronJob]:
        return iter(self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def __getitem__(self, name: str) -> CronJob:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownCronJob(name) from None

    def get(self, name: str) -> CronJob | None:
        return self._jobs.get(name)

    def check(self, registry: Registry) -> None:
        """``ValueError`` unless every job's task is in ``registry`` with at least 2 tries and takes its arguments."""
        for job in self:
            try:
                task = registry[job.task]
            except UnknownTask:
                raise ValueError(f"cron job {job.name!r}: no task {job.task!r} is registered") from None
            if task.max_tries < 2:
                raise ValueError(
                    f"cron job {job.name!r}: task {job.task!r} has max_tries={task.max_tries}; cron tasks need at "
                    "least 2, so that a run killed with its worker runs again"
                )
            try:
                task.load(job.args)
            except InvalidArguments as exc:
                raise ValueError(f"cron job {job.name!r}: arguments do not fit {job.task!r}: {exc.errors}") from None


SCHEDULE = Schedule(
    [
        # The canary: proves the cron path end to end (schedule -> queue -> worker -> history).
        # Its last success (GET /internal/cron) is the thing to alert on: stale means no cron.
        # A slot costs a fleet of 3 idle workers ~17 Redis commands sent (bench/cron.py): every 15
        # minutes adds ~0.006 commands/s per worker.
        CronJob("cron-canary", "diagnostics.ping", Crontab.parse("*/15 * * * *"), grace_s=900),
        # The operations guide's maintenance (jobs/maintenance.py): findings to the log and /metrics.
        # Hourly (slow log and persistence every 6 hours), at the top of the hour with the canary,
        # not every minute: each slot costs like the canary's and Upstash bills every command; the
        # whole schedule stays under 0.2 commands/s per idle worker (bench/cron.py). Prometheus reads
        # memory and evictions from INFO at every scrape anyway. Grace is the interval: a missed
        # check is not worth running later than its next slot.
        CronJob("maintenance.memory", "maintenance.memory", Crontab.parse("0 * * * *"), grace_s=3600),
        CronJob("maintenance.keyspace_rates", "maintenance.keyspace_rates", Crontab.parse("0 * * * *"), grace_s=3600),
        CronJob("maintenance.cleanup", "maintenance.cleanup", Crontab.parse("0 * * * *"), grace_s=3600),
        CronJob("maintenance.slowlog", "maintenance.slowlog", Crontab.parse("0 */6 * * *"), grace_s=6 * 3600),
        CronJob("maintenance.persistence", "maintenance.persistence", Crontab.parse("0 */6 * * *"), grace_s=6 * 3600),
    ]
)

"""Cron in one process: one pending run per job, missed slots, no overlap, history, and what workers without cron do.

The fleet-level behaviour (three worker processes, SIGKILL) is in ``test_cron_processes.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from jobs.cron import SCHEDULE, CronJob, RunId, Schedule
from jobs.cron_store import RUNS_KEPT, CronRun, CronStore
from jobs.crontab import Crontab
from jobs.redis_keys import (
    CRON_KEY,
    IN_PROGRESS_PREFIX,
    QUEUE_KEY,
    READY_PREFIX,
    TENANTS_KEY,
    WAKE_KEY,
    WAKE_TOKENS_MAX,
    WORKERS_KEY,
)
from jobs.registry import Registry, Task
from jobs.running import running_worker
from jobs.scripts import load_script
from jobs.tasks import TASKS
from service.backoff import Backoff
from service.settings import Settings
from tests.jobs.conftest import NoArgs
from tests.jobs.support import Client, auth, enqueue, jobs_settings, wait_for

EVERY_SECOND = Crontab.at(second=None)


def schedule_of(task: str = "diagnostics.ping", when: Crontab = EVERY_SECOND, **options: Any) -> Schedule:
    return Schedule([CronJob("tick", task, when, **options)])


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    """Wait for ``check()`` to return something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    while not (found := await check()):
        assert time.monotonic() < deadline, f"gave up after {timeout_s} s"
        await asyncio.sleep(0.05)
    return found


async def runs(store: CronStore, count: int, timeout_s: float = 10.0) -> list[CronRun]:
    """Wait until the job ``tick`` has ``count`` runs in its history; its runs, oldest first."""

    async def enough() -> list[CronRun]:
        history = (await store.status("tick"))[0].runs
        return list(reversed(history)) if len(history) >= count else []

    found: list[CronRun] = await eventually(enough, timeout_s)
    return found


async def test_workers_starting_together_create_one_pending_run_per_job(redis: Redis) -> None:
    store = CronStore(redis, schedule_of())
    created = await asyncio.gather(*(store.sync(full=True) for _ in range(5)))

    assert sorted(created, key=len) == [[], [], [], [], ["tick"]]
    [pending] = await redis.zrange(QUEUE_KEY, 0, -1, withscores=True)
    assert RunId.parse(pending[0].decode()) == RunId("tick", int(pending[1]))
    [status] = await store.status()
    assert status.current_run == pending[0].decode()


async def test_worker_starting_with_a_changed_schedule_moves_the_pending_run_and_forgets_dropped_jobs(
    redis: Redis,
) -> None:
    hourly = Crontab.parse("0 * * * *")
    with_gone = Schedule([CronJob("tick", "diagnostics.ping", hourly), CronJob("gone", "diagnostics.ping", hourly)])
    await CronStore(redis, with_gone).sync(full=True)
    every_minute = CronStore(redis, schedule_of(when=Crontab.parse("* * * * *")))

    assert await every_minute.sync(full=False) == []  # a heal leaves a job that has its run alone
    assert await every_minute.sync(full=True) == ["tick"]

    [(run_id, due)] = await redis.zrange(QUEUE_KEY, 0, -1, withscores=True)
    assert RunId.parse(run_id.decode()).name == "tick"
    assert due - timestamp_ms() <= 60_000
    fields: list[bytes] = await redis.hkeys(CRON_KEY)  # type: ignore[misc]
    assert not any(field.startswith(b"gone") for field in fields)


async def test_a_run_is_recorded_and_the_job_left_with_its_next_slot(redis: Redis, settings: Settings) -> None:
    schedule = schedule_of()
    store = CronStore(redis, schedule)
    async with running_worker(settings, schedule=schedule) as worker:
        [first, second] = (await runs(store, 2))[:2]
        [status] = await store.status()

    assert (first.outcome, first.slots, first.tries, first.manual, first.worker) == (
        "complete",
        1,
        1,
        False,
        worker.worker_id,
    )
    assert second.slot_ms == first.slot_ms + 1000
    assert status.last_success_ms is not None
    assert status.runs_by_outcome["complete"] >= 2
    assert await redis.exists(f"arq:result:{first.job_id}") == 0  # the history is the record; no result kept


async def test_history_keeps_the_last_20_runs(redis: Redis) -> None:
    store = CronStore(redis, schedule_of())
    for slot in range(25):
        run = CronRun(f"cron:tick:{slot * 1000}", slot * 1000, False, 0, 1, "complete", "w", 1, 1)
        await store.finish(run, next_run_ms=None)

    history = (await store.status("tick"))[0].runs
    assert len(history) == RUNS_KEPT == 20
    assert [run.slot_ms for run in history] == [slot * 1000 for slot in range(24, 4, -1)]


async def test_workers_back_within_grace_run_the_missed_slots_once(redis: Redis, settings: Settings) -> None:
    schedule = schedule_of(grace_s=30)
    store = CronStore(redis, schedule)
    async with running_worker(settings, schedule=schedule):
        [last_before] = await runs(store, 1)
    await asyncio.sleep(5.5)  # no worker is up for five slots

    async with running_worker(settings, schedule=schedule):
        *_, back, after = await runs(store, 3)

    assert back.slot_ms > last_before.slot_ms  # the pending slot, from before the stop
    assert back.slots >= 5  # one run for all the slots missed
    assert back.outcome == "complete"
    assert after.slot_ms == back.slot_ms + back.slots * 1000  # then on schedule again, one slot each
    assert after.slots == 1


async def test_slot_later_than_its_grace_is_recorded_missed_and_not_run(redis: Redis, settings: Settings) -> None:
    ten_seconds_ago = (int(time.time()) - 10) % 60
    schedule = schedule_of(when=Crontab.at(second=ten_seconds_ago), grace_s=2)  # every minute
    store = CronStore(redis, schedule)
    await store.sync(full=True, now_ms=timestamp_ms() - 5 * 60_000)  # the fleet went down five minutes ago

    async with running_worker(settings, schedule=schedule):
        [missed] = await runs(store, 1)
        [status] = await store.status()

    assert missed.outcome == "missed"
    assert missed.slots in (5, 6)  # every slot since the fleet went down
    assert status.runs_by_outcome["complete"] == 0  # the task never ran
    assert status.next_run_ms is not None
    assert 0 < status.next_run_ms - timestamp_ms() <= 60_000  # the next future slot


async def test_a_run_longer_than_its_interval_is_never_overlapped(redis: Redis, settings: Settings) -> None:
    schedule = schedule_of(task="diagnostics.sleep", args={"seconds": 2.2})
    store = CronStore(redis, schedule)
    async with running_worker(settings, schedule=schedule), running_worker(settings, schedule=schedule):
        first, second = await runs(store, 2, timeout_s=15)

    assert second.started_ms >= first.finished_ms  # two idle workers, yet no second run began before the first ended
    assert second.slot_ms == first.slot_ms + 1000  # the slot after the first run's started at once ...
    assert second.slots == 2  # ... and stands for the slots that came due while the first ran


async def test_a_killed_run_with_its_tries_spent_is_recorded_failed_and_the_schedule_goes_on(
    redis: Redis, settings: Settings
) -> None:
    async def twice(job: Any) -> None:
        raise AssertionError("arq refuses a run whose tries are spent before it starts")

    registry = Registry([*TASKS, Task("test.twice", twice, NoArgs(), timeout_s=5, max_tries=2, backoff=Backoff())])
    schedule = schedule_of(task="test.twice")
    store = CronStore(redis, schedule)
    await store.sync(full=True)
    [run_id] = [member.decode() for member in await redis.zrange(QUEUE_KEY, 0, -1)]
    await redis.set(f"arq:retry:{run_id}", 2)  # two tries started, both killed with their workers

    async with running_worker(settings, registry=registry, schedule=schedule):
        [failed, *_] = await runs(store, 1)

    assert (failed.job_id, failed.outcome, failed.tries) == (run_id, "failed", 3)
    assert failed.error is not None
    assert "max 2 retries exceeded" in failed.error["message"]
    assert (await store.status("tick"))[0].current_run is not None


async def test_an_idle_claim_while_a_cron_run_waits_reads_one_key(redis: Redis) -> None:
    await CronStore(redis, schedule_of(when=Crontab.parse("0 * * * *"))).sync(full=True)
    [(_, due)] = await redis.zrange(QUEUE_KEY, 0, -1, withscores=True)
    claim = load_script(redis, "claim", include=["wake"])
    await redis.script_load(claim.script)
    await redis.config_resetstat()

    reply = await claim(
        keys=[TENANTS_KEY, WAKE_KEY, WORKERS_KEY, QUEUE_KEY],
        args=[timestamp_ms(), 10, 10_000, IN_PROGRESS_PREFIX, 1000, WAKE_TOKENS_MAX, READY_PREFIX, "", "worker-1"],
    )

    assert reply == [int(due)]  # nothing to claim; wake when the cron run is due
    stats = await redis.info("commandstats")
    assert {name for name in stats if not name.startswith(("cmdstat_config", "cmdstat_info"))} == {
        "cmdstat_evalsha",
        "cmdstat_zrange",
    }
    assert stats["cmdstat_zrange"]["calls"] == 1  # what an idle claim costs with no cron at all


async def test_cron_runs_are_no_tenants_jobs(client: Client, api_key: str, redis: Redis) -> None:
    await CronStore(redis, SCHEDULE).sync(full=True)
    run_ids = [member.decode() for member in await redis.zrange(QUEUE_KEY, 0, -1)]

    assert len(run_ids) == len(SCHEDULE)
    listed = await client.get("/v1/jobs", headers=auth(api_key))
    assert (await listed.json())["jobs"] == []
    for run_id in run_ids:
        assert (await client.get(f"/v1/jobs/{run_id}", headers=auth(api_key))).status == 404
        assert (await client.delete(f"/v1/jobs/{run_id}", headers=auth(api_key))).status == 404
        assert await redis.zscore(QUEUE_KEY, run_id) is not None


async def test_a_worker_without_cron_runs_jobs_but_never_a_cron_run(client: Client, api_key: str, redis: Redis) -> None:
    schedule = schedule_of()
    await CronStore(redis, schedule).sync(full=True, now_ms=timestamp_ms() - 10_000)  # a run due 10 s ago
    [run_id] = [member.decode() for member in await redis.zrange(QUEUE_KEY, 0, -1)]

    async with running_worker(jobs_settings(ENABLE_CRON="false"), schedule=schedule) as worker:
        job_id = await enqueue(client, api_key, "diagnostics.ping")
        assert (await wait_for(client, api_key, job_id))["status"] == "complete"
        assert json.loads(await redis.get(f"jobs:worker:{worker.worker_id}") or "{}")["cron"] is False

    assert await redis.zscore(QUEUE_KEY, run_id) is not None
    assert await redis.exists(IN_PROGRESS_PREFIX + run_id) == 0
    assert (await CronStore(redis, schedule).status("tick"))[0].runs == ()


def test_built_in_schedule_fits_the_built_in_tasks() -> None:
    SCHEDULE.check(TASKS)
    assert [job.name for job in SCHEDULE] == [
        "cron-canary",
        "maintenance.memory",
        "maintenance.keyspace_rates",
        "maintenance.cleanup",
        "maintenance.slowlog",
        "maintenance.persistence",
    ]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (CronJob("a", "no.such.task", EVERY_SECOND), "no task 'no.such.task'"),
        (CronJob("a", "webhook.deliver", EVERY_SECOND), "arguments do not fit"),
        (CronJob("a", "test.once", EVERY_SECOND), "max_tries=1"),
    ],
)
def test_schedule_that_does_not_fit_the_tasks_is_refused(job: CronJob, message: str) -> None:
    async def once(job: Any) -> None:
        return None

    registry = Registry([*TASKS, Task("test.once", once, NoArgs(), timeout_s=1, max_tries=1, backoff=Backoff())])
    with pytest.raises(ValueError, match=message):
        Schedule([job]).check(registry)


def test_cron_job_names_and_run_ids_are_unambiguous() -> None:
    with pytest.raises(ValueError, match="name"):
        CronJob("has:colon", "diagnostics.ping", EVERY_SECOND)
    assert RunId.parse("cron:tick:1000") == RunId("tick", 1000)
    assert RunId.parse(str(RunId("tick", 5, manual=True))) == RunId("tick", 5, manual=True)
    with pytest.raises(ValueError, match="not a cron run id"):
        RunId.parse("cron:tick:soon")

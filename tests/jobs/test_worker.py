"""The worker on its own: cron slots wake it; burst mode; its options."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from jobs.cron import CronJob, Schedule
from jobs.cron_store import CronStore
from jobs.crontab import Crontab
from jobs.queue import JobQueue
from jobs.running import create_worker, running_worker
from service.settings import Settings


async def test_cron_slots_run_on_time_while_the_worker_waits_for_wake_ups(redis: Redis, settings: Settings) -> None:
    every_second = Schedule([CronJob("tick", "diagnostics.ping", Crontab.at(second=None))])
    store = CronStore(redis, every_second)
    async with running_worker(settings, schedule=every_second):
        deadline = time.monotonic() + 10
        while len(runs := (await store.status("tick"))[0].runs) < 3:
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.05)

    for run in runs:  # the idle fallback is 30 s: these came from waking for each slot
        assert 0 <= run.started_ms - run.slot_ms < 500


async def test_burst_worker_runs_due_and_deferred_jobs_then_returns(redis: Redis, settings: Settings) -> None:
    queue = JobQueue(redis, settings)
    now, _ = await queue.enqueue("acme", "diagnostics.ping", {})
    later, _ = await queue.enqueue("acme", "diagnostics.ping", {}, defer_s=0.5)

    async with running_worker(settings, burst=True) as worker:
        assert worker.main_task is not None
        await asyncio.wait_for(asyncio.shield(worker.main_task), timeout=5)

    for job_id in (now.id, later.id):
        view = await queue.get("acme", job_id)
        assert view is not None
        assert view.status == "complete"


async def test_a_worker_takes_only_the_arq_options_of_worker_settings(settings: Settings) -> None:
    # arq's own health check would write a key that every worker shares: it has no way in.
    with pytest.raises(TypeError, match="health_check_key"):
        create_worker(settings, health_check_key="jobs:worker:w1")


async def test_worker_runs_jobs_again_after_redis_drops_its_connections(redis: Redis, settings: Settings) -> None:
    queue = JobQueue(redis, settings)
    async with running_worker(settings):
        before, _ = await queue.enqueue("acme", "diagnostics.ping", {})
        await _until_complete(queue, before.id)
        for connection in await redis.client_list():
            if connection["name"].startswith("ottoai-worker"):
                await redis.client_kill_filter(_id=connection["id"])  # as a failover would

        after, _ = await queue.enqueue("acme", "diagnostics.ping", {})
        await _until_complete(queue, after.id)


async def _until_complete(queue: JobQueue, job_id: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (view := await queue.get("acme", job_id)) is None or view.status != "complete":
        assert time.monotonic() < deadline, f"job {job_id} is {view.status if view else 'gone'} after {timeout_s} s"
        await asyncio.sleep(0.02)

"""Fairness: one tenant's backlog cannot hold another tenant's job back by more than one job's run time."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from marshmallow import Schema
from redis.asyncio import Redis

from jobs.queue import JobQueue
from jobs.redis_keys import TENANTS_KEY, WAKE_KEY, WAKE_TOKENS_MAX
from jobs.registry import JobContext, Registry, Task
from jobs.running import running_worker
from jobs.tasks import TASKS
from service.backoff import Backoff
from service.settings import Settings
from tests.jobs.support import jobs_settings

BACKLOG = 1000


async def _until(check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.01)


def _seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


async def test_another_tenants_ping_starts_within_2_s_behind_a_backlog_of_1000_one_second_jobs(
    redis: Redis, settings: Settings
) -> None:
    queue = JobQueue(redis, settings)
    for _ in range(BACKLOG // 100):
        await asyncio.gather(*(queue.enqueue("acme", "diagnostics.sleep", {"seconds": 1}) for _ in range(100)))

    async with running_worker(settings) as worker:  # one worker, WORKER_CONCURRENCY=10
        assert worker.max_jobs == 10

        async def busy() -> bool:
            return len(worker.tasks) == worker.max_jobs

        await _until(busy)
        ping, _ = await queue.enqueue("globex", "diagnostics.ping", {})

        async def ping_done() -> bool:
            view = await queue.get("globex", ping.id)
            return view is not None and view.status == "complete"

        await _until(ping_done)
        backlog_left = await queue.unfinished("acme")

    view = await queue.get("globex", ping.id)
    assert view is not None
    assert view.started_at is not None
    waited_s = _seconds_between(view.enqueued_at, view.started_at)
    assert waited_s <= 2.0, f"globex's ping waited {waited_s:.2f} s behind acme's backlog"
    assert backlog_left >= BACKLOG - 30  # acme's backlog was still there: it was not simply drained first


class NoArgs(Schema):
    pass


async def test_claims_serve_tenants_in_turn_and_leave_no_bookkeeping_behind(redis: Redis) -> None:
    order: list[str] = []

    async def record(job: JobContext) -> None:
        order.append(job.tenant)

    registry = Registry([*TASKS, Task("test.record", record, NoArgs(), timeout_s=5.0, max_tries=1, backoff=Backoff())])
    settings = jobs_settings(WORKER_CONCURRENCY="1")
    queue = JobQueue(redis, settings, registry)
    for tenant, jobs in (("acme", 4), ("globex", 4), ("initech", 1)):
        for _ in range(jobs):
            await queue.enqueue(tenant, "test.record", {})

    async with running_worker(settings, registry=registry, burst=True) as worker:
        assert worker.main_task is not None
        await asyncio.wait_for(asyncio.shield(worker.main_task), timeout=10)

    # acme enqueued first, but each claim takes the tenant served least recently.
    assert order == ["acme", "globex", "initech", "acme", "globex", "acme", "globex", "acme", "globex"]
    assert await redis.zcard(TENANTS_KEY) == 0
    assert await redis.keys("jobs:ready:*") == []


async def test_the_wake_list_holds_at_most_its_cap_of_tokens_however_many_jobs_wait(
    redis: Redis, settings: Settings
) -> None:
    queue = JobQueue(redis, settings)
    lengths = []
    for _ in range(WAKE_TOKENS_MAX + 3):
        await queue.enqueue("acme", "diagnostics.ping", {})
        lengths.append(await redis.llen(WAKE_KEY))  # type: ignore[misc]  # redis-py types it for both clients
    # One token per job until the cap; no worker takes any, and the list stops growing there.
    assert lengths == [*range(1, WAKE_TOKENS_MAX + 1), WAKE_TOKENS_MAX, WAKE_TOKENS_MAX, WAKE_TOKENS_MAX]

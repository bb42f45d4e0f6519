"""The worker on its own: cron slots wake it; a retry it requeues; burst mode; its options."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import pytest
from redis.asyncio import Redis

from jobs.claims import Claim, Claimer
from jobs.cron import CronJob, Schedule
from jobs.cron_store import CronStore
from jobs.crontab import Crontab
from jobs.finishing import Finisher
from jobs.queue import JobQueue
from jobs.registry import JobContext, Registry, RetryLater, Task
from jobs.running import create_worker, running_worker
from service.backoff import Backoff
from service.settings import Settings
from tests.jobs.conftest import NoArgs
from tests.jobs.support import jobs_settings
from tests.waiting import until


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


async def test_a_retry_due_at_once_runs_though_its_wake_up_came_while_the_worker_still_held_its_lease(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lost wake-up that 492eea3 fixed, forced instead of hoped for: finish.lua pushes a wake-up
    # token as it requeues the retry, the token wakes this very worker, and its claim passes the job
    # by as its own (claim.lua skips the leases a worker holds) before finish.lua's reply comes back
    # and the lease is let go. Only the worker itself can then say the job is claimable: nothing
    # else wakes it before its idle poll, a minute away.
    async def fails_once(job: JobContext) -> str:
        if job.try_number == 1:
            # Due at once: a claim that passes it by has no later due time to come back at.
            raise RetryLater("not yet", after_s=0)
        return "done"

    registry = Registry([Task("test.fails_once", fails_once, NoArgs(), timeout_s=5.0, max_tries=2, backoff=Backoff())])
    settings = jobs_settings(ENABLE_CRON="false", JOB_IDLE_POLL_S="60")
    held_by_claims: list[list[str]] = []  # the jobs each claim passed by as this worker's, in order
    claim = Claimer.claim

    async def claim_noting_held(self: Claimer, free_slots: int, *, held: Iterable[str]) -> Claim:
        sent = list(held)  # as this claim sends them
        claimed = await claim(self, free_slots, held=sent)
        held_by_claims.append(sent)
        return claimed

    async def claimed_once() -> bool:
        return bool(held_by_claims)

    async def passed_by(job_id: str) -> bool:
        return any(job_id in held for held in held_by_claims)

    # finish.lua's reply, late: the Finisher awaits it in ``_run_script`` and lets the lease go after.
    run_script = Finisher._run_script
    finishes = 0

    async def first_reply_after_a_claim_passed_it_by(
        self: Finisher, job_id: str, tenant: str, args: list[Any]
    ) -> bool | None:
        nonlocal finishes
        finishes += 1
        recorded = await run_script(self, job_id, tenant, args)
        if finishes == 1:  # the requeue: its reply comes back once its token has made the worker claim
            await until(lambda: passed_by(job_id), "a claim passing the requeued job by", timeout_s=5)
        return recorded

    monkeypatch.setattr(Claimer, "claim", claim_noting_held)
    monkeypatch.setattr(Finisher, "_run_script", first_reply_after_a_claim_passed_it_by)
    queue = JobQueue(redis, settings, registry)
    async with running_worker(settings, registry=registry):
        # Idle first: the enqueue's token then wakes the one claim that takes the job, and no other
        # claim is under way when the requeue's token comes.
        await until(claimed_once, "the worker's first claim", timeout_s=5)
        retried, _ = await queue.enqueue("acme", "test.fails_once", {})
        await until(lambda: passed_by(retried.id), "a claim passing the job by while its lease was held", timeout_s=5)
        await _until_complete(queue, retried.id)


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

"""The dashboard's figures of the work are Redis's, after a known sequence of jobs run by a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import Schema, fields
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs import failures
from jobs.cron import SCHEDULE
from jobs.failures import FailedTry
from jobs.heartbeat import live_workers
from jobs.redis_keys import FAILURES_KEY, MINUTE_STATS_PREFIX
from jobs.registry import JobContext, Registry, RetryLater, Task
from jobs.running import running_worker
from jobs.tasks import TASKS
from jobs.worker import Worker
from service.app import create_app
from service.app_keys import API_KEYS
from service.backoff import Backoff
from service.settings import Settings
from tests.jobs.conftest import NoArgs
from tests.jobs.support import Client, auth, enqueue, jobs_settings, wait_for
from tests.waiting import until


async def _document(client: Client) -> dict[str, Any]:
    response = await client.get("/internal/dashboard.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


async def _counted_in_redis(redis: Redis) -> dict[str, int]:
    """Every per-minute count the workers wrote, summed by outcome, read straight from Redis."""
    totals: dict[str, int] = {}
    async for key in redis.scan_iter(match=MINUTE_STATS_PREFIX + "*"):
        for outcome, count in (await redis.hgetall(key)).items():  # type: ignore[misc]  # redis-py's union type
            totals[outcome.decode()] = totals.get(outcome.decode(), 0) + int(count)
    return totals


async def test_document_matches_redis_after_complete_failed_deferred_and_running_jobs(
    client: Client, api_key: str, worker: Worker, redis: Redis
) -> None:
    completed = [await enqueue(client, api_key, "diagnostics.ping") for _ in range(3)]
    failing = [await enqueue(client, api_key, "test.fail") for _ in range(2)]  # 3 tries each
    deferred = await enqueue(client, api_key, "diagnostics.ping", defer_seconds=600)
    running = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 30})
    for job_id in completed:
        assert (await wait_for(client, api_key, job_id))["status"] == "complete"
    for job_id in failing:
        assert (await wait_for(client, api_key, job_id))["status"] == "failed"
    await wait_for(client, api_key, running, statuses=("in_progress",))

    # Each cron job's pending run waits in the queue too (deferred to its next slot).
    expected = {"queued": 0, "deferred": 1 + len(SCHEDULE), "in_progress": 1}

    async def settled() -> dict[str, Any]:
        document = await _document(client)  # shared for 2 s: wait for one built after the sequence
        return document if document["queue"] == expected else {}

    document = await until(settled, "a document with the sequence's queue", timeout_s=10.0)
    assert (await wait_for(client, api_key, deferred, statuses=("deferred",)))["status"] == "deferred"

    throughput = document["throughput"]
    shown = {outcome: sum(throughput[outcome]) for outcome in ("complete", "failed", "retried", "aborted")}
    assert shown == {"complete": 3, "failed": 2, "retried": 4, "aborted": 0}
    assert {outcome: count for outcome, count in shown.items() if count} == await _counted_in_redis(redis)
    assert len(throughput["complete"]) == 60

    shown_failures = document["failures"]
    assert sorted(failed["job_id"] for failed in shown_failures) == sorted(failing)  # each job once
    for failed in shown_failures:
        assert failed["tenant"] == "acme"
        assert failed["task"] == "test.fail"
        assert (failed["tries"], failed["max_tries"], failed["will_retry"]) == (3, 3, False)
        assert failed["error"] == {"type": "ValueError", "message": "boom"}
    listed = await redis.lrange(FAILURES_KEY, 0, -1)  # type: ignore[misc]  # redis-py's union type
    assert len(listed) == 6  # every failed try: 2 jobs x 3
    assert shown_failures == [failed.to_json() for failed in failures.recent(listed)]

    # A worker's counters are its last heartbeat's (every WORKER_HEARTBEAT_S), as Redis holds it.
    [shown_worker] = document["workers"]
    [beat] = await live_workers(redis)
    assert shown_worker["id"] == beat["id"] == worker.worker_id
    counters = ("running", "complete", "failed", "retried", "beat_at")
    assert {name: shown_worker[name] for name in counters} == {name: beat[name] for name in counters}
    assert document["ready"]["components"]["workers"] is True
    assert document["unavailable"] == []
    assert (await client.delete(f"/v1/jobs/{running}", headers=auth(api_key))).status == 202  # a quick teardown


class NumberArgs(Schema):
    n = fields.Integer(required=True)


@pytest.fixture
def failing_tasks() -> Registry:
    """``test.fails`` fails both its tries at once; ``test.later`` asks for another try in a minute."""

    async def fails(job: JobContext, n: int) -> None:
        raise ValueError(f"boom {n}")

    async def later(job: JobContext) -> None:
        raise RetryLater("busy", after_s=60)

    return Registry(
        [
            *TASKS,
            Task(
                "test.fails", fails, NumberArgs(), timeout_s=5.0, max_tries=2, backoff=Backoff(base_s=0.05, cap_s=0.1)
            ),
            Task("test.later", later, NoArgs(), timeout_s=5.0, max_tries=3, backoff=Backoff()),
        ]
    )


async def test_retry_enqueues_a_failed_job_again_and_abort_stops_one_waiting_for_its_next_try(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings, failing_tasks: Registry
) -> None:
    client: Client = await aiohttp_client(create_app(settings, registry=failing_tasks))
    key = await client.app[API_KEYS].create("acme")
    async with running_worker(settings, registry=failing_tasks):
        failed_id = await enqueue(client, key, "test.fails", {"n": 7})
        assert (await wait_for(client, key, failed_id))["status"] == "failed"
        waiting_id = await enqueue(client, key, "test.later")

        async def listed_as_waiting() -> FailedTry | None:
            failed = await failures.latest(redis, waiting_id)
            return failed if failed is not None and failed.will_retry else None

        await until(listed_as_waiting, "the first failed try of test.later")

        too_soon = await client.post(f"/internal/dashboard/failures/{waiting_id}/retry")
        assert too_soon.status == 409
        retried = await client.post(f"/internal/dashboard/failures/{failed_id}/retry")
        assert retried.status == 202
        body = await retried.json()
        assert (body["tenant"], body["task"], body["retry_of"]) == ("acme", "test.fails", failed_id)
        assert (await wait_for(client, key, body["job_id"]))["error"] == {"type": "ValueError", "message": "boom 7"}

        aborted = await client.post(f"/internal/dashboard/failures/{waiting_id}/abort")
        assert aborted.status == 202
        assert (await aborted.json())["outcome"] == "aborted"
        assert (await wait_for(client, key, waiting_id))["status"] == "aborted"
        assert (await client.post(f"/internal/dashboard/failures/{waiting_id}/abort")).status == 409
        assert (await client.post("/internal/dashboard/failures/0123456789abcdef/retry")).status == 404


async def test_retry_goes_through_the_tenants_quota_of_unfinished_jobs(
    aiohttp_client: AiohttpClient, redis: Redis, failing_tasks: Registry
) -> None:
    settings = jobs_settings(JOB_UNFINISHED_MAX="1")
    client: Client = await aiohttp_client(create_app(settings, registry=failing_tasks))
    key = await client.app[API_KEYS].create("acme")
    async with running_worker(settings, registry=failing_tasks):
        failed_id = await enqueue(client, key, "test.fails", {"n": 1})
        assert (await wait_for(client, key, failed_id))["status"] == "failed"
        await enqueue(client, key, "diagnostics.ping", defer_seconds=600)  # the one unfinished job allowed
        refused = await client.post(f"/internal/dashboard/failures/{failed_id}/retry")
        assert refused.status == 429
        assert (await refused.json())["type"].endswith("/too-many-unfinished-jobs")

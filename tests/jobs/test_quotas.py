"""Quotas that protect the shared Redis from one tenant: argument and result sizes, unfinished jobs."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from jobs.queue import JobQueue
from jobs.redis_keys import JOB_PREFIX, RESULT_PREFIX, TENANTS_KEY, ready_key
from jobs.registry import Registry
from jobs.running import running_worker
from service.app_keys import API_KEYS, JOB_QUEUE
from service.settings import Settings
from tests.jobs.support import Client, auth, enqueue, jobs_settings, wait_for

ARGS_MAX_BYTES = 2048
RESULT_MAX_BYTES = 1024
UNFINISHED_MAX = 3


@pytest.fixture
def settings() -> Settings:
    return jobs_settings(
        JOB_ARGS_MAX_BYTES=str(ARGS_MAX_BYTES),
        JOB_RESULT_MAX_BYTES=str(RESULT_MAX_BYTES),
        JOB_UNFINISHED_MAX=str(UNFINISHED_MAX),
    )


@pytest.fixture
async def key(client: Client) -> str:
    return await client.app[API_KEYS].create("acme")


async def test_arguments_over_the_size_limit_are_a_413_and_store_nothing(
    client: Client, key: str, redis: Redis
) -> None:
    response = await client.post(
        "/v1/jobs", json={"task": "test.echo", "args": {"data": "x" * ARGS_MAX_BYTES}}, headers=auth(key)
    )

    assert response.status == 413
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert body["type"].endswith("/arguments-too-large")
    assert body["limit"] == ARGS_MAX_BYTES
    assert await redis.keys("arq:*") == []
    # Just under the limit is fine.
    await enqueue(client, key, "test.echo", {"data": "x" * (ARGS_MAX_BYTES - 20)})


async def test_a_result_over_the_size_limit_fails_the_job_and_is_stored_small(
    client: Client, key: str, redis: Redis, settings: Settings, test_tasks: Registry
) -> None:
    job_id = await enqueue(client, key, "test.echo", {"data": "y" * (RESULT_MAX_BYTES - 10)})
    big_id = await enqueue(client, key, "test.echo", {"data": "z" * (RESULT_MAX_BYTES + 10)})
    async with running_worker(settings, registry=test_tasks, burst=True):
        small, big = await wait_for(client, key, job_id), await wait_for(client, key, big_id)

    assert small["status"] == "complete"
    assert big["status"] == "failed"
    assert big["error"]["type"] == "ResultTooLarge"
    assert "JOB_RESULT_MAX_BYTES" in big["error"]["message"]
    assert len(await redis.get(RESULT_PREFIX + big_id) or b"") < 600


async def test_a_tenant_at_its_cap_of_unfinished_jobs_gets_a_429_of_its_own_type(
    client: Client, key: str, redis: Redis
) -> None:
    for _ in range(UNFINISHED_MAX):
        await enqueue(client, key, "diagnostics.ping", defer_seconds=60)
    keys_before = sorted(await redis.keys("*"))

    response = await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=auth(key))

    assert response.status == 429
    assert response.content_type == "application/problem+json"
    body = await response.json()
    assert body["type"].endswith("/too-many-unfinished-jobs")
    assert body["limit"] == UNFINISHED_MAX
    assert int(response.headers["Retry-After"]) >= 1
    assert sorted(await redis.keys("*")) == keys_before
    # The cap is the tenant's own: another tenant is not held back by it.
    other = await client.app[API_KEYS].create("globex")
    await enqueue(client, other, "diagnostics.ping")


async def test_an_idempotent_replay_at_the_cap_returns_the_job(client: Client, key: str) -> None:
    first = await client.post(
        "/v1/jobs",
        json={"task": "diagnostics.ping", "defer_seconds": 60},
        headers={**auth(key), "Idempotency-Key": "k"},
    )
    for _ in range(UNFINISHED_MAX - 1):
        await enqueue(client, key, "diagnostics.ping", defer_seconds=60)
    replay = await client.post(
        "/v1/jobs",
        json={"task": "diagnostics.ping", "defer_seconds": 60},
        headers={**auth(key), "Idempotency-Key": "k"},
    )
    assert replay.status == 202
    assert (await replay.json())["id"] == (await first.json())["id"]


async def test_unfinished_count_is_exact_after_completion_abort_and_expiry(
    client: Client, key: str, redis: Redis, settings: Settings, test_tasks: Registry
) -> None:
    queue: JobQueue = client.app[JOB_QUEUE]
    done = await enqueue(client, key, "diagnostics.ping")
    aborted = await enqueue(client, key, "diagnostics.ping", defer_seconds=60)
    expired = await enqueue(client, key, "diagnostics.ping")
    assert await queue.unfinished("acme") == 3

    assert (await client.delete(f"/v1/jobs/{aborted}", headers=auth(key))).status == 202
    assert await queue.unfinished("acme") == 2
    await redis.delete(JOB_PREFIX + expired)  # what arq's 24 h expiry of a job nobody started does
    async with running_worker(settings, registry=test_tasks, burst=True):
        assert (await wait_for(client, key, done))["status"] == "complete"
        assert (await wait_for(client, key, expired))["status"] == "failed"

    assert await queue.unfinished("acme") == 0
    assert not await redis.exists(ready_key("acme"))
    assert await redis.zscore(TENANTS_KEY, "acme") is None
    # With its count back at 0 the tenant can fill its cap again.
    for _ in range(UNFINISHED_MAX):
        await enqueue(client, key, "diagnostics.ping", defer_seconds=60)

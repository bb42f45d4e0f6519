"""A Redis out of memory (``maxmemory`` reached, ``noeviction``): writes get 503, the limiter still refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from service.app import create_app
from service.app_keys import API_KEYS
from tests.conftest import make_settings
from tests.servers import RedisServer, new_redis_server

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def full_redis() -> AsyncIterator[RedisServer]:
    server = new_redis_server("--maxmemory-policy", "noeviction")
    try:
        yield server
    finally:
        server.stop()


async def _fill(url: str) -> None:
    """Put Redis over its maxmemory: 4 MB of data, then a limit 1 MB below what it uses.

    The data goes in small values: a big one would leave a big query buffer behind, which
    Redis frees a moment later, taking memory back under the limit.
    """
    redis = Redis.from_url(url)
    try:
        for i in range(80):
            await redis.set(f"ballast:{i}", "x" * 50_000)
        used = (await redis.info("memory"))["used_memory"]
        await redis.config_set("maxmemory", used - 1_000_000)
        with pytest.raises(OutOfMemoryError):
            await redis.set("probe", "x")
    finally:
        await redis.aclose()


@pytest.fixture
async def full(aiohttp_client: AiohttpClient, full_redis: RedisServer) -> tuple[Client, str, str]:
    """A client of an app on a Redis that is full, a key of tenant acme, and a job of acme's enqueued before."""
    client: Client = await aiohttp_client(create_app(make_settings(REDIS_URL=full_redis.url)))
    key = await client.app[API_KEYS].create("acme")
    response = await client.post(
        "/v1/jobs",
        json={"task": "diagnostics.ping", "defer_seconds": 600},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status == 202
    job_id = (await response.json())["id"]
    await _fill(full_redis.url)
    return client, key, job_id


async def test_enqueue_and_abort_get_503_with_retry_after_while_reads_still_work(full: tuple[Client, str, str]) -> None:
    client, key, job_id = full
    headers = {"Authorization": f"Bearer {key}"}

    enqueued = await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=headers)
    aborted = await client.delete(f"/v1/jobs/{job_id}", headers=headers)
    read = await client.get(f"/v1/jobs/{job_id}", headers=headers)

    for response in (enqueued, aborted):
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert (await response.json())["type"].endswith("/storage-full")
        assert int(response.headers["Retry-After"]) >= 1
    assert read.status == 200
    assert (await read.json())["status"] == "deferred"


async def test_the_limiter_still_refuses_at_its_limit(full: tuple[Client, str, str]) -> None:
    client, key, _ = full
    headers = {"Authorization": f"Bearer {key}"}
    # The default plan's enqueue bucket holds 5; one was spent before Redis filled up.
    statuses = [(await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=headers)).status]
    for _ in range(5):
        statuses.append((await client.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=headers)).status)
    assert statuses == [503, 503, 503, 503, 429, 429]


async def test_anonymous_callers_still_get_429_at_their_limit(full: tuple[Client, str, str]) -> None:
    client, _, _ = full
    statuses = [(await client.get("/v1/jobs")).status for _ in range(14)]
    # The anonymous bucket holds 10: then the limiter refuses, rather than failing open into 401s.
    assert statuses == [401] * 10 + [429] * 4

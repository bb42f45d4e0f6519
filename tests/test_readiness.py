"""``GET /ready``: the truth about each dependency, within about 1.5 s even when one hangs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs.running import running_worker
from service.api import readiness as readiness_api
from service.api.readiness import check_redis
from service.app import create_app
from tests.conftest import make_settings
from tests.servers import database_url


async def test_ready_with_redis_and_database_up(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    client = await aiohttp_client(create_app(make_settings(DATABASE_URL=database_url(), ENABLE_WORKER="false")))
    response = await client.get("/ready")
    body = await response.json()
    assert response.status == 200, body
    assert body["ready"] is True
    assert body["components"]["redis"] is True
    assert body["components"]["database"] is True
    assert body["details"]["redis"]["latency_ms"] >= 0
    assert body["service"] == "ottoai-backend"
    assert abs(body["timestamp"] - time.time()) < 60
    assert body["duration_ms"] >= 0


async def test_components_appear_only_when_their_feature_is_on(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    client = await aiohttp_client(create_app(make_settings(ENABLE_WORKER="false")))
    body = await (await client.get("/ready")).json()
    assert set(body["components"]) == {"redis"}


async def test_workers_component_follows_live_heartbeats(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    settings = make_settings(RATE_LIMIT_ENABLED="false")
    client = await aiohttp_client(create_app(settings))
    without = await client.get("/ready")
    assert without.status == 503
    assert (await without.json())["details"]["workers"] == {"alive": 0}

    async with running_worker(settings):
        for _ in range(100):  # the worker writes its first beat as its main loop starts
            response = await client.get("/ready")
            if response.status == 200:
                break
            await asyncio.sleep(0.05)
        body = await response.json()
        assert response.status == 200, body
        assert body["components"]["workers"] is True
        assert body["details"]["workers"]["alive"] == 1
        assert body["details"]["workers"]["last_beat_age_s"] < 5

        heartbeat = await client.get("/internal/worker/heartbeat")
        assert heartbeat.status == 200
        (worker,) = (await heartbeat.json())["workers"]
        assert {"id", "host", "beat_age_s", "running", "complete", "failed", "retried"} <= set(worker)

    # A cleanly stopped worker removes its own heartbeat; /ready sees it once its shared answer is renewed.
    for _ in range(100):
        after = await client.get("/ready")
        if after.status == 503:
            break
        await asyncio.sleep(0.05)
    assert after.status == 503
    assert (await after.json())["details"]["workers"] == {"alive": 0}


async def test_hung_database_gives_503_within_one_and_a_half_seconds(
    aiohttp_client: AiohttpClient, redis: Redis, silent_port: int
) -> None:
    settings = make_settings(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{silent_port}/test", ENABLE_WORKER="false")
    client = await aiohttp_client(create_app(settings))
    started = time.monotonic()
    response = await client.get("/ready")
    elapsed = time.monotonic() - started
    body = await response.json()
    assert response.status == 503
    assert body["ready"] is False
    assert body["components"]["redis"] is True
    assert body["components"]["database"] is False
    assert elapsed < 1.5


async def test_hung_redis_gives_503_within_one_and_a_half_seconds(
    aiohttp_client: AiohttpClient, silent_port: int
) -> None:
    settings = make_settings(REDIS_URL=f"redis://127.0.0.1:{silent_port}/0")
    client = await aiohttp_client(create_app(settings))
    started = time.monotonic()
    response = await client.get("/ready")
    assert time.monotonic() - started < 1.5
    assert response.status == 503
    body = await response.json()
    assert body["components"]["redis"] is False
    assert body["components"]["workers"] is False


async def test_unknown_database_is_not_ready(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    missing = database_url().rpartition("/")[0] + "/no_such_database_here"
    settings = make_settings(DATABASE_URL=missing, ENABLE_WORKER="false")  # no worker: only the database can fail
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/ready")
    assert response.status == 503
    body = await response.json()
    assert body["components"] == {"redis": True, "database": False}
    assert (await response.json())["details"]["database"]["error"]


async def test_a_flood_of_ready_costs_one_run_of_the_checks_a_second(
    aiohttp_client: AiohttpClient, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = 0

    async def counted_check_redis(app: web.Application) -> tuple[bool, dict[str, Any]]:
        nonlocal runs
        runs += 1
        return await check_redis(app)

    monkeypatch.setattr(readiness_api, "check_redis", counted_check_redis)
    client = await aiohttp_client(create_app(make_settings(ENABLE_WORKER="false")))

    flood = await asyncio.gather(*(client.get("/ready") for _ in range(50)))
    bodies = [await response.json() for response in flood]

    assert [response.status for response in flood] == [200] * 50
    assert all(body == bodies[0] for body in bodies)  # one run's answer, duration and timestamp included
    assert runs == 1
    for _ in range(100):  # the answer is renewed about a second later
        renewed = await (await client.get("/ready")).json()
        if renewed != bodies[0]:
            break
        await asyncio.sleep(0.05)
    assert renewed != bodies[0]
    assert runs == 2

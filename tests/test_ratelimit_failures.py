"""A sick Redis: the limiter answers by its deadline, open or closed as each policy says.

Never the shared server: a listener that accepts and never answers (a hang), and a
private ``redis-server`` that is stopped mid-test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from service.app import create_app
from service.app_keys import API_KEYS
from tests.conftest import make_settings
from tests.servers import new_redis_server

DEADLINE_MS = 50
MARGIN_S = 0.5  # far below the 5 s socket timeout a hung call would otherwise wait

OPEN = """
[plans.default]
"*" = [{ name = "burst", capacity = 20, per_second = 10 }]
[anonymous]
"*" = [{ name = "address", capacity = 10, per_second = 1 }]
"""
CLOSED = OPEN.replace("per_second = 1 }", 'per_second = 1, on_redis_error = "closed" }').replace(
    "per_second = 10 }", 'per_second = 10, on_redis_error = "closed" }'
)


async def client_for(
    aiohttp_client: AiohttpClient, tmp_path: Path, redis_url: str, policies: str
) -> TestClient[web.Request, web.Application]:
    path = tmp_path / "policies.toml"
    path.write_text(policies)
    settings = make_settings(REDIS_URL=redis_url, RATE_LIMITS_FILE=str(path), RATE_LIMIT_DEADLINE_MS=str(DEADLINE_MS))
    return await aiohttp_client(create_app(settings))


async def timed_get(client: TestClient[web.Request, web.Application], path: str, **kwargs: object) -> tuple[int, float]:
    started = time.monotonic()
    response = await client.get(path, **kwargs)  # type: ignore[arg-type]
    await response.read()
    return response.status, time.monotonic() - started


async def test_hung_redis_fails_open_within_the_deadline(
    aiohttp_client: AiohttpClient, tmp_path: Path, silent_port: int
) -> None:
    client = await client_for(aiohttp_client, tmp_path, f"redis://127.0.0.1:{silent_port}/0", OPEN)

    answers = await asyncio.gather(*(timed_get(client, "/v1/rate-limit") for _ in range(5)))

    # Without a key no Redis look-up is needed: the limiter lets it through to its 401.
    assert [status for status, _ in answers] == [401] * 5
    assert max(elapsed for _, elapsed in answers) < DEADLINE_MS / 1000 + MARGIN_S
    metrics = await (await client.get("/metrics")).text()
    assert 'ratelimit_decisions_total{outcome="fail_open",plan="anonymous"} 5.0' in metrics
    assert 'ratelimit_redis_errors_total{reason="timeout"}' in metrics


async def test_hung_redis_fails_closed_with_503_problem(
    aiohttp_client: AiohttpClient, tmp_path: Path, silent_port: int
) -> None:
    client = await client_for(aiohttp_client, tmp_path, f"redis://127.0.0.1:{silent_port}/0", CLOSED)

    started = time.monotonic()
    response = await client.get("/v1/rate-limit")
    elapsed = time.monotonic() - started

    assert response.status == 503
    assert response.content_type == "application/problem+json"
    assert (await response.json())["status"] == 503
    assert response.headers["Retry-After"] == "1"
    assert "RateLimit-Policy" in response.headers
    assert "RateLimit" not in response.headers  # the state is unknown; no guess is sent
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_S
    metrics = await (await client.get("/metrics")).text()
    assert 'ratelimit_decisions_total{outcome="fail_closed",plan="anonymous"} 1.0' in metrics


@pytest.mark.parametrize(("policies", "expected"), [(OPEN, 404), (CLOSED, 503)])
async def test_stopped_redis_answers_at_once_open_or_closed(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    policies: str,
    expected: int,
) -> None:
    server = new_redis_server()
    client = await client_for(aiohttp_client, tmp_path, server.url, policies)
    auth = {"X-API-Key": await client.app[API_KEYS].create("acme")}
    assert (await client.get("/v1/nothing", headers=auth)).status == 404  # limiter up, key cached

    server.kill()
    answers = [await timed_get(client, "/v1/nothing", headers=auth) for _ in range(3)]

    assert [status for status, _ in answers] == [expected] * 3
    assert max(elapsed for _, elapsed in answers) < DEADLINE_MS / 1000 + MARGIN_S

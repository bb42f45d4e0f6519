"""Shared fixtures: the suite's own Redis (see ``tests/servers.py``), settings, app and client.

Every test starts on an empty database.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service import logging as service_logging
from service.app import create_app
from service.app_keys import API_KEYS
from service.http_server import ServiceRunner
from service.logging import configure_logging
from service.settings import Settings
from tests.servers import (
    DATABASE_ENV,
    REDIS_ENV,
    RedisServer,
    SilentServer,
    missing_redis_server,
    new_redis_server,
    redis_url,
    stop_all,
)

if TYPE_CHECKING:  # tests.processes imports this module
    from tests.processes import Proc

ROOT = Path(__file__).resolve().parent.parent


async def get_json(client: TestClient[web.Request, web.Application], path: str) -> dict[str, Any]:
    """The JSON object that ``GET path`` answers with 200."""
    response = await client.get(path)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def make_settings(**env: str) -> Settings:
    """Settings for a test: the test Redis, console logs, plus ``env`` overrides."""
    base: dict[str, str] = {"REDIS_URL": redis_url(), "LOG_FORMAT": "console"}
    base.update(env)
    return Settings.from_env(base)


def subprocess_env(**overrides: str) -> Mapping[str, str]:
    """The environment for a child ``python -m ...``: this one, minus service settings.

    The metrics port is off unless a test names one: children of parallel tests would all want 9091.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "UPSTASH_REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["METRICS_PORT"] = "0"
    env.update(overrides)
    return env


PYTHON = sys.executable


class ServiceTestServer(TestServer):
    """aiohttp's test server, serving the app the way ``python -m service serve`` does (``ServiceRunner``)."""

    async def _make_runner(self, **kwargs: Any) -> ServiceRunner:
        return ServiceRunner(self.app, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    problem = missing_redis_server()
    if problem:
        pytest.exit(problem, returncode=2)
    named = [name for name in (REDIS_ENV, DATABASE_ENV) if os.environ.get(name)]
    if named and getattr(config.option, "numprocesses", None):
        pytest.exit(
            f"{' and '.join(named)} {'name servers' if len(named) > 1 else 'names a server'} that the xdist"
            " workers (-n) would share and empty under each other: run pytest without -n",
            returncode=2,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_all()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url())
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the test, in the production format (one JSON object a line)."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_access_lines = service_logging._access_lines
    configure_logging("json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        service_logging._access_lines = saved_access_lines


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """The child processes a test starts (``tests.processes.Proc``): any left running are killed after it."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own (its keys, heartbeats and INFO counts are the test's alone), stopped after it."""
    server = new_redis_server()
    yield server
    server.stop()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> TestClient[web.Request, web.Application]:
    served: TestClient[web.Request, None] = await aiohttp_client(ServiceTestServer(create_app(settings)))
    return cast("TestClient[web.Request, web.Application]", served)  # pytest-aiohttp types a server's app as None


@pytest.fixture
async def api_key(client: TestClient[web.Request, web.Application]) -> str:
    """A valid key for tenant ``acme`` on the default plan."""
    return await client.app[API_KEYS].create("acme")


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never answers a byte (a hung Redis or database)."""
    server = await SilentServer().start()
    try:
        yield server.port
    finally:
        await server.close()

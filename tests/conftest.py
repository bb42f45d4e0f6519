"""Shared fixtures: a real Redis (``REDIS_URL``, default db 15), settings, app and client.

Every test starts on an empty database. Tests that must run concurrently with another
checkout can point ``REDIS_URL`` at another db number.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service.app import create_app
from service.app_keys import API_KEYS
from service.settings import Settings

TEST_REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


def make_settings(**env: str) -> Settings:
    """Settings for a test: the test Redis, console logs, plus ``env`` overrides."""
    base: dict[str, str] = {"REDIS_URL": TEST_REDIS_URL, "LOG_FORMAT": "console"}
    base.update(env)
    return Settings.from_env(base)


def subprocess_env(**overrides: str) -> Mapping[str, str]:
    """The environment for a child ``python -m ...``: this one, minus service settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "UPSTASH_REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def api_key(client: TestClient[web.Request, web.Application]) -> str:
    """A valid key for tenant ``acme`` on the default plan."""
    return await client.app[API_KEYS].create("acme")

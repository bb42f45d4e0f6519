"""Fixtures for the jobs tests: real workers on the test Redis, tasks only tests need."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from marshmallow import Schema, fields
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs.registry import JobContext, Registry, RetryLater, Task
from jobs.running import running_worker
from jobs.tasks import TASKS
from jobs.worker import Worker
from service.app import create_app
from service.app_keys import API_KEYS
from service.backoff import Backoff
from service.settings import Settings
from tests.jobs.support import Attempts, Client, jobs_settings


class NoArgs(Schema):
    pass


class EchoArgs(Schema):
    data = fields.Raw(required=True)


@pytest.fixture
def settings() -> Settings:
    return jobs_settings()


@pytest.fixture
def attempts() -> Attempts:
    return Attempts()


@pytest.fixture
def test_tasks(attempts: Attempts) -> Registry:
    """The built-in tasks plus ``test.fail`` (always raises, 3 tries, short backoff), ``test.flaky``
    (asks to be retried after 0.3 s, then succeeds), ``test.slow`` (runs past its 0.3 s timeout) and
    ``test.echo`` (returns its ``data``)."""

    async def fail(job: JobContext) -> None:
        attempts.times.append(time.monotonic())
        raise ValueError("boom")

    async def flaky(job: JobContext) -> dict[str, bool]:
        attempts.times.append(time.monotonic())
        if job.try_number == 1:
            raise RetryLater("not yet", after_s=0.3)
        return {"ok": True}

    async def slow(job: JobContext) -> None:
        attempts.times.append(time.monotonic())
        await asyncio.sleep(5)

    async def echo(job: JobContext, data: Any) -> Any:
        return data

    return Registry(
        [
            *TASKS,
            Task("test.echo", echo, EchoArgs(), timeout_s=5.0, max_tries=1, backoff=Backoff()),
            Task("test.fail", fail, NoArgs(), timeout_s=5.0, max_tries=3, backoff=Backoff(base_s=0.2, cap_s=0.4)),
            Task("test.flaky", flaky, NoArgs(), timeout_s=5.0, max_tries=2, backoff=Backoff()),
            Task("test.slow", slow, NoArgs(), timeout_s=0.3, max_tries=1, backoff=Backoff()),
        ]
    )


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, redis: Redis, settings: Settings, test_tasks: Registry) -> Client:
    """The app, accepting the test tasks too."""
    return await aiohttp_client(create_app(settings, registry=test_tasks))


@pytest.fixture
async def worker(redis: Redis, settings: Settings, test_tasks: Registry) -> AsyncIterator[Worker]:
    """A worker running the test tasks too in the test's event loop, stopped gracefully afterwards."""
    async with running_worker(settings, registry=test_tasks) as running:
        yield running


@pytest.fixture
async def other_key(client: Client) -> str:
    """A key of another tenant, ``globex``."""
    return await client.app[API_KEYS].create("globex")

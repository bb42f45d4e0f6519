"""Helpers of the jobs tests: talk to the jobs API the way a client does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from service.settings import Settings
from tests.conftest import make_settings

Client = TestClient[web.Request, web.Application]
TERMINAL = ("complete", "failed", "aborted")


def jobs_settings(**env: str) -> Settings:
    """Settings of the jobs tests: they poll job status fast, so the limiter (tested on its own) is off."""
    return make_settings(RATE_LIMIT_ENABLED="false", **env)


class Attempts:
    """When each try of the ``test.*`` tasks started (monotonic seconds)."""

    def __init__(self) -> None:
        self.times: list[float] = []


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def enqueue(client: Client, key: str, task: str, args: dict[str, Any] | None = None, **extra: Any) -> str:
    response = await client.post("/v1/jobs", json={"task": task, "args": args or {}, **extra}, headers=auth(key))
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def job(client: Client, key: str, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/jobs/{job_id}", headers=auth(key))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def wait_for(
    client: Client, key: str, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Poll the API until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = await job(client, key, job_id)
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {body['status']} after {timeout_s} s: {body}")
        await asyncio.sleep(0.02)

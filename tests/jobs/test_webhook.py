"""``webhook.deliver`` against a local receiver: signature, retries, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer
from redis.asyncio import Redis

from jobs.worker import running_worker
from service.app import create_app
from service.app_keys import API_KEYS
from service.settings import Settings
from tests.jobs.support import Client, auth, enqueue, jobs_settings, wait_for

SECRET = "whsec-test-0123456789"


@dataclass
class Receiver:
    """A webhook receiver that answers with the statuses it is given, then 200."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return web.Response(status=status, headers=headers)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def server(aiohttp_server: AiohttpServer, receiver: Receiver) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    return await aiohttp_server(app, host="127.0.0.1")


@pytest.fixture
def webhook_settings(server: TestServer) -> Settings:
    return jobs_settings(WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{server.port}", WEBHOOK_SECRET=SECRET)


@pytest.fixture
async def hook_client(aiohttp_client: AiohttpClient, redis: Redis, webhook_settings: Settings) -> AsyncIterator[Client]:
    client: Client = await aiohttp_client(create_app(webhook_settings))
    async with running_worker(webhook_settings):
        yield client


@pytest.fixture
async def key(hook_client: Client) -> str:
    return await hook_client.app[API_KEYS].create("acme")


def verify(secret: str, header: str, body: bytes) -> int:
    """What a receiver does: check ``t=...,v1=...`` and return the timestamp."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    return int(parts["t"])


async def test_webhook_is_delivered_signed_with_a_timestamp(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver
) -> None:
    url = f"http://127.0.0.1:{server.port}/hook"
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": url, "payload": {"order": 42}})
    body = await wait_for(hook_client, key, job_id)

    assert body["status"] == "complete"
    assert body["result"] == {"status": 200}
    [(headers, raw)] = receiver.received
    assert json.loads(raw) == {"order": 42}
    assert headers["Content-Type"] == "application/json"
    assert headers["Webhook-Id"] == job_id
    assert abs(verify(SECRET, headers["Webhook-Signature"], raw) - time.time()) < 10


async def test_webhook_answered_503_is_retried_after_retry_after(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver
) -> None:
    receiver.answers = [(503, {"Retry-After": "1"})]
    url = f"http://127.0.0.1:{server.port}/hook"
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": url, "payload": {}})
    body = await wait_for(hook_client, key, job_id)

    assert body["status"] == "complete"
    assert body["tries"] == 2
    assert len(receiver.received) == 2


async def test_webhook_answered_400_fails_without_retry(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver
) -> None:
    receiver.answers = [(400, {})]
    url = f"http://127.0.0.1:{server.port}/hook"
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": url, "payload": {}})
    body = await wait_for(hook_client, key, job_id)

    assert body["status"] == "failed"
    assert body["tries"] == 1
    assert body["error"]["type"] == "PermanentError"
    assert "400" in body["error"]["message"]
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        lambda port: f"http://127.0.0.1:{port + 1}/hook",  # a port that is not listed
        lambda port: "http://example.com/hook",  # a host that is not listed
        lambda port: f"ftp://127.0.0.1:{port}/hook",  # not http(s)
    ],
    ids=["unlisted-port", "unlisted-host", "not-http"],
)
async def test_webhook_to_a_host_not_allowed_is_refused_at_enqueue(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver, url: Callable[[int], str]
) -> None:
    response = await hook_client.post(
        "/v1/jobs",
        json={"task": "webhook.deliver", "args": {"url": url(server.port or 0), "payload": {}}},
        headers=auth(key),
    )
    assert response.status == 422
    assert "url" in (await response.json())["errors"]["args"]
    assert receiver.received == []


async def test_listed_name_that_resolves_to_loopback_is_refused(
    aiohttp_client: AiohttpClient, redis: Redis, server: TestServer, receiver: Receiver
) -> None:
    settings = jobs_settings(WEBHOOK_ALLOWED_HOSTS=f"localhost:{server.port}", WEBHOOK_SECRET=SECRET)
    client: Client = await aiohttp_client(create_app(settings))
    key = await client.app[API_KEYS].create("acme")
    response = await client.post(
        "/v1/jobs",
        json={"task": "webhook.deliver", "args": {"url": f"http://localhost:{server.port}/hook", "payload": {}}},
        headers=auth(key),
    )
    assert response.status == 422
    assert "not a public address" in json.dumps(await response.json())


async def test_worker_checks_the_host_again_at_delivery(
    aiohttp_client: AiohttpClient, redis: Redis, webhook_settings: Settings, server: TestServer, receiver: Receiver
) -> None:
    client: Client = await aiohttp_client(create_app(webhook_settings))
    key = await client.app[API_KEYS].create("acme")
    url = f"http://127.0.0.1:{server.port}/hook"
    job_id = await enqueue(client, key, "webhook.deliver", {"url": url, "payload": {}})

    # The worker's deployment no longer allows the host.
    stricter = jobs_settings(WEBHOOK_ALLOWED_HOSTS="hooks.example.com", WEBHOOK_SECRET=SECRET)
    async with running_worker(stricter):
        body = await wait_for(client, key, job_id)

    assert body["status"] == "failed"
    assert body["error"]["type"] == "DestinationRefused"
    assert receiver.received == []

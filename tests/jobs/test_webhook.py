"""``webhook.deliver`` against local receivers: per-tenant signatures, rotation, retries, refusals."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer
from redis.asyncio import Redis

from jobs import webhook_tenants
from jobs.queue import JobQueue
from jobs.registry import InvalidArguments
from jobs.running import running_worker
from service.app import create_app
from service.app_keys import API_KEYS
from service.settings import Settings
from tests.jobs.support import Client, auth, enqueue, jobs_settings, wait_for
from tests.processes import run_python
from tests.servers import redis_url

MASTER = "whsec-master-0123456789"


@dataclass
class Receiver:
    """A webhook receiver that answers with the statuses it is given, then 200."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return web.Response(status=status, headers=headers)


def verifies(secret: str, tenant: str, header: str, body: bytes) -> bool:
    """What tenant ``tenant``'s receiver does: recompute the signature with its own name and secret,
    and accept the delivery when any ``v1`` matches."""
    items = [item.split("=", 1) for item in header.split(",")]
    timestamp = next(value for name, value in items if name == "t")
    expected = hmac.new(secret.encode(), f"{tenant}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(value, expected) for name, value in items if name == "v1")


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


async def _serve(aiohttp_server: AiohttpServer, receiver: Receiver) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    return await aiohttp_server(app, host="127.0.0.1")


@pytest.fixture
async def server(aiohttp_server: AiohttpServer, receiver: Receiver) -> TestServer:
    """Tenant acme's receiver."""
    return await _serve(aiohttp_server, receiver)


@pytest.fixture
def other_receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def other_server(aiohttp_server: AiohttpServer, other_receiver: Receiver) -> TestServer:
    """Tenant globex's receiver."""
    return await _serve(aiohttp_server, other_receiver)


def hook_url(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}/hook"


@pytest.fixture
def webhook_settings(server: TestServer, other_server: TestServer) -> Settings:
    fence = f"127.0.0.1:{server.port},127.0.0.1:{other_server.port}"
    return jobs_settings(WEBHOOK_ALLOWED_HOSTS=fence, WEBHOOK_SECRET=MASTER)


@pytest.fixture
async def secrets(redis: Redis, server: TestServer, other_server: TestServer) -> dict[str, str]:
    """acme and globex set up as an operator does: each its own secret and its own receiver."""
    found = {}
    for tenant, receiver_server in (("acme", server), ("globex", other_server)):
        found[tenant], _ = await webhook_tenants.rotate_secret(redis, tenant, MASTER)
        await webhook_tenants.set_receivers(redis, tenant, (f"127.0.0.1:{receiver_server.port}",))
    return found


@pytest.fixture
async def hook_client(
    aiohttp_client: AiohttpClient, redis: Redis, webhook_settings: Settings, secrets: dict[str, str]
) -> AsyncIterator[Client]:
    client: Client = await aiohttp_client(create_app(webhook_settings))
    async with running_worker(webhook_settings):
        yield client


@pytest.fixture
async def key(hook_client: Client) -> str:
    return await hook_client.app[API_KEYS].create("acme")


@pytest.fixture
async def globex_key(hook_client: Client) -> str:
    return await hook_client.app[API_KEYS].create("globex")


async def test_delivery_verifies_with_its_tenants_secret_and_names_the_tenant(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver, secrets: dict[str, str]
) -> None:
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": hook_url(server), "payload": {"order": 42}})
    body = await wait_for(hook_client, key, job_id)

    assert body["status"] == "complete"
    assert body["result"] == {"status": 200}
    [(headers, raw)] = receiver.received
    assert json.loads(raw) == {"order": 42}
    assert headers["Content-Type"] == "application/json"
    assert headers["Webhook-Id"] == job_id
    assert headers["Webhook-Tenant"] == "acme"
    assert verifies(secrets["acme"], "acme", headers["Webhook-Signature"], raw)
    timestamp = int(headers["Webhook-Signature"].split(",")[0].removeprefix("t="))
    assert abs(timestamp - time.time()) < 10


async def _refused_url(client: Client, key: str, server: TestServer, payload: dict[str, Any]) -> str:
    """Enqueue a delivery to the test receiver with ``key``; the one error its 422 names for the URL."""
    response = await client.post(
        "/v1/jobs",
        json={"task": "webhook.deliver", "args": {"url": hook_url(server), "payload": payload}},
        headers=auth(key),
    )
    assert response.status == 422
    [message] = (await response.json())["errors"]["args"]["url"]
    assert isinstance(message, str)
    return message


async def test_a_tenant_cannot_send_to_another_tenants_receiver(
    hook_client: Client, globex_key: str, server: TestServer, receiver: Receiver
) -> None:
    # The host is inside WEBHOOK_ALLOWED_HOSTS, but it is acme's receiver, not globex's.
    message = await _refused_url(hook_client, globex_key, server, {"as": "acme"})

    assert "not among the webhook receivers of tenant 'globex'" in message
    assert receiver.received == []


async def test_another_tenants_delivery_does_not_verify_as_the_first_tenants(
    hook_client: Client, redis: Redis, globex_key: str, server: TestServer, receiver: Receiver, secrets: dict[str, str]
) -> None:
    # Even where an operator lets globex call acme's receiver too, what globex sends is signed
    # for globex with globex's secret: acme's receiver, checking as acme, refuses it.
    await webhook_tenants.set_receivers(redis, "globex", (f"127.0.0.1:{server.port}",))
    job_id = await enqueue(hook_client, globex_key, "webhook.deliver", {"url": hook_url(server), "payload": {"a": 1}})
    assert (await wait_for(hook_client, globex_key, job_id))["status"] == "complete"

    [(headers, raw)] = receiver.received
    assert headers["Webhook-Tenant"] == "globex"
    assert verifies(secrets["globex"], "globex", headers["Webhook-Signature"], raw)
    assert not verifies(secrets["acme"], "acme", headers["Webhook-Signature"], raw)
    assert not verifies(secrets["acme"], "globex", headers["Webhook-Signature"], raw)
    assert not verifies(secrets["globex"], "acme", headers["Webhook-Signature"], raw)


async def test_rotation_signs_with_both_secrets_during_the_overlap_and_then_with_the_new_one(
    hook_client: Client, redis: Redis, key: str, server: TestServer, receiver: Receiver, secrets: dict[str, str]
) -> None:
    old = secrets["acme"]
    new, previous_until_ms = await webhook_tenants.rotate_secret(redis, "acme", MASTER)
    assert new != old
    assert previous_until_ms / 1000 - time.time() == pytest.approx(webhook_tenants.ROTATION_OVERLAP_S, abs=60)

    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": hook_url(server), "payload": {}})
    await wait_for(hook_client, key, job_id)
    [(headers, raw)] = receiver.received
    assert headers["Webhook-Signature"].count("v1=") == 2
    assert verifies(old, "acme", headers["Webhook-Signature"], raw)
    assert verifies(new, "acme", headers["Webhook-Signature"], raw)

    # After a leak the operator rotates with no overlap: the old secrets stop signing at once.
    newest, previous_until_ms = await webhook_tenants.rotate_secret(redis, "acme", MASTER, overlap_s=0)
    assert previous_until_ms == 0
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": hook_url(server), "payload": {}})
    await wait_for(hook_client, key, job_id)
    (headers, raw) = receiver.received[1]
    assert headers["Webhook-Signature"].count("v1=") == 1
    assert verifies(newest, "acme", headers["Webhook-Signature"], raw)
    assert not verifies(new, "acme", headers["Webhook-Signature"], raw)


async def test_webhook_of_a_tenant_without_a_secret_is_refused_at_enqueue_naming_the_command(
    hook_client: Client, server: TestServer
) -> None:
    key = await hook_client.app[API_KEYS].create("initech")
    message = await _refused_url(hook_client, key, server, {})
    assert "python -m service webhooks secret --tenant initech" in message


async def test_webhook_url_with_a_port_out_of_range_is_a_422(hook_client: Client, key: str) -> None:
    response = await hook_client.post(
        "/v1/jobs",
        json={"task": "webhook.deliver", "args": {"url": "http://127.0.0.1:99999/hook", "payload": {}}},
        headers=auth(key),
    )
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    assert "url" in (await response.json())["errors"]["args"]


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_payload_with_nan_or_infinity_is_refused_at_enqueue(
    redis: Redis, webhook_settings: Settings, secrets: dict[str, str], server: TestServer, number: float
) -> None:
    # Called the way Python code would: whatever the HTTP parser allows, the queue refuses.
    queue = JobQueue(redis, webhook_settings)
    with pytest.raises(InvalidArguments):
        await queue.enqueue("acme", "webhook.deliver", {"url": hook_url(server), "payload": {"x": [number]}})
    assert await queue.unfinished("acme") == 0


async def test_webhook_answered_503_is_retried_after_retry_after(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver
) -> None:
    receiver.answers = [(503, {"Retry-After": "1"})]
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": hook_url(server), "payload": {}})
    body = await wait_for(hook_client, key, job_id)

    assert body["status"] == "complete"
    assert body["tries"] == 2
    assert len(receiver.received) == 2


async def test_webhook_answered_400_fails_without_retry(
    hook_client: Client, key: str, server: TestServer, receiver: Receiver
) -> None:
    receiver.answers = [(400, {})]
    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": hook_url(server), "payload": {}})
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


async def test_receiver_outside_the_deployments_fence_is_refused(
    aiohttp_client: AiohttpClient, redis: Redis, server: TestServer, secrets: dict[str, str]
) -> None:
    # acme lists the receiver, but WEBHOOK_ALLOWED_HOSTS (the outer fence) does not.
    settings = jobs_settings(WEBHOOK_ALLOWED_HOSTS="hooks.example.com", WEBHOOK_SECRET=MASTER)
    client: Client = await aiohttp_client(create_app(settings))
    key = await client.app[API_KEYS].create("acme")
    assert "WEBHOOK_ALLOWED_HOSTS" in await _refused_url(client, key, server, {})


async def test_listed_name_that_resolves_to_loopback_is_refused(
    aiohttp_client: AiohttpClient, redis: Redis, server: TestServer, secrets: dict[str, str]
) -> None:
    settings = jobs_settings(WEBHOOK_ALLOWED_HOSTS=f"localhost:{server.port}", WEBHOOK_SECRET=MASTER)
    await webhook_tenants.set_receivers(redis, "acme", (f"localhost:{server.port}",))
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
    aiohttp_client: AiohttpClient,
    redis: Redis,
    webhook_settings: Settings,
    server: TestServer,
    receiver: Receiver,
    secrets: dict[str, str],
) -> None:
    client: Client = await aiohttp_client(create_app(webhook_settings))
    key = await client.app[API_KEYS].create("acme")
    job_id = await enqueue(client, key, "webhook.deliver", {"url": hook_url(server), "payload": {}})

    # Before a worker runs it, the operator takes the receiver away from the tenant.
    await webhook_tenants.set_receivers(redis, "acme", ("hooks.example.com",))
    async with running_worker(webhook_settings):
        body = await wait_for(client, key, job_id)

    assert body["status"] == "failed"
    assert body["error"]["type"] == "DestinationRefused"
    assert receiver.received == []


def _webhooks_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(
        "-m", "service", "webhooks", *args, env={"REDIS_URL": redis_url(), "LOG_FORMAT": "console", **env}
    )


async def test_webhooks_cli_shows_each_new_secret_once_and_sets_receivers(
    hook_client: Client, redis: Redis, key: str, server: TestServer, receiver: Receiver
) -> None:
    first = _webhooks_cli("secret", "--tenant", "acme", WEBHOOK_SECRET=MASTER)
    second = _webhooks_cli("secret", "--tenant", "acme", "--overlap-hours", "1", WEBHOOK_SECRET=MASTER)
    hosts = _webhooks_cli(
        "hosts", "--tenant", "acme", f"127.0.0.1:{server.port}", "hooks.example.com", WEBHOOK_ALLOWED_HOSTS=""
    )

    assert first.returncode == second.returncode == hosts.returncode == 0, (first.stderr, second.stderr, hosts.stderr)
    [old], [new] = first.stdout.splitlines(), second.stdout.splitlines()  # the secret alone on stdout
    assert old.startswith("whsec_")
    assert new.startswith("whsec_")
    assert old != new
    assert "previous one also signs deliveries until" in second.stderr
    assert "not (wholly) allowed by WEBHOOK_ALLOWED_HOSTS" in hosts.stderr
    assert (await webhook_tenants.load(redis, "acme")).receivers == (f"127.0.0.1:{server.port}", "hooks.example.com")

    job_id = await enqueue(hook_client, key, "webhook.deliver", {"url": hook_url(server), "payload": {}})
    await wait_for(hook_client, key, job_id)
    [(headers, raw)] = receiver.received
    assert verifies(old, "acme", headers["Webhook-Signature"], raw)
    assert verifies(new, "acme", headers["Webhook-Signature"], raw)


def test_webhooks_cli_refuses_a_bad_host_or_a_missing_master_secret() -> None:
    bad_host = _webhooks_cli("hosts", "--tenant", "acme", "hooks.example.com/x")
    no_master = _webhooks_cli("secret", "--tenant", "acme", WEBHOOK_SECRET="")
    assert bad_host.returncode == no_master.returncode == 2
    assert "is not a host or host:port" in bad_host.stderr
    assert "WEBHOOK_SECRET is not set" in no_master.stderr

"""The dashboard's document: its numbers are Redis's, and an open dashboard costs Redis a bounded, shared read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from service.app import create_app
from service.app_keys import API_KEYS, LIMIT_USAGE
from service.auth import REVOCATIONS_CHANNEL
from service.dashboard.snapshot import ROUND_TRIPS_MAX
from service.ratelimit.usage import ANONYMOUS_CALLER
from tests.conftest import ServiceTestServer, get_json, make_settings
from tests.policies import policies_file
from tests.waiting import until

Client = TestClient[web.Request, web.Application]


async def _document(client: Client) -> dict[str, Any]:
    return await get_json(client, "/internal/dashboard.json")


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every request (or pipeline of them) any client of this process writes to Redis: one round trip each.

    A connection's opening handshake (``CLIENT SETNAME``, redis-py's ``PING`` after it, ``CLIENT
    SETINFO``) is left out: it is paid once per pooled connection, not per read.
    """
    sent: list[bytes] = []
    previous: dict[int, bytes] = {}
    original = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        raw = command if isinstance(command, bytes) else b"".join(command)
        name = raw.split(b"\r\n")[2].upper()
        handshake = name == b"CLIENT" or (name == b"PING" and previous.get(id(self)) == b"CLIENT")
        previous[id(self)] = name
        if not handshake:
            sent.append(raw)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    return sent


async def _settled(redis: Redis, round_trips: list[bytes]) -> None:
    """Once the app's start-up talk with Redis is over (its revocation listener subscribed), count from nothing."""

    async def subscribed() -> bool:
        [(_, listeners)] = await redis.pubsub_numsub(REVOCATIONS_CHANNEL)
        return bool(listeners == 1)

    await until(subscribed, "the revocation listener's subscription")
    round_trips.clear()


async def test_an_open_dashboard_costs_redis_one_bounded_read_per_process_shared_by_every_viewer(
    client: Client, redis: Redis, round_trips: list[bytes]
) -> None:
    await _settled(redis, round_trips)
    page = await client.get("/dashboard")
    assert page.status == 200
    assert round_trips == []  # the page itself reads nothing: its script asks for the document

    first = await _document(client)  # loads the scripts and opens the connections
    round_trips.clear()

    async def a_new_document() -> bool:
        views = await asyncio.gather(*(_document(client) for _ in range(5)))  # five dashboards open at once
        return any(view["generated_at"] != first["generated_at"] for view in views)

    await until(a_new_document, "a fresh document", timeout_s=10.0, every_s=0.05)
    # Dozens of requests over the document's lifetime, one build: every one of its sections read once.
    assert 0 < len(round_trips) <= ROUND_TRIPS_MAX, [command[:120].split(b"\r\n")[2:6:2] for command in round_trips]


async def test_429s_and_the_tenants_nearest_their_limits_are_the_limiters(
    aiohttp_client: AiohttpClient, redis: Redis, tmp_path: Path
) -> None:
    policies = policies_file(
        tmp_path,
        '[plans.default]\n"*" = [{ name = "burst", capacity = 4, per_second = 0.01 }]\n'
        '[plans.big]\n"*" = [{ name = "burst", capacity = 100, per_second = 0.01 }]\n'
        '[anonymous]\n"*" = [{ name = "address", capacity = 1, per_second = 0.01 }]\n',
    )
    app = create_app(make_settings(RATE_LIMITS_FILE=policies, METRICS_PORT="0"))
    client = cast(Client, await aiohttp_client(ServiceTestServer(app)))
    acme = await app[API_KEYS].create("acme")
    globex = await app[API_KEYS].create("globex", plan="big")
    statuses = [(await client.get("/v1/jobs", headers={"X-API-Key": acme})).status for _ in range(7)]
    assert statuses == [200] * 4 + [429] * 3
    for _ in range(10):
        assert (await client.get("/v1/jobs", headers={"X-API-Key": globex})).status == 200
    anonymous = [(await client.get("/v1/jobs")).status for _ in range(3)]
    assert anonymous == [401, 429, 429]

    await app[LIMIT_USAGE].flush()  # what the process does every few seconds
    limits = (await _document(client))["limits"]
    assert sum(limits["refused_per_minute"]) == 5
    assert limits["tenants"] == [
        {"tenant": "acme", "lowest_remaining": 0.0, "refused": 3},
        {"tenant": "globex", "lowest_remaining": pytest.approx(0.9, abs=0.001), "refused": 0},
        {"tenant": ANONYMOUS_CALLER, "lowest_remaining": None, "refused": 2},
    ]


async def test_a_process_with_nothing_counted_writes_nothing(
    client: Client, redis: Redis, round_trips: list[bytes]
) -> None:
    await _settled(redis, round_trips)
    await client.app[LIMIT_USAGE].flush()
    assert round_trips == []

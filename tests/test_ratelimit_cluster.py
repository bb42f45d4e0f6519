"""The limiter on a local three-primary Redis Cluster: batching per primary, redirects, NOSCRIPT, readiness, doctor."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from service.app import create_app
from service.doctor_limiter import diagnose_limiter_redis
from service.ratelimit import cluster as cluster_module
from service.ratelimit import limiter_redis
from service.ratelimit.cluster import ClusterTransport, slot_of
from service.ratelimit.limiter import Limiter, Outcome
from service.ratelimit.policy import parse_policies
from service.script_calls import BATCH_MAX
from service.settings import RedisURL
from tests.conftest import ServiceTestServer, make_settings
from tests.servers import LocalCluster, redis_url, shared_cluster

POLICIES = parse_policies(
    {
        "plans": {
            "default": {
                "*": [
                    {"name": "burst", "capacity": 3, "per_second": 0.01},
                    {"name": "sustained", "capacity": 100, "per_second": 0.01},
                ]
            }
        },
        "anonymous": {"*": [{"name": "address", "capacity": 1, "per_second": 0.01}]},
    }
)
ROUTE = POLICIES.plan("default").for_route(None)


def flush(cluster: LocalCluster) -> None:
    for server in cluster.servers:
        if server.running:
            with cluster.client(server) as client:
                if client.execute_command("ROLE")[0] == b"master":
                    client.flushall()


@pytest.fixture
async def transport() -> AsyncIterator[ClusterTransport]:
    cluster = shared_cluster()
    flush(cluster)
    transport = ClusterTransport(
        RedisURL.parse("RATE_LIMIT_REDIS_URL", cluster.url), timeout_s=5, max_connections=10, client_name="test"
    )
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()
        flush(cluster)


async def test_one_loop_turn_sends_one_write_to_each_primary(
    transport: ClusterTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: Counter[int] = Counter()
    exchange = cluster_module._exchange

    async def counted(link: Redis, commands: list[bytes]) -> list[Any]:
        writes[link.connection_pool.connection_kwargs["port"]] += 1
        return await exchange(link, commands)

    limiter = Limiter(Redis(), deadline_s=5.0, cluster=transport)
    owned: dict[Any, list[str]] = {}
    for n in range(100):
        owned.setdefault(transport.owner(f"tenant-{n}", ROUTE), []).append(f"tenant-{n}")
    callers = [caller for mine in owned.values() for caller in mine[:2]]  # two on every primary
    assert len(owned) == 3
    assert len(callers) * 4 <= BATCH_MAX  # one batch
    await asyncio.gather(*(limiter.decide(f"warm-{n}", ROUTE) for n in range(30)))  # every primary loads the script
    monkeypatch.setattr(cluster_module, "_exchange", counted)

    decisions = await asyncio.gather(*(limiter.decide(caller, ROUTE) for caller in callers * 4))

    assert [d.outcome for d in decisions] == [Outcome.ALLOWED] * 18 + [Outcome.LIMITED] * 6  # 3 each, in order
    assert sorted(writes.values()) == [1, 1, 1]
    await limiter.close()


async def test_a_stale_slot_map_is_followed_and_each_call_spends_once(transport: ClusterTransport) -> None:
    limiter = Limiter(Redis(), deadline_s=5.0, cluster=transport)
    slot = slot_of("moved", ROUTE)
    right = transport._owners[slot]
    wrong = next(primary for primary in transport.primaries if primary != right)
    transport._owners[slot] = wrong  # as after a resharding the limiter has not read yet

    decision = await limiter.decide("moved", ROUTE)

    assert decision.outcome == Outcome.ALLOWED
    assert [state.remaining for state in decision.states] == [2, 99]  # paid once, on the right node
    assert transport._owners[slot] == right  # MOVED taught the map
    assert limiter.metrics.redis_errors["moved"] == 1
    await limiter.close()


async def test_a_primary_without_the_script_gets_it_and_the_call_is_answered(transport: ClusterTransport) -> None:
    limiter = Limiter(Redis(), deadline_s=5.0, cluster=transport)
    assert (await limiter.decide("flushed", ROUTE)).outcome == Outcome.ALLOWED
    # On a fresh cluster the first call loads the script too: count from here.
    loaded_before = limiter.metrics.redis_errors.get("noscript", 0)
    for server in shared_cluster().servers:
        with shared_cluster().client(server) as client:
            client.script_flush()  # as a newly promoted primary that never saw the script

    decision = await limiter.decide("flushed", ROUTE)

    assert decision.outcome == Outcome.ALLOWED
    assert [state.remaining for state in decision.states] == [1, 98]
    assert limiter.metrics.redis_errors == {"noscript": loaded_before + 1}
    await limiter.close()


async def test_cluster_health_covers_state_slots_and_every_primary(transport: ClusterTransport) -> None:
    health = await transport.health()

    assert health.ok
    assert health.state == "ok"
    assert health.slots_covered == 16384
    assert len(health.primaries) == 3
    assert health.unreachable == []


async def test_ready_includes_the_limiters_cluster(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    settings = make_settings(RATE_LIMIT_REDIS_URL=shared_cluster().url, ENABLE_WORKER="false")
    client: TestClient[web.Request, None] = await aiohttp_client(ServiceTestServer(create_app(settings)))

    async with client.get("/ready") as response:
        body = await response.json()

    assert response.status == 200
    assert body["components"] == {"redis": True, "ratelimit_redis": True}
    assert body["details"]["ratelimit_redis"] == {"cluster_state": "ok", "slots_covered": 16384, "primaries": 3}


async def test_ready_pings_a_separate_single_limiter_redis(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    other_database = redis_url().rsplit("/", 1)[0] + "/1"
    settings = make_settings(RATE_LIMIT_REDIS_URL=other_database, ENABLE_WORKER="false")
    client: TestClient[web.Request, None] = await aiohttp_client(ServiceTestServer(create_app(settings)))

    async with client.get("/ready") as response:
        body = await response.json()

    assert body["components"] == {"redis": True, "ratelimit_redis": True}
    assert set(body["details"]["ratelimit_redis"]) == {"latency_ms"}


async def test_doctor_checks_the_limiters_cluster() -> None:
    settings = make_settings(RATE_LIMIT_REDIS_URL=shared_cluster().url)

    findings = {finding.check: finding for finding in await diagnose_limiter_redis(settings)}

    assert {check: finding.status for check, finding in findings.items()} == {
        "limiter/config": "ok",
        "limiter/dns": "ok",
        "limiter/password": "ok",
        "limiter/encryption": "ok",
        "limiter/connect": "ok",
        "limiter/tls": "ok",
        "limiter/ping": "ok",
        "limiter/lua": "ok",
        "limiter/cluster": "ok",
        "limiter/slots": "ok",
    }
    assert "RATE_LIMIT_REDIS_URL" in findings["limiter/config"].detail


async def test_doctor_says_nothing_of_a_limiter_on_the_main_redis() -> None:
    assert await diagnose_limiter_redis(make_settings()) == []


async def test_a_hung_primary_holds_up_only_its_own_callers(transport: ClusterTransport) -> None:
    limiter = Limiter(Redis(), deadline_s=1.0, cluster=transport)  # the other primaries answer long before
    callers = [f"hung-{n}" for n in range(30)]
    await asyncio.gather(*(limiter.decide(caller, ROUTE) for caller in callers))  # connections and script in place
    cluster = shared_cluster()
    hung = cluster.servers[0]
    address = f"127.0.0.1:{hung.port}"
    hung.pause()  # SIGSTOP: its connections stay open and nothing answers
    try:
        decisions = await asyncio.gather(*(limiter.decide(caller, ROUTE) for caller in callers))
    finally:
        hung.resume()

    outcomes = {caller: d.outcome for caller, d in zip(callers, decisions, strict=True)}
    on_hung = {caller for caller in callers if transport.owner(caller, ROUTE) == address}
    assert 0 < len(on_hung) < len(callers)
    assert {outcomes[caller] for caller in on_hung} == {Outcome.FAIL_OPEN}  # at the deadline
    assert {outcome for caller, outcome in outcomes.items() if caller not in on_hung} == {Outcome.ALLOWED}
    await limiter.close()


async def test_a_limiter_redis_that_answers_only_later_is_still_found_to_be_a_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = 0

    async def is_cluster_later(client: Redis) -> bool:
        nonlocal asked
        asked += 1
        if asked == 1:
            raise ConnectionError("not yet")
        return True

    monkeypatch.setattr(limiter_redis, "is_cluster", is_cluster_later)
    monkeypatch.setattr(limiter_redis, "DETECT_EVERY_S", 0.01)
    settings = make_settings(RATE_LIMIT_REDIS_URL=shared_cluster().url)
    limiter = Limiter(Redis(), deadline_s=1.0)
    detection = limiter_redis.ClusterDetection(Redis(), settings)
    with pytest.raises(ConnectionError):
        await detection.detect(1.0)  # at start: no answer, so the limiter starts as for a single server

    await asyncio.wait_for(detection.follow(limiter), 10)

    assert limiter.cluster is not None
    assert (await limiter.decide("late", ROUTE)).outcome == Outcome.ALLOWED
    await limiter.cluster.close()
    await limiter.close()

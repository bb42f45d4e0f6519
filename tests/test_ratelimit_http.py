"""The limiter as API consumers see it: headers, 429s, the read-only endpoint, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import http_sfv
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service.app import create_app
from service.app_keys import API_KEYS
from tests.conftest import make_settings
from tests.policies import policies_file

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

POLICIES = """
[plans.default]
"*" = [
  { name = "burst", capacity = 20, per_second = 10 },
  { name = "sustained", capacity = 600, per_second = 10 },
]
"POST /v1/echo" = [{ name = "echo", capacity = 2, per_second = 0.5 }]

[plans.tiny]
"*" = [{ name = "burst", capacity = 3, per_second = 0.5 }]

[plans.fast]
"*" = [{ name = "burst", capacity = 1, per_second = 20 }]

[plans.watching]
"*" = [{ name = "burst", capacity = 2, per_second = 0.01 }]
"GET /v1/rate-limit" = [{ name = "status", capacity = 3, per_second = 0.01 }]

[plans.watched]
"*" = [
  { name = "burst", capacity = 100, per_second = 1 },
  { name = "trial", capacity = 1, per_second = 0.01, shadow = true },
]

[anonymous]
"*" = [{ name = "address", capacity = 2, per_second = 0.01 }]
"""


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"echo": True})


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, redis: Redis, tmp_path: Path) -> MakeClient:
    async def make(policies: str = POLICIES, **env: str) -> Client:
        # These tests count decisions: a busy test machine must not turn a slow first batch (a new
        # connection, the script loaded) into a fail-open. The deadline has tests of its own (test_limiter).
        env.setdefault("RATE_LIMIT_DEADLINE_MS", "5000")
        app = create_app(make_settings(RATE_LIMITS_FILE=policies_file(tmp_path, policies), **env))
        app.router.add_post("/v1/echo", echo)
        return await aiohttp_client(app)

    return make


def sf_list(value: str) -> dict[str, dict[str, object]]:
    parsed = http_sfv.List()  # type: ignore[attr-defined]  # http-sfv re-exports without __all__
    parsed.parse(value.encode())
    return {item.value: dict(item.params) for item in parsed}


async def key_for(client: Client, tenant: str, plan: str = "default") -> dict[str, str]:
    return {"Authorization": f"Bearer {await client.app[API_KEYS].create(tenant, plan)}"}


async def test_every_v1_answer_carries_policy_and_state_headers(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "acme")

    response = await client.get("/v1/no-such-thing", headers=auth)

    assert response.status == 404
    assert sf_list(response.headers["RateLimit-Policy"]) == {
        "burst": {"q": 20, "w": 2},
        "sustained": {"q": 600, "w": 60},
    }
    assert sf_list(response.headers["RateLimit"]) == {"burst": {"r": 19, "t": 1}}


async def test_routes_outside_v1_carry_no_rate_limit_headers(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/health")
    assert response.status == 200
    assert "RateLimit" not in response.headers
    assert "RateLimit-Policy" not in response.headers


async def test_refused_request_is_429_problem_with_retry_after_and_violated_policies(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "small", "tiny")
    statuses = [(await client.get("/v1/nothing", headers=auth)).status for _ in range(3)]

    refused = await client.get("/v1/nothing", headers=auth)

    assert statuses == [404, 404, 404]
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    body = await refused.json()
    assert body["type"].endswith("quota-exceeded")
    assert body["status"] == 429
    assert body["violated-policies"] == ["burst"]
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5 per second
    assert sf_list(refused.headers["RateLimit"]) == {"burst": {"r": 0, "t": 6}}
    assert sf_list(refused.headers["RateLimit-Policy"]) == {"burst": {"q": 3, "w": 6}}


async def test_route_buckets_are_spent_on_top_of_the_common_ones(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "acme")
    first = await client.post("/v1/echo", headers=auth)
    second = await client.post("/v1/echo", headers=auth)

    third = await client.post("/v1/echo", headers=auth)
    elsewhere = await client.get("/v1/nothing", headers=auth)

    assert [first.status, second.status, third.status] == [200, 200, 429]
    assert (await third.json())["violated-policies"] == ["echo"]
    assert set(sf_list(first.headers["RateLimit-Policy"])) == {"burst", "sustained", "echo"}
    assert elsewhere.status == 404  # the route's own bucket is empty, not the common ones
    assert sf_list(elsewhere.headers["RateLimit"])["burst"]["r"] == 17


async def test_callers_without_a_valid_key_are_limited_by_address_before_their_401(make_client: MakeClient) -> None:
    client = await make_client()
    answers = [
        await client.get("/v1/rate-limit"),
        await client.get("/v1/rate-limit", headers={"X-API-Key": "otto_guessed"}),
        await client.get("/v1/rate-limit", headers={"X-API-Key": "otto_guessed_again"}),
    ]

    assert [a.status for a in answers] == [401, 401, 429]
    assert sf_list(answers[0].headers["RateLimit-Policy"]) == {"address": {"q": 2, "w": 200}}
    assert sf_list(answers[1].headers["RateLimit"])["address"]["r"] == 0
    assert (await answers[2].json())["violated-policies"] == ["address"]


async def test_proxy_address_is_used_only_when_trusted(make_client: MakeClient) -> None:
    trusting = await make_client(TRUST_PROXY_HEADERS="true")
    statuses = [
        (await trusting.get("/v1/nothing", headers={"Fly-Client-IP": f"203.0.113.{n}"})).status for n in range(5)
    ]
    assert statuses == [401] * 5  # five addresses, five buckets

    wary = await make_client()
    statuses = [(await wary.get("/v1/nothing", headers={"Fly-Client-IP": f"198.51.100.{n}"})).status for n in range(3)]
    assert statuses == [401, 401, 429]  # the header is ignored: one caller


async def test_rate_limit_endpoint_reads_the_buckets_without_spending(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "acme")
    await client.get("/v1/nothing", headers=auth)

    readings = [await (await client.get("/v1/rate-limit", headers=auth)).json() for _ in range(3)]

    assert [[b["remaining"] for b in r["buckets"]] for r in readings] == [[19, 599]] * 3
    assert readings[0]["identity"] == "acme"
    assert readings[0]["plan"] == "default"
    burst, _ = readings[2]["buckets"]
    assert burst.pop("reset_s") <= 0.1  # refilling all along: reading spent nothing
    assert burst == {"name": "burst", "capacity": 20, "per_second": 10.0, "remaining": 19, "shadow": False}


async def test_rate_limit_endpoint_spends_only_its_own_bucket_and_reports_empty_common_ones(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    auth = await key_for(client, "eager", "watching")
    spent = [(await client.get("/v1/nothing", headers=auth)).status for _ in range(3)]

    readings = [await client.get("/v1/rate-limit", headers=auth) for _ in range(4)]

    assert spent == [404, 404, 429]  # the common burst bucket is empty
    assert [r.status for r in readings] == [200, 200, 200, 429]  # the status bucket holds 3
    body = await readings[0].json()
    assert [(b["name"], b["remaining"]) for b in body["buckets"]] == [("burst", 0), ("status", 2)]
    refused = await readings[3].json()
    assert refused["violated-policies"] == ["status"]  # the empty burst bucket refuses nothing here
    assert sf_list(readings[3].headers["RateLimit"]) == {"status": {"r": 0, "t": 300}}


async def test_built_in_plans_give_the_rate_limit_endpoint_a_small_bucket_of_its_own(
    client: Client, api_key: str
) -> None:
    auth = {"X-API-Key": api_key}
    statuses = [(await client.get("/v1/rate-limit", headers=auth)).status for _ in range(11)]

    elsewhere = await client.get("/v1/jobs", headers=auth)

    assert statuses == [200] * 10 + [429]
    assert elsewhere.status == 200  # reading the status spent none of the common buckets
    assert sf_list(elsewhere.headers["RateLimit"])["burst"]["r"] == 19


async def test_anonymous_ipv6_callers_share_a_bucket_per_64_bit_prefix(make_client: MakeClient) -> None:
    client = await make_client(TRUST_PROXY_HEADERS="true")

    def from_address(address: str) -> dict[str, str]:
        return {"Fly-Client-IP": address}

    one_prefix = [
        (await client.get("/v1/nothing", headers=from_address(f"2001:db8:1:2::{n:x}"))).status for n in range(1, 4)
    ]
    next_prefix = await client.get("/v1/nothing", headers=from_address("2001:db8:1:3::1"))
    mapped = [(await client.get("/v1/nothing", headers=from_address(a))).status for a in ("::ffff:203.0.113.7",) * 2]
    ipv4 = await client.get("/v1/nothing", headers=from_address("203.0.113.7"))

    assert one_prefix == [401, 401, 429]  # three addresses of one /64: one caller
    assert next_prefix.status == 401  # the next /64 is another caller
    assert mapped == [401, 401]
    assert ipv4.status == 429  # an IPv4-mapped IPv6 address is its IPv4 address


async def test_a_plan_without_a_section_uses_default(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "newcomer", "gold")
    response = await client.get("/v1/rate-limit", headers=auth)
    assert response.status == 200
    assert (await response.json())["plan"] == "default"
    assert set(sf_list(response.headers["RateLimit-Policy"])) == {"burst", "sustained"}


async def test_shadow_bucket_is_counted_but_never_refuses(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "watched", "watched")

    statuses = [(await client.get("/v1/nothing", headers=auth)).status for _ in range(4)]

    assert statuses == [404] * 4
    metrics = await (await client.get("/metrics")).text()
    assert 'ratelimit_decisions_total{outcome="shadow_limited",plan="watched"} 3.0' in metrics
    assert 'ratelimit_decisions_total{outcome="allowed",plan="watched"} 1.0' in metrics


async def test_decisions_and_latency_are_exposed_on_metrics(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "small", "tiny")
    for _ in range(5):
        await client.get("/v1/nothing", headers=auth)

    metrics = await (await client.get("/metrics")).text()

    assert 'ratelimit_decisions_total{outcome="allowed",plan="tiny"} 3.0' in metrics
    assert 'ratelimit_decisions_total{outcome="limited",plan="tiny"} 2.0' in metrics
    assert "ratelimit_redis_latency_seconds_count" in metrics


async def test_refusal_cache_never_refuses_a_bucket_that_has_refilled(make_client: MakeClient) -> None:
    client = await make_client()
    auth = await key_for(client, "quick", "fast")  # 1 token, one more every 50 ms
    assert (await client.get("/v1/nothing", headers=auth)).status == 404
    refused = [(await client.get("/v1/nothing", headers=auth)).status for _ in range(3)]

    await asyncio.sleep(0.06)
    again = await client.get("/v1/nothing", headers=auth)

    assert refused == [429, 429, 429]
    assert again.status == 404
    metrics = await (await client.get("/metrics")).text()
    assert 'ratelimit_local_refusals_total{plan="fast"}' in metrics  # some refusals cost no round trip


async def test_script_flush_mid_run_causes_no_server_error(make_client: MakeClient, redis: Redis) -> None:
    client = await make_client()
    auths = [await key_for(client, f"tenant-{n}") for n in range(5)]

    async def traffic() -> list[int]:
        statuses = []
        for _ in range(6):
            answers = await asyncio.gather(*(client.get("/v1/nothing", headers=a) for a in auths * 3))
            statuses += [a.status for a in answers]
        return statuses

    async def flush_scripts_repeatedly() -> None:
        for _ in range(4):
            await asyncio.sleep(0.01)
            await redis.script_flush()

    statuses, _ = await asyncio.gather(traffic(), flush_scripts_repeatedly())

    assert set(statuses) == {404}  # every request decided and admitted: no 5xx, no fallback
    metrics = await (await client.get("/metrics")).text()
    assert 'ratelimit_redis_errors_total{reason="noscript"}' in metrics
    assert 'outcome="fail_open"' not in metrics


async def test_limiter_switched_off_sends_no_headers(make_client: MakeClient) -> None:
    client = await make_client(RATE_LIMIT_ENABLED="false")
    auth = await key_for(client, "acme")
    response = await client.get("/v1/rate-limit", headers=auth)
    assert response.status == 200
    assert "RateLimit" not in response.headers
    assert (await response.json())["buckets"] == []

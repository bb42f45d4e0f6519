"""Each jobs request costs one Redis script call of its own beside the limiter's: counted as a client sends
commands (a script call counts once, as a metered Redis bills), through a ``MONITOR`` tap, never timed.
Reading one job goes in the limiter's own write: one round trip, on the limiter's connection."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from bench.redis_stats import Monitor
from jobs.redis_keys import index_key
from service.app import create_app
from service.app_keys import API_KEYS
from service.ratelimit.policy import DEFAULT_POLICIES_TOML
from tests.conftest import ServiceTestServer, make_settings
from tests.jobs.support import Client, auth, enqueue
from tests.servers import redis_url

REQUESTS = 5
# What redis-py sends to keep its connections: opening one (names, protocol) or checking one that sat idle.
# Not a request's work, and when it happens depends on the pool, not on the route.
UPKEEP = frozenset({"client", "hello", "auth", "select", "ping"})
# The shipped policies with room for every request of a test: each request still spends its tokens.
ROOMY_POLICIES = re.sub(r"capacity = \d+", "capacity = 1000", DEFAULT_POLICIES_TOML)


@pytest.fixture
async def limited(aiohttp_client: AiohttpClient, redis: Redis, tmp_path: Path) -> Client:
    """The app as deployed, the limiter on."""
    policies = tmp_path / "limits.toml"
    policies.write_text(ROOMY_POLICIES)
    served: Any = await aiohttp_client(ServiceTestServer(create_app(make_settings(RATE_LIMITS_FILE=str(policies)))))
    return served  # type: ignore[no-any-return]


@pytest.fixture
async def key(limited: Client) -> str:
    return await limited.app[API_KEYS].create("acme")


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    with Monitor(redis_url()) as tap:
        yield tap


async def sent_per_request(
    monitor: Monitor, request: Callable[[int], Awaitable[ClientResponse]], *, connections: int = 2
) -> dict[str, float]:
    """The commands the app sent per request, by name, over ``REQUESTS`` sequential requests after a first one
    (which loads the scripts and caches the API key); their script calls came on ``connections`` connections."""
    await request(-1)
    monitor.mark()
    for n in range(REQUESTS):
        await request(n)
    window = monitor.mark().without(UPKEEP)
    assert len(window.senders.get("evalsha", ())) == connections
    return {name: calls / REQUESTS for name, calls in window.client.items()}


def expect(status: int) -> Callable[[ClientResponse], ClientResponse]:
    def check(response: ClientResponse) -> ClientResponse:
        assert response.status == status, response.status
        return response

    return check


async def test_reading_a_job_is_one_script_call_in_the_limiters_round_trip(
    limited: Client, key: str, monitor: Monitor
) -> None:
    job_id = await enqueue(limited, key, "diagnostics.ping")

    async def read(_: int) -> ClientResponse:
        response = expect(200)(await limited.get(f"/v1/jobs/{job_id}", headers=auth(key)))
        assert (await response.json())["id"] == job_id
        return response

    assert await sent_per_request(monitor, read, connections=1) == {"evalsha": 2.0}


async def test_reading_another_tenants_job_costs_the_same_and_is_404(
    limited: Client, key: str, monitor: Monitor
) -> None:
    theirs = await enqueue(limited, await limited.app[API_KEYS].create("globex"), "diagnostics.ping")

    async def read(_: int) -> ClientResponse:
        return expect(404)(await limited.get(f"/v1/jobs/{theirs}", headers=auth(key)))

    assert await sent_per_request(monitor, read, connections=1) == {"evalsha": 2.0}


async def test_a_job_read_that_did_not_ride_is_read_on_its_own(
    limited: Client, key: str, redis: Redis, monitor: Monitor
) -> None:
    """After ``SCRIPT FLUSH`` the read that went with the limiter's call gets ``NOSCRIPT``: it is sent again."""
    job_id = await enqueue(limited, key, "diagnostics.ping")

    async def read(_: int) -> ClientResponse:
        await redis.script_flush()
        response = expect(200)(await limited.get(f"/v1/jobs/{job_id}", headers=auth(key)))
        assert (await response.json())["id"] == job_id
        return response

    # Per request: the limiter's call and the read beside it (both NOSCRIPT), the limiter's script loaded
    # and its call sent again; then the read on a connection of the reads, NOSCRIPT, loaded and sent again.
    # SCRIPT: the test's own FLUSH and the two loads.
    assert await sent_per_request(monitor, read) == {"evalsha": 5.0, "script": 3.0}


async def test_enqueueing_is_one_script_call_beside_the_limiters(limited: Client, key: str, monitor: Monitor) -> None:
    async def post(_: int) -> ClientResponse:
        return expect(202)(await limited.post("/v1/jobs", json={"task": "diagnostics.ping"}, headers=auth(key)))

    assert await sent_per_request(monitor, post) == {"evalsha": 2.0}


async def test_an_idempotent_replay_answers_the_job_in_the_same_one_call(
    limited: Client, key: str, monitor: Monitor
) -> None:
    first = await limited.post(
        "/v1/jobs", json={"task": "diagnostics.ping"}, headers={**auth(key), "Idempotency-Key": "k-1"}
    )
    job_id = (await first.json())["id"]

    async def replay(_: int) -> ClientResponse:
        response = await limited.post(
            "/v1/jobs", json={"task": "diagnostics.ping"}, headers={**auth(key), "Idempotency-Key": "k-1"}
        )
        assert response.headers["Idempotent-Replayed"] == "true"
        assert (await response.json())["id"] == job_id
        return expect(202)(response)

    assert await sent_per_request(monitor, replay) == {"evalsha": 2.0}


async def test_aborting_answers_the_job_in_the_same_one_call(limited: Client, key: str, monitor: Monitor) -> None:
    job_ids = [await enqueue(limited, key, "diagnostics.ping", defer_seconds=600) for _ in range(REQUESTS + 1)]

    async def delete(n: int) -> ClientResponse:
        response = expect(202)(await limited.delete(f"/v1/jobs/{job_ids[n]}", headers=auth(key)))
        assert (await response.json())["status"] == "aborted"
        return response

    assert await sent_per_request(monitor, delete) == {"evalsha": 2.0}


@pytest.mark.parametrize("query", ["limit=10", "limit=10&status=deferred", "limit=3&status=queued"])
async def test_a_page_of_the_list_is_one_script_call_beside_the_limiters(
    limited: Client, key: str, monitor: Monitor, query: str
) -> None:
    for _ in range(11):
        await enqueue(limited, key, "diagnostics.ping", defer_seconds=600)
    await enqueue(limited, key, "diagnostics.ping")

    async def page(_: int) -> ClientResponse:
        response = expect(200)(await limited.get(f"/v1/jobs?{query}", headers=auth(key)))
        assert (await response.json())["jobs"]
        return response

    assert await sent_per_request(monitor, page) == {"evalsha": 2.0}


async def test_a_long_filtered_scan_takes_one_call_per_hundred_entries(
    limited: Client, key: str, redis: Redis, monitor: Monitor
) -> None:
    """A status that matches nothing examines at most 1,000 entries, 100 per call."""
    job_id = await enqueue(limited, key, "diagnostics.ping")
    score = await redis.zscore(index_key("acme"), job_id)
    assert score is not None
    # The index entries of 250 more jobs (their job records are the same one's: a copy of what the list reads).
    record = await redis.get(f"arq:job:{job_id}")
    for n in range(250):
        await redis.set(f"arq:job:copy-{n:03}", record)
        await redis.zadd(index_key("acme"), {f"copy-{n:03}": score - n - 1})

    async def page(_: int) -> ClientResponse:
        response = expect(200)(await limited.get("/v1/jobs?status=complete", headers=auth(key)))
        assert (await response.json()) == {"jobs": [], "next_cursor": None}
        return response

    assert await sent_per_request(monitor, page) == {"evalsha": 1.0 + 3}

"""API keys: stored as digests, required on /v1/, managed from the command line."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service import auth
from service.app_keys import API_KEYS
from service.redis import cancel_until_done, redis_client
from tests.conftest import make_settings
from tests.processes import run_python
from tests.servers import new_redis_server, redis_url

Client = TestClient[web.Request, web.Application]
V1 = "/v1/rate-limit"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer otto_unknownkey0000000000"},
        {"X-API-Key": "not-even-our-format"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["missing", "unknown-bearer", "unknown-x-api-key", "wrong-scheme"],
)
async def test_v1_without_a_valid_key_is_401_problem_json(client: Client, headers: dict[str, str]) -> None:
    response = await client.get(V1, headers=headers)
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert "WWW-Authenticate" in response.headers
    body = await response.json()
    assert body["status"] == 401
    assert "API key" in body["detail"]


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
async def test_valid_key_is_accepted_in_either_header(client: Client, api_key: str, header: str) -> None:
    value = f"Bearer {api_key}" if header == "Authorization" else api_key
    response = await client.get(V1, headers={header: value})
    assert response.status == 200


async def test_keys_are_stored_only_as_digests(client: Client, redis: Redis) -> None:
    key = await client.app[API_KEYS].create("acme", "pro")
    dump = b""
    async for name in redis.scan_iter():
        dump += name
        kind = await redis.type(name)
        if kind == b"hash":
            for field, value in (await redis.hgetall(name)).items():  # type: ignore[misc]
                dump += field + value
    assert key.encode() not in dump
    assert hashlib.sha256(key.encode()).hexdigest().encode() in dump


async def test_revoked_key_is_refused(client: Client, redis: Redis) -> None:
    store = client.app[API_KEYS]
    key = await store.create("acme")
    assert (await client.get(V1, headers={"X-API-Key": key})).status == 200
    await store.revoke(key[: auth.PREFIX_LEN])
    response = await client.get(V1, headers={"X-API-Key": key})
    assert response.status == 401


async def test_revoked_key_stops_working_in_other_processes_after_cache_ttl(redis: Redis) -> None:
    reader, writer = auth.ApiKeyStore(redis), auth.ApiKeyStore(redis)
    key = await writer.create("acme")
    assert await reader.lookup(key) is not None
    await writer.revoke(key[:10])
    _age(reader, key, auth.CACHE_TTL_S)
    assert await reader.lookup(key) is None


def _age(store: auth.ApiKeyStore, key: str, seconds: float) -> None:
    """Make the cached look-up of ``key`` ``seconds`` older."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    refresh_at, expires_at, identity = store._cache[digest]
    store._cache[digest] = (refresh_at - seconds, expires_at - seconds, identity)


async def test_a_key_in_use_is_read_again_in_the_background_before_its_look_up_expires(redis: Redis) -> None:
    reader, writer = auth.ApiKeyStore(redis), auth.ApiKeyStore(redis)
    key = await writer.create("acme")
    identity = await reader.lookup(key)
    assert identity is not None
    await writer.revoke(key[:10])  # announced, but the reader does not follow revocations
    _age(reader, key, auth.REFRESH_AFTER_S)
    assert reader.cached(key) == identity  # answered at once from the cache, still within its expiry
    await asyncio.wait_for(_refreshed(reader), 5)
    assert reader.cached(key) is None  # the background read found it gone
    await reader.close()


async def _refreshed(store: auth.ApiKeyStore) -> None:
    """Once the background reads in flight have ended (and their done callbacks, registered first, have run)."""
    if store._refreshing:
        await asyncio.wait(list(store._refreshing.values()))


async def test_a_refreshed_look_up_renews_its_expiry_and_a_revocation_during_the_read_is_not_undone(
    redis: Redis,
) -> None:
    store = auth.ApiKeyStore(redis)
    key = await store.create("acme")
    await store.lookup(key)
    _age(store, key, auth.REFRESH_AFTER_S + 1)
    store.cached(key)
    await _refreshed(store)
    digest = hashlib.sha256(key.encode()).hexdigest()
    refresh_at, expires_at, _ = store._cache[digest]
    assert refresh_at > time.monotonic() + auth.REFRESH_AFTER_S - auth.REFRESH_SPREAD_S - 1
    assert expires_at > refresh_at

    _age(store, key, auth.REFRESH_AFTER_S + 1)
    store.cached(key)
    await asyncio.sleep(0)  # the read is sent; a revocation overtakes its answer
    store.forget(digest)
    await _refreshed(store)
    assert digest not in store._cache  # what Redis answered before the revocation is not cached


async def test_keys_first_read_together_are_read_again_at_spread_times(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    keys = [await store.create(f"tenant-{n}") for n in range(50)]
    started = time.monotonic()
    await asyncio.gather(*(store.lookup(key) for key in keys))

    refresh_in_s = sorted(refresh_at - started for refresh_at, _, _ in store._cache.values())

    assert len(refresh_in_s) == 50
    assert refresh_in_s[0] >= auth.REFRESH_AFTER_S - auth.REFRESH_SPREAD_S
    assert refresh_in_s[-1] <= auth.REFRESH_AFTER_S + 1
    assert refresh_in_s[-1] - refresh_in_s[0] > auth.REFRESH_SPREAD_S / 2  # not one burst of reads every 7 s


async def test_closing_the_store_stops_its_refreshes(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    key = await store.create("acme")
    await store.lookup(key)
    _age(store, key, auth.REFRESH_AFTER_S)
    store.cached(key)
    (task,) = store._refreshing.values()
    await store.close()
    assert task.done()
    assert not store._refreshing


async def test_revoke_needs_an_unambiguous_prefix(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    await store.create("a")
    await store.create("b")
    with pytest.raises(LookupError, match="give more of the prefix"):
        await store.revoke("otto_")
    with pytest.raises(LookupError, match="no key starts with"):
        await store.revoke("otto_zzzz")


@pytest.mark.parametrize(
    "tenant",
    [
        "",
        "has spaces",
        "\uff41\uff43\uff4d\uff45",
        "\u0430cme",
        "Acme",
        "-acme",
        "_acme",
        "acme.corp",
        "a" * 64,
        "acme\n",
    ],
    ids=[
        "empty",
        "space",
        "fullwidth",
        "cyrillic-a",
        "uppercase",
        "leading-dash",
        "leading-underscore",
        "dot",
        "64",
        "newline",
    ],
)
async def test_tenant_names_outside_lowercase_ascii_are_refused(redis: Redis, tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant must be"):
        await auth.ApiKeyStore(redis).create(tenant)


async def test_tenant_names_of_lowercase_ascii_letters_digits_dash_and_underscore_are_accepted(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    for tenant in ("acme", "a", "0", "acme-corp_2", "a" * 63):
        key = await store.create(tenant)
        assert (await store.lookup(key)) == auth.Identity(tenant, "default", key[: auth.PREFIX_LEN])


async def test_plan_names_are_validated(redis: Redis) -> None:
    with pytest.raises(ValueError, match="plan must be"):
        await auth.ApiKeyStore(redis).create("acme", "")
    with pytest.raises(ValueError, match="plan must be"):
        await auth.ApiKeyStore(redis).create("acme", "\uff50\uff52\uff4f")


async def test_authorization_header_that_is_not_a_bearer_key_is_401_even_with_a_valid_x_api_key(
    client: Client, api_key: str
) -> None:
    for authorization in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", api_key, "Token " + api_key):
        response = await client.get(V1, headers={"Authorization": authorization, "X-API-Key": api_key})
        assert response.status == 401, authorization
        assert (await response.json())["detail"].startswith("API key is not valid")
    accepted = await client.get(V1, headers={"Authorization": f"bearer  {api_key}", "X-API-Key": "otto_other"})
    assert accepted.status == 200  # a valid Bearer key wins; the scheme is case-insensitive


async def test_revoke_takes_the_whole_key_or_a_prefix(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    by_key, by_prefix = await store.create("a"), await store.create("b")

    revoked = [await store.revoke(by_key), await store.revoke(by_prefix[: auth.PREFIX_LEN - 2])]

    assert [info.prefix for info in revoked] == [by_key[: auth.PREFIX_LEN], by_prefix[: auth.PREFIX_LEN]]
    assert [await store.lookup(key) for key in (by_key, by_prefix)] == [None, None]


async def test_revoke_errors_show_at_most_a_prefix(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    unknown = "otto_" + "ab" * 24
    for argument in (unknown, unknown[:-1], "not-a-key-" + "ab" * 24):
        with pytest.raises(LookupError) as raised:
            await store.revoke(argument)
        assert argument[auth.PREFIX_LEN :] not in str(raised.value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "service", "keys", *args, env={"REDIS_URL": redis_url(), "LOG_FORMAT": "console"})


async def test_keys_cli_creates_lists_and_revokes(client: Client) -> None:
    created = _cli("create", "--tenant", "acme", "--plan", "pro")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1
    key = lines[0]
    assert key.startswith("otto_")
    assert (await client.get(V1, headers={"Authorization": f"Bearer {key}"})).status == 200

    listed = _cli("list")
    assert listed.returncode == 0
    assert key[: auth.PREFIX_LEN] in listed.stdout
    assert key not in listed.stdout
    assert "acme" in listed.stdout
    assert "pro" in listed.stdout

    revoked = _cli("revoke", key[: auth.PREFIX_LEN])
    assert revoked.returncode == 0, revoked.stderr
    assert key[: auth.PREFIX_LEN] not in _cli("list").stdout
    missing = _cli("revoke", key[: auth.PREFIX_LEN])
    assert missing.returncode == 1
    assert "no key starts with" in missing.stderr


def test_keys_cli_with_bad_tenant_exits_2() -> None:
    for tenant in ("bad tenant!", "\uff41\uff43\uff4d\uff45"):
        result = _cli("create", "--tenant", tenant)
        assert result.returncode == 2
        assert "tenant must be" in result.stderr


async def test_keys_cli_revokes_by_whole_key_and_never_prints_it(client: Client) -> None:
    key = await client.app[API_KEYS].create("acme")

    revoked = _cli("revoke", key)
    again = _cli("revoke", key)

    assert revoked.returncode == 0, revoked.stderr
    assert again.returncode == 1
    assert "no key starts with" in again.stderr
    for result in (revoked, again):
        assert key not in result.stdout + result.stderr
        assert key[auth.PREFIX_LEN :] not in result.stdout + result.stderr
    assert (await client.get(V1, headers={"X-API-Key": key})).status == 401


Listen = Callable[[str, auth.ApiKeyStore], Awaitable[asyncio.Task[None]]]


@pytest.fixture
async def listening() -> AsyncIterator[Listen]:
    """Start ``follow_revocations`` for a store on a client of its own; wait until it is subscribed; stop it."""
    started: list[tuple[asyncio.Task[None], Redis]] = []

    async def start(url: str, store: auth.ApiKeyStore) -> asyncio.Task[None]:
        subscriber = Redis.from_url(url)
        task = asyncio.create_task(auth.follow_revocations(subscriber, store))
        started.append((task, subscriber))
        await wait_for_subscribers(subscriber, 1)
        return task

    yield start
    for task, subscriber in started:
        await cancel_until_done(task)
        await subscriber.aclose()


async def wait_for_subscribers(redis: Redis, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            [(_, subscribers)] = await redis.pubsub_numsub(auth.REVOCATIONS_CHANNEL)
            if subscribers >= count:
                return
        except ConnectionError:
            pass  # the server is coming back
        assert time.monotonic() < deadline, f"fewer than {count} revocation subscribers after {timeout_s} s"
        await asyncio.sleep(0.02)


async def forgotten_within(store: auth.ApiKeyStore, key: str, timeout_s: float) -> bool:
    """Whether the store's cached look-up of ``key`` goes within ``timeout_s`` (it would otherwise last 10 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            store.cached(key)
        except KeyError:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_revocation_reaches_a_listening_store_at_once(redis: Redis, listening: Listen) -> None:
    reader, writer = auth.ApiKeyStore(redis), auth.ApiKeyStore(redis)
    await listening(redis_url(), reader)
    key = await writer.create("acme")
    assert await reader.lookup(key) is not None  # cached for 10 s from now

    await writer.revoke(key)

    assert await forgotten_within(reader, key, 1.0)
    assert await reader.lookup(key) is None


async def test_revocations_are_received_again_after_redis_restarts(listening: Listen) -> None:
    server = new_redis_server()
    client = Redis.from_url(server.url)
    try:
        reader, writer = auth.ApiKeyStore(client), auth.ApiKeyStore(client)
        await listening(server.url, reader)
        server.restart()
        await wait_for_subscribers(client, 1)
        key = await writer.create("acme")
        assert await reader.lookup(key) is not None

        await writer.revoke(key)

        assert await forgotten_within(reader, key, 1.0)
    finally:
        await client.aclose()
        server.stop()


async def test_a_listener_on_a_hung_redis_does_not_hold_up_cancellation(listening: Listen) -> None:
    server = new_redis_server()
    client = Redis.from_url(server.url)
    try:
        task = await listening(server.url, auth.ApiKeyStore(client))
        server.pause()
        await asyncio.wait_for(cancel_until_done(task), timeout=5.0)
    finally:
        server.resume()
        await client.aclose()
        server.stop()


async def test_internal_routes_are_open_from_loopback_only(client: Client) -> None:
    assert (await client.get("/metrics")).status == 200
    # The test client connects over loopback; a proxied request is not loopback's.
    response = await client.get("/metrics", headers={"Fly-Client-IP": "203.0.113.9"})
    assert response.status == 403
    assert response.content_type == "application/problem+json"


async def test_a_listener_cancelled_at_any_moment_of_its_start_ends(redis: Redis) -> None:
    # A cancellation that lands in redis-py's check of a pooled connection is swallowed on
    # Python 3.11 (see cancel_until_done): a single cancel() once left the listener, and
    # with it the web process's shutdown, waiting for ever.
    for delay_ms in range(60):
        subscriber = redis_client(make_settings(), retries=0)  # as the web process makes it
        task = asyncio.create_task(auth.follow_revocations(subscriber, auth.ApiKeyStore(redis)))
        await asyncio.sleep(delay_ms / 2000)
        await asyncio.wait_for(cancel_until_done(task), timeout=2.0)
        await subscriber.aclose()

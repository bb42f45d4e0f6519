"""API keys: stored as digests, required on /v1/, managed from the command line."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from service import auth
from service.app_keys import API_KEYS
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.servers import redis_url

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
    cached_digest = hashlib.sha256(key.encode()).hexdigest()
    expires, _ = reader._cache[cached_digest]
    reader._cache[cached_digest] = (expires - auth.CACHE_TTL_S, reader._cache[cached_digest][1])
    assert await reader.lookup(key) is None


async def test_revoke_needs_an_unambiguous_prefix(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    await store.create("a")
    await store.create("b")
    with pytest.raises(LookupError, match="give more of the prefix"):
        await store.revoke("otto_")
    with pytest.raises(LookupError, match="no key starts with"):
        await store.revoke("otto_zzzz")


async def test_tenant_and_plan_names_are_validated(redis: Redis) -> None:
    store = auth.ApiKeyStore(redis)
    with pytest.raises(ValueError, match="tenant"):
        await store.create("has spaces")
    with pytest.raises(ValueError, match="plan"):
        await store.create("acme", "")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "service", "keys", *args],
        cwd=ROOT,
        env=subprocess_env(REDIS_URL=redis_url(), LOG_FORMAT="console"),
        capture_output=True,
        text=True,
        timeout=30,
    )


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
    result = _cli("create", "--tenant", "bad tenant!")
    assert result.returncode == 2
    assert "tenant" in result.stderr


async def test_internal_routes_are_open_from_loopback_only(client: Client) -> None:
    assert (await client.get("/metrics")).status == 200
    # The test client connects over loopback; a proxied request is not loopback's.
    response = await client.get("/metrics", headers={"Fly-Client-IP": "203.0.113.9"})
    assert response.status == 403
    assert response.content_type == "application/problem+json"

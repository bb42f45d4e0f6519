"""Where webhooks may go: host-only entries, non-public addresses, and errors that hide port state."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from redis.asyncio import Redis

from jobs import webhook_tenants
from jobs.destinations import DestinationRefused, check_destination, is_public, outside_fence
from jobs.registry import RetryLater
from jobs.webhook import deliver, sign
from service.settings import Settings
from tests.jobs.support import jobs_settings
from tests.servers import free_port

MASTER = "whsec-master-0123456789"


def test_signature_covers_tenant_timestamp_and_body_once_per_secret() -> None:
    signed = b'acme.1700000000.{"a":1}'
    first = hmac.new(b"whsec_one", signed, hashlib.sha256).hexdigest()
    second = hmac.new(b"whsec_two", signed, hashlib.sha256).hexdigest()
    header = sign(["whsec_one", "whsec_two"], "acme", 1700000000, b'{"a":1}')
    assert header == f"t=1700000000,v1={first},v1={second}"


def test_tenant_secrets_differ_by_tenant_and_generation_and_need_the_master_key() -> None:
    acme = webhook_tenants.derive_secret(MASTER, "acme", "g1")
    assert acme.startswith("whsec_")
    assert acme != webhook_tenants.derive_secret(MASTER, "globex", "g1")
    assert acme != webhook_tenants.derive_secret(MASTER, "acme", "g2")
    assert acme != webhook_tenants.derive_secret("another-master-key", "acme", "g1")


async def test_secrets_are_not_stored_in_redis(redis: Redis) -> None:
    secret, _ = await webhook_tenants.rotate_secret(redis, "acme", MASTER)
    dump = [await redis.hgetall(key) for key in await redis.keys("*")]  # type: ignore[misc]
    assert secret.removeprefix("whsec_") not in repr(dump)


@pytest.mark.parametrize(
    ("url", "entries"),
    [
        ("http://127.0.0.1:8081/x", ("127.0.0.1:8081",)),
        ("https://10.0.0.5/x", ("10.0.0.5",)),
        ("http://10.0.0.5/x", ("10.0.0.5",)),
        ("http://[::1]:9000/x", ("[::1]:9000",)),
    ],
)
async def test_private_address_listed_explicitly_is_allowed(url: str, entries: tuple[str, ...]) -> None:
    _, addresses = await check_destination(url, fence=entries, receivers=entries, tenant="acme")
    assert addresses


@pytest.mark.parametrize(
    ("url", "fence", "receivers"),
    [
        ("http://127.0.0.1:8082/x", ("127.0.0.1:8081",), ("127.0.0.1:8081",)),  # other port
        ("http://10.0.0.6/x", ("10.0.0.5",), ("10.0.0.5",)),  # other address
        ("http://hooks.example.com/x", (), ("hooks.example.com",)),  # outside the fence
        ("http://hooks.example.com/x", ("hooks.example.com",), ()),  # not the tenant's
        ("http://[::ffff:127.0.0.1]:80/x", ("[::ffff:127.0.0.2]:80",), ("[::ffff:127.0.0.2]:80",)),
        ("file:///etc/passwd", ("127.0.0.1",), ("127.0.0.1",)),
        ("http://127.0.0.1:99999/x", ("127.0.0.1",), ("127.0.0.1",)),  # yarl's ValueError
    ],
)
async def test_destination_not_listed_in_both_lists_is_refused(
    url: str, fence: tuple[str, ...], receivers: tuple[str, ...]
) -> None:
    with pytest.raises(DestinationRefused):
        await check_destination(url, fence=fence, receivers=receivers, tenant="acme")


@pytest.mark.parametrize("port", [22, 6379, 8080, 5432])
async def test_host_only_entry_allows_the_web_ports_only(port: int) -> None:
    entries = ("10.0.0.5",)
    with pytest.raises(DestinationRefused, match="not among the webhook receivers"):
        await check_destination(f"http://10.0.0.5:{port}/x", fence=entries, receivers=entries, tenant="acme")
    for url in ("http://10.0.0.5/x", "https://10.0.0.5/x", "http://10.0.0.5:443/x"):
        assert await check_destination(url, fence=entries, receivers=entries, tenant="acme")


def test_a_host_only_fence_entry_covers_host_only_receivers_and_web_ports_only() -> None:
    fence = ("hooks.example.com", "10.0.0.5:8443")
    assert outside_fence(("hooks.example.com", "hooks.example.com:443", "10.0.0.5:8443"), fence) == []
    assert outside_fence(("hooks.example.com:8080", "10.0.0.5"), fence) == ["hooks.example.com:8080", "10.0.0.5"]


TRANSITION_ADDRESSES = [
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:5",  # NAT64 of 10.0.0.5
    "64:ff9b:1::a00:5",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:5db8:d822::1",  # 6to4 of a public address: still a tunnel to somewhere else
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "fec0::1",  # site-local
    "::ffff:10.0.0.5",  # IPv4-mapped private
    "100.64.0.1",  # shared address space (CGNAT)
    "169.254.169.254",  # link-local (cloud metadata)
    "fe80::1",
    "fd00::1",
    "224.0.0.1",
    "ff02::1",
    "0.0.0.0",
]


@pytest.mark.parametrize("address", TRANSITION_ADDRESSES)
def test_transition_and_other_non_global_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"])
def test_ordinary_internet_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def _resolving_to(address: str) -> Callable[..., Coroutine[Any, Any, list[Any]]]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    return getaddrinfo


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"])
async def test_listed_name_resolving_to_nat64_6to4_or_teredo_is_refused(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", _resolving_to(address))
    entries = ("hooks.example.com",)
    with pytest.raises(DestinationRefused, match="not a public address"):
        await check_destination("https://hooks.example.com/x", fence=entries, receivers=entries, tenant="acme")
    # ... unless that very address is listed in both lists.
    bracketed = f"[{address}]:443"
    listed = (*entries, bracketed)
    assert await check_destination("https://hooks.example.com/x", fence=listed, receivers=listed, tenant="acme")


# -- port state -------------------------------------------------------------------------------


async def _reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    writer.close()


async def _say_something_else(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"-ERR unknown command\r\n")  # a Redis, say
    await writer.drain()
    writer.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up and closes
    writer.close()


@pytest.fixture
async def port_settings(redis: Redis) -> tuple[Settings, int]:
    port = free_port()
    entry = f"127.0.0.1:{port}"
    await webhook_tenants.rotate_secret(redis, "acme", MASTER)
    await webhook_tenants.set_receivers(redis, "acme", (entry,))
    return jobs_settings(WEBHOOK_ALLOWED_HOSTS=entry, WEBHOOK_SECRET=MASTER), port


async def _error_of_delivery(redis: Redis, settings: Settings, port: int) -> str:
    with pytest.raises(RetryLater) as caught:
        await deliver(
            f"http://127.0.0.1:{port}/hook",
            {},
            job_id="j1",
            tenant="acme",
            settings=settings,
            redis=redis,
            timeout_s=0.5,
        )
    return str(caught.value)


async def test_delivery_errors_read_the_same_whatever_the_port_does(
    redis: Redis, port_settings: tuple[Settings, int]
) -> None:
    settings, port = port_settings
    errors = {"closed": await _error_of_delivery(redis, settings, port)}
    for name, behaviour in (("reset", _reset_at_once), ("not-http", _say_something_else), ("silent", _never_answer)):
        server = await asyncio.start_server(behaviour, "127.0.0.1", port)
        try:
            errors[name] = await _error_of_delivery(redis, settings, port)
        finally:
            server.close()
            await server.wait_closed()

    assert set(errors.values()) == {f"127.0.0.1:{port} gave no HTTP answer"}, errors

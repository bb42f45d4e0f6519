"""``webhook.deliver``: POST a JSON payload, signed, to a host the deployment allows.

Rules, checked at enqueue and again at delivery:

- the URL is ``http`` or ``https`` and its host (or ``host:port``) is listed in
  ``WEBHOOK_ALLOWED_HOSTS``;
- every address the host resolves to is public, unless that very address is listed
  (``127.0.0.1:8081``, ``10.0.0.5``): a listed *name* that resolves to a loopback,
  private, link-local or reserved address is refused, which is what a DNS-rebinding
  attack looks like;
- the connection goes to the addresses that passed the check (the resolver is pinned,
  so DNS cannot change between the check and the connect), and redirects are not
  followed.

The request carries ``Webhook-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 with ``WEBHOOK_SECRET`` over ``"<t>." + body``; receivers recompute it and
reject old timestamps. Timeouts, connection errors, 5xx and 429 are retried (429 and 503
after their ``Retry-After``); any other answer outside 2xx fails the job at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from jobs.registry import InvalidArguments, PermanentError, RetryLater
from service.settings import Settings

__all__ = ["DestinationRefused", "check_destination", "deliver", "sign"]

REQUEST_TIMEOUT_S = 10.0
RETRY_AFTER_MAX_S = 3600.0
USER_AGENT = "ottoai-webhooks/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(PermanentError):
    """The URL's host is not allowed, or resolves to an address that is not."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Webhook-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _listed(host: str, port: int, allowed: tuple[str, ...]) -> bool:
    bracketed = f"[{host}]" if ":" in host else host
    return host in allowed or f"{bracketed}:{port}" in allowed


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _parse(url: str) -> tuple[URL, str, int]:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DestinationRefused(f"only http and https URLs with a host can be called, got {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed, parsed.host.lower().rstrip("."), port


async def _resolve(host: str, port: int, allowed: tuple[str, ...]) -> list[tuple[int, IPAddress]]:
    """The checked addresses of ``host`` as (family, address); ``DestinationRefused`` if any is not allowed."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RetryLater(f"cannot resolve {host}: {exc}") from None
    addresses: list[tuple[int, IPAddress]] = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not _is_public(address) and not _listed(str(address), port, allowed):
            raise DestinationRefused(
                f"{host} resolves to {address}, which is not a public address; "
                "list that address in WEBHOOK_ALLOWED_HOSTS to allow it"
            )
        addresses.append((family, address))
    if not addresses:
        raise RetryLater(f"{host} has no address")
    return addresses


async def check_destination(url: str, allowed: tuple[str, ...]) -> list[tuple[int, IPAddress]]:
    """Check ``url`` against the rules above and return the addresses it may be reached at."""
    _, host, port = _parse(url)
    if not _listed(host, port, allowed):
        raise DestinationRefused(f"{host}:{port} is not listed in WEBHOOK_ALLOWED_HOSTS")
    return await _resolve(host, port, allowed)


async def check_args(args: dict[str, Any], settings: Settings) -> None:
    """The enqueue-time check of ``webhook.deliver`` (a registry ``check``)."""
    if settings.webhook_secret is None:
        raise InvalidArguments({"url": ["webhook delivery is not configured: WEBHOOK_SECRET is not set"]})
    try:
        await check_destination(args["url"], settings.webhook_allowed_hosts)
    except DestinationRefused as exc:
        raise InvalidArguments({"url": [str(exc)]}) from None
    except RetryLater as exc:
        raise InvalidArguments({"url": [str(exc)]}) from None


class _PinnedResolver(AbstractResolver):
    """Answers only for ``host``, with the addresses that passed the check."""

    def __init__(self, host: str, addresses: list[tuple[int, IPAddress]]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self._host:
            raise OSError(f"refusing to resolve {host}")
        return [
            ResolveResult(hostname=host, host=str(address), port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)
            for fam, address in self._addresses
        ]

    async def close(self) -> None:
        return None


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), RETRY_AFTER_MAX_S)


async def deliver(
    url: str, payload: Any, *, job_id: str, secret: str, allowed: tuple[str, ...], timeout_s: float = REQUEST_TIMEOUT_S
) -> dict[str, Any]:
    """POST ``payload`` to ``url``; return ``{"status": code}`` on 2xx, raise otherwise."""
    _, host, _ = _parse(url)
    addresses = await check_destination(url, allowed)
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Webhook-Id": job_id,
        "Webhook-Signature": sign(secret, timestamp, body),
    }
    connector = aiohttp.TCPConnector(resolver=_PinnedResolver(host, addresses), use_dns_cache=False, force_close=True)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, data=body, headers=headers, allow_redirects=False) as response,
        ):
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryLater(f"{host}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if 200 <= status < 300:
        return {"status": status}
    if status == 429 or status >= 500:
        raise RetryLater(f"{host} answered HTTP {status}", _retry_after_s(retry_after))
    raise PermanentError(f"{host} answered HTTP {status}; not retried")

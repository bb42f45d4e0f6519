"""``webhook.deliver``: POST a JSON payload, signed with the calling tenant's secret, to one of its receivers.

Checked at enqueue and again at delivery (``jobs.destinations``): the URL is ``http`` or
``https``, its host and port are among the tenant's receivers *and* inside
``WEBHOOK_ALLOWED_HOSTS``, and every address it resolves to is public unless listed
itself. The connection goes to the addresses that passed the check (the resolver is
pinned, so DNS cannot change between the check and the connect), and redirects are not
followed.

The request carries ``Webhook-Tenant: <tenant>`` and
``Webhook-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is HMAC-SHA256 under the
tenant's secret (``jobs.webhook_tenants``) over ``"<tenant>.<t>." + body``; during a
secret rotation's overlap window a second ``v1=`` carries the previous secret's
signature. Receivers recompute it with their own tenant name and secret, accept any
``v1`` that matches, and reject old timestamps: a delivery signed for another tenant
never matches.

Timeouts, connection failures, 5xx and 429 are retried (429 and 503 after their
``Retry-After``); any other answer outside 2xx fails the job at once. Every failure to
get an HTTP answer (refused, reset, timed out, not HTTP) reads the same in the job's
error, so jobs cannot be used to learn which ports of a receiver are open.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from redis.asyncio import Redis

from jobs import webhook_tenants
from jobs.destinations import DestinationRefused, IPAddress, check_destination
from jobs.registry import EnqueueContext, InvalidArguments, PermanentError, RetryLater
from jobs.serialization import to_json
from service.logging import get_logger
from service.settings import Settings

__all__ = ["check_args", "deliver", "sign"]

REQUEST_TIMEOUT_S = 10.0
RETRY_AFTER_MAX_S = 3600.0
USER_AGENT = "ottoai-webhooks/1"

log = get_logger(__name__)


def sign(secrets: list[str], tenant: str, timestamp: int, body: bytes) -> str:
    """The ``Webhook-Signature`` value for ``body`` sent for ``tenant`` at ``timestamp``: one ``v1`` per secret."""
    signed = f"{tenant}.{timestamp}.".encode() + body
    digests = [hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest() for secret in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={digest}" for digest in digests)])


def _no_secret(tenant: str) -> str:
    return (
        f"no webhook signing secret is set up for tenant {tenant!r} "
        f"(the operator runs: python -m service webhooks secret --tenant {tenant})"
    )


async def check_args(args: dict[str, Any], context: EnqueueContext) -> None:
    """The enqueue-time check of ``webhook.deliver`` (a registry ``check``)."""
    if context.settings.webhook_secret is None:
        raise InvalidArguments({"url": ["webhook delivery is not configured: WEBHOOK_SECRET is not set"]})
    tenant = await webhook_tenants.load(context.redis, context.tenant)
    if tenant.generation is None:
        raise InvalidArguments({"url": [_no_secret(context.tenant)]})
    try:
        await check_destination(
            args["url"],
            fence=context.settings.webhook_allowed_hosts,
            receivers=tenant.receivers,
            tenant=context.tenant,
        )
    except (DestinationRefused, RetryLater) as exc:
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
    url: str,
    payload: Any,
    *,
    job_id: str,
    tenant: str,
    settings: Settings,
    redis: Redis,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> dict[str, Any]:
    """POST ``payload`` to ``url`` for ``tenant``; return ``{"status": code}`` on 2xx, raise otherwise."""
    if settings.webhook_secret is None:
        raise PermanentError("WEBHOOK_SECRET is not set")
    config = await webhook_tenants.load(redis, tenant)
    secrets = config.signing_secrets(settings.webhook_secret)
    if not secrets:
        raise PermanentError(_no_secret(tenant))
    destination, addresses = await check_destination(
        url, fence=settings.webhook_allowed_hosts, receivers=config.receivers, tenant=tenant
    )
    try:
        body = to_json(payload)
    except (TypeError, ValueError) as exc:  # stored before NaN and Infinity were refused at enqueue
        raise PermanentError(f"the payload is not JSON: {exc}") from None
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Webhook-Id": job_id,
        "Webhook-Tenant": tenant,
        "Webhook-Signature": sign(secrets, tenant, timestamp, body),
    }
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(destination.host, addresses), use_dns_cache=False, force_close=True
    )
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, data=body, headers=headers, allow_redirects=False) as response,
        ):
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # The operator's log may say what happened; the tenant's job error must not (port state).
        log.info("webhook got no HTTP answer", destination=str(destination), error=type(exc).__name__)
        raise RetryLater(f"{destination} gave no HTTP answer") from None
    if 200 <= status < 300:
        return {"status": status}
    if status == 429 or status >= 500:
        raise RetryLater(f"{destination} answered HTTP {status}", _retry_after_s(retry_after))
    raise PermanentError(f"{destination} answered HTTP {status}; not retried")

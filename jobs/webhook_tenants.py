"""Each tenant's webhook settings: its signing secrets and its receivers.

Secrets are never stored. A tenant's secret is derived from the deployment's
``WEBHOOK_SECRET`` and a random *generation* kept in Redis:

    secret = "whsec_" + hex(HMAC-SHA256(WEBHOOK_SECRET, "<tenant>:<generation>"))

so a copy of Redis alone reveals no secret, and a tenant's secret cannot sign for another
tenant. ``python -m service webhooks secret --tenant T`` makes a new generation and
prints the secret once. When the tenant had one, that one becomes the *previous*
generation and stays valid for an overlap window (``ROTATION_OVERLAP_S``, 24 h, unless
the command says otherwise; 0 after a leak): deliveries during the window carry two
``v1=`` signatures, one per secret, so receivers can switch without dropping events.
Changing ``WEBHOOK_SECRET`` itself changes every tenant's secret at once.

Receivers (``webhooks hosts --tenant T HOST...``) are ``host`` or ``host:port`` entries,
validated like ``WEBHOOK_ALLOWED_HOSTS``, which stays the outer fence
(``jobs.destinations``).

Redis: ``jobs:webhooks:<tenant>``, a hash of ``generation``, ``previous``,
``previous_until_ms`` and ``receivers`` (comma-separated).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from jobs.redis_keys import webhooks_key
from jobs.scripts import load_script

__all__ = ["ROTATION_OVERLAP_S", "TenantWebhooks", "derive_secret", "load", "rotate_secret", "set_receivers"]

ROTATION_OVERLAP_S = 86_400
SECRET_PREFIX = "whsec_"


def derive_secret(master: str, tenant: str, generation: str) -> str:
    """The signing secret of ``tenant``'s ``generation`` under the deployment's ``WEBHOOK_SECRET``."""
    digest = hmac.new(master.encode(), f"{tenant}:{generation}".encode(), hashlib.sha256).hexdigest()
    return SECRET_PREFIX + digest


@dataclass(frozen=True)
class TenantWebhooks:
    """What Redis holds for one tenant's webhooks."""

    tenant: str
    generation: str | None = None
    previous: str | None = None
    previous_until_ms: int = 0
    receivers: tuple[str, ...] = ()

    def signing_secrets(self, master: str, now_ms: int | None = None) -> list[str]:
        """The secrets to sign with now: the current one, then the previous one while its overlap lasts."""
        if self.generation is None:
            return []
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        found = [derive_secret(master, self.tenant, self.generation)]
        if self.previous is not None and self.previous_until_ms > now_ms:
            found.append(derive_secret(master, self.tenant, self.previous))
        return found


async def load(redis: Redis, tenant: str) -> TenantWebhooks:
    """The tenant's webhook settings (empty ones when it has none)."""
    fields: dict[bytes, bytes] = await redis.hgetall(webhooks_key(tenant))  # type: ignore[misc]
    receivers = fields.get(b"receivers", b"").decode()
    return TenantWebhooks(
        tenant=tenant,
        generation=fields[b"generation"].decode() if b"generation" in fields else None,
        previous=fields[b"previous"].decode() if b"previous" in fields else None,
        previous_until_ms=int(fields.get(b"previous_until_ms", b"0")),
        receivers=tuple(entry for entry in receivers.split(",") if entry),
    )


async def rotate_secret(
    redis: Redis, tenant: str, master: str, *, overlap_s: float = ROTATION_OVERLAP_S
) -> tuple[str, int]:
    """A new secret for ``tenant``, and until when (epoch ms) the previous one stays valid (0: none does)."""
    generation = secrets.token_hex(16)
    rotate = load_script(redis, "webhook_rotate")
    previous_until_ms = await rotate(
        keys=[webhooks_key(tenant)], args=[generation, int(time.time() * 1000), round(overlap_s * 1000)]
    )
    return derive_secret(master, tenant, generation), int(previous_until_ms)


async def set_receivers(redis: Redis, tenant: str, receivers: tuple[str, ...]) -> None:
    """Replace the tenant's receivers (already validated ``host`` or ``host:port`` entries)."""
    await redis.hset(webhooks_key(tenant), "receivers", ",".join(receivers))  # type: ignore[misc]

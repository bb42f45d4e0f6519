"""API keys, the caller of a request, and the loopback-or-token rule of internal routes.

A key is shown once at creation; Redis keeps only its SHA-256 digest:

- ``apikey:<sha256 hex>``: hash ``tenant``, ``plan``, ``prefix``, ``created_at``
- ``apikeys``: hash ``prefix`` → digest, for ``keys list`` and ``keys revoke``

Look-ups are cached in the process for ``CACHE_TTL_S`` so that a busy API does not pay a
Redis round trip per request; a revoked key therefore stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from aiohttp import web
from redis.asyncio import Redis

from service.errors import Problem

__all__ = [
    "ApiKeyStore",
    "Identity",
    "address_caller",
    "client_address",
    "key_required",
    "presented_key",
    "require_internal",
]

KEY_PREFIX = "otto_"
PREFIX_LEN = len(KEY_PREFIX) + 8
CACHE_TTL_S = 10.0
NEGATIVE_CACHE_TTL_S = 2.0
_CACHE_MAX = 10_000
_INDEX = "apikeys"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid API key belongs to."""

    tenant: str
    plan: str
    key_prefix: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    prefix: str
    tenant: str
    plan: str
    created_at: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _validate_name(what: str, value: str) -> str:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(f"{what} must be 1 to 64 letters, digits, '-', '_' or '.', got {value!r}")
    return value


class ApiKeyStore:
    """Create, look up, list and revoke API keys in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._cache: dict[str, tuple[float, Identity | None]] = {}

    async def create(self, tenant: str, plan: str = "default") -> str:
        """Store a new key for ``tenant`` on ``plan`` and return it (the only time it is seen)."""
        _validate_name("tenant", tenant)
        _validate_name("plan", plan)
        while True:
            key = KEY_PREFIX + secrets.token_hex(24)
            prefix = key[:PREFIX_LEN]
            digest = _digest(key)
            if await self._redis.hsetnx(_INDEX, prefix, digest):  # type: ignore[misc]
                break
        created = datetime.now(UTC).isoformat(timespec="seconds")
        mapping = {"tenant": tenant, "plan": plan, "prefix": prefix, "created_at": created}
        await self._redis.hset(f"apikey:{digest}", mapping=mapping)  # type: ignore[misc]
        return key

    def cached(self, key: str) -> Identity | None:
        """What ``lookup`` would answer, from the process cache alone; ``KeyError`` when Redis must be asked.

        Most requests end here, and a plain call costs less than a coroutine.
        """
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        cached = self._cache.get(_digest(key))
        if cached is None or cached[0] <= time.monotonic():
            raise KeyError("not cached")
        return cached[1]

    async def lookup(self, key: str) -> Identity | None:
        """The identity of ``key``, or ``None`` when it is unknown or revoked."""
        try:
            return self.cached(key)
        except KeyError:
            pass
        digest = _digest(key)
        now = time.monotonic()
        fields = await self._redis.hgetall(f"apikey:{digest}")  # type: ignore[misc]
        identity = None
        if fields:
            identity = Identity(fields[b"tenant"].decode(), fields[b"plan"].decode(), fields[b"prefix"].decode())
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + (CACHE_TTL_S if identity else NEGATIVE_CACHE_TTL_S), identity)
        return identity

    async def list(self) -> list[KeyInfo]:
        """Every key's prefix, tenant, plan and creation time (never the key itself)."""
        index: dict[bytes, bytes] = await self._redis.hgetall(_INDEX)  # type: ignore[misc]
        ordered = sorted(index.items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, digest in ordered:
                pipe.hgetall(f"apikey:{digest.decode()}")
            records = await pipe.execute()
        return [
            KeyInfo(prefix.decode(), f[b"tenant"].decode(), f[b"plan"].decode(), f[b"created_at"].decode())
            for (prefix, _), f in zip(ordered, records, strict=True)
            if f
        ]

    async def revoke(self, prefix: str) -> KeyInfo:
        """Revoke the one key whose prefix starts with ``prefix``; ``LookupError`` otherwise."""
        index: dict[bytes, bytes] = await self._redis.hgetall(_INDEX)  # type: ignore[misc]
        matches = [p for p in index if p.decode().startswith(prefix)] if prefix else []
        if not matches:
            raise LookupError(f"no key starts with {prefix!r}")
        if len(matches) > 1:
            raise LookupError(f"{len(matches)} keys start with {prefix!r}; give more of the prefix")
        found = matches[0]
        digest = index[found].decode()
        fields = await self._redis.hgetall(f"apikey:{digest}")  # type: ignore[misc]
        async with self._redis.pipeline(transaction=True) as pipe:  # the key and its index entry go together
            pipe.delete(f"apikey:{digest}")
            pipe.hdel(_INDEX, found.decode())
            await pipe.execute()
        self._cache.pop(digest, None)
        return KeyInfo(
            found.decode(),
            fields.get(b"tenant", b"?").decode(),
            fields.get(b"plan", b"?").decode(),
            fields.get(b"created_at", b"?").decode(),
        )


def presented_key(request: web.Request) -> str | None:
    """The API key of the request, from ``Authorization: Bearer`` or ``X-API-Key``."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def client_address(request: web.Request, trust_proxy_headers: bool) -> str:
    """The caller's IP address; proxy headers count only when the deployment trusts them.

    Behind Fly's proxy, ``Fly-Client-IP`` is set by the proxy itself; failing that, the
    right-most ``X-Forwarded-For`` hop is the one the proxy added (the left ones are
    whatever the client sent).
    """
    if trust_proxy_headers:
        for candidate in (
            request.headers.get("Fly-Client-IP", ""),
            request.headers.get("X-Forwarded-For", "").rpartition(",")[2],
        ):
            try:
                return str(ipaddress.ip_address(candidate.strip()))
            except ValueError:
                continue
    return request.remote or "unknown"


@lru_cache(maxsize=4096)
def address_caller(address: str) -> str:
    """The rate-limit caller of a request without a valid key: its IPv4 address, or its IPv6 /64.

    One IPv6 client usually holds a whole /64 and can rotate through it at will.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"ip:{address}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"ip:{ip}"


def key_required(request: web.Request) -> Problem:
    """The 401 of a ``/v1/`` request without a valid key."""
    detail = "API key is not valid" if presented_key(request) else "API key required"
    return Problem(
        401,
        f"{detail}: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        type_="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="ottoai"'},
    )


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def require_internal(request: web.Request, token: str | None) -> None:
    """Open from loopback; elsewhere the bearer ``token`` is needed (403 when none is set)."""
    if _is_loopback(request) and "Fly-Client-IP" not in request.headers:
        return
    if token is None:
        raise Problem(403, "this route is only open from loopback unless its token is configured", type_="forbidden")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise Problem(
            401,
            "a valid bearer token is required",
            type_="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="ottoai-internal"'},
        )

"""API keys: created, looked up (cached), listed and revoked; revocations followed by every web process.

A key (``otto_`` and 48 hex digits) is shown once at creation; Redis keeps only its SHA-256 digest:

- ``apikey:<sha256 hex>``: hash ``tenant``, ``plan``, ``prefix``, ``created_at``
- ``apikeys``: hash ``prefix`` → digest, for ``keys list`` and ``keys revoke``
- ``apikeys:revoked``: the pub/sub channel on which a revocation announces the key's digest

Look-ups are cached in the process for ``CACHE_TTL_S`` so that a busy API does not pay a
Redis round trip per request. Every web process listens for revocations
(``follow_revocations``) and forgets a revoked key at once; the expiry is the fallback
for a revocation sent while a process was not listening. A key in use is read again in
the background once its look-up is ``REFRESH_AFTER_S`` old, so that its requests do not
wait on Redis each time the look-up expires; none is served from the cache past its expiry.
That age is spread over the ``REFRESH_SPREAD_S`` before it: keys first used together (a
deploy, a client starting many workers) are then not all read again in the same moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.backoff import Backoff
from service.logging import get_logger
from service.redis import cancel_until_done

__all__ = ["ApiKeyStore", "Identity", "follow_revocations", "validate_tenant"]

KEY_PREFIX = "otto_"
KEY_LEN = len(KEY_PREFIX) + 48
PREFIX_LEN = len(KEY_PREFIX) + 8
CACHE_TTL_S = 10.0
REFRESH_AFTER_S = 7.0
REFRESH_SPREAD_S = 2.0
NEGATIVE_CACHE_TTL_S = 2.0
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
PLAN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as a policy file names its plans
REVOCATIONS_CHANNEL = "apikeys:revoked"
_CACHE_MAX = 10_000
_INDEX = "apikeys"
_RESUBSCRIBE_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)
_LISTEN_WAKE_S = 60.0  # how often an idle subscription wakes to let redis-py's health check run

log = get_logger(__name__)


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


def _well_formed(key: str) -> bool:
    """Whether ``key`` has the shape of a key this store makes (checked before hashing: it may be any header text)."""
    return len(key) == KEY_LEN and key.startswith(KEY_PREFIX) and key.isascii()


def shown(key_or_prefix: str) -> str:
    """What of a key may be printed: at most its prefix (the part ``keys list`` shows)."""
    return key_or_prefix if len(key_or_prefix) <= PREFIX_LEN else key_or_prefix[:PREFIX_LEN] + "..."


def validate_tenant(tenant: str) -> str:
    """``tenant`` if it is a tenant name (``TENANT_NAME``); ``ValueError`` naming the rule otherwise."""
    if not TENANT_NAME.fullmatch(tenant):
        raise ValueError(
            f"tenant must be 1 to 63 lowercase ASCII letters, digits, '-' or '_', starting with a letter or"
            f" digit, got {tenant!r}"
        )
    return tenant


class ApiKeyStore:
    """Create, look up, list and revoke API keys in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # digest -> (read again after, expires at, identity), both in time.monotonic() seconds
        self._cache: dict[str, tuple[float, float, Identity | None]] = {}
        self._refreshing: dict[str, asyncio.Task[Identity | None]] = {}
        self._forgets = 0  # how many times a look-up was forgotten: a read that overlapped one is not cached

    async def close(self) -> None:
        """Stop the background refreshes in flight."""
        for task in list(self._refreshing.values()):
            await cancel_until_done(task)

    async def create(self, tenant: str, plan: str = "default") -> str:
        """Store a new key for ``tenant`` on ``plan`` and return it (the only time it is seen).

        Tenant names are ASCII, ``[a-z0-9][a-z0-9_-]{0,62}``: no look-alike letters, and
        safe inside a Redis hash tag. ``ValueError`` names what is wrong.
        """
        validate_tenant(tenant)
        if not PLAN_NAME.fullmatch(plan):
            raise ValueError(f"plan must be 1 to 64 ASCII letters, digits, '-', '_' or '.', got {plan!r}")
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
        if not _well_formed(key):
            return None
        return self._cached(_digest(key))

    async def lookup(self, key: str) -> Identity | None:
        """The identity of ``key``, or ``None`` when it is unknown or revoked."""
        if not _well_formed(key):
            return None
        digest = _digest(key)
        try:
            return self._cached(digest)
        except KeyError:
            return await self._read(digest)

    def _cached(self, digest: str) -> Identity | None:
        cached = self._cache.get(digest)
        if cached is None:
            raise KeyError("not cached")
        refresh_at, expires_at, identity = cached
        now = time.monotonic()
        if refresh_at <= now:
            if expires_at <= now:
                raise KeyError("expired")
            self._refresh(digest)
        return identity

    async def _read(self, digest: str) -> Identity | None:
        """The identity of the key with ``digest``, from Redis, into the cache (unless a revocation overlapped)."""
        now = time.monotonic()
        forgets = self._forgets
        fields = await self._redis.hgetall(f"apikey:{digest}")  # type: ignore[misc]
        identity = None
        if fields:
            identity = Identity(fields[b"tenant"].decode(), fields[b"plan"].decode(), fields[b"prefix"].decode())
        if forgets != self._forgets:  # a revocation arrived while Redis answered: the answer may predate it
            return identity
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        if identity:
            ttl_s, refresh_s = CACHE_TTL_S, REFRESH_AFTER_S - REFRESH_SPREAD_S * random.random()
        else:
            ttl_s = refresh_s = NEGATIVE_CACHE_TTL_S
        self._cache[digest] = (now + refresh_s, now + ttl_s, identity)
        return identity

    def _refresh(self, digest: str) -> None:
        """Read the key with ``digest`` again in the background, once at a time; a failure leaves the
        cached look-up to expire."""
        if digest not in self._refreshing:
            task = self._refreshing[digest] = asyncio.get_running_loop().create_task(self._read(digest))
            task.add_done_callback(lambda done: self._refreshed(digest, done))

    def _refreshed(self, digest: str, task: asyncio.Task[Identity | None]) -> None:
        del self._refreshing[digest]
        if not task.cancelled() and (error := task.exception()) is not None:
            log.debug("API key refresh failed; the cached look-up expires as usual", error=type(error).__name__)

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

    async def revoke(self, key_or_prefix: str) -> KeyInfo:
        """Revoke one key, named by the whole key or by (the start of) a prefix that only it has.

        ``LookupError`` when none or several match; its message shows at most a prefix.
        Every web process that listens (``follow_revocations``) forgets the key at once.
        """
        index: dict[bytes, bytes] = await self._redis.hgetall(_INDEX)  # type: ignore[misc]
        if _well_formed(key_or_prefix):
            digest = _digest(key_or_prefix)
            matches = [prefix for prefix, found in index.items() if found.decode() == digest]
        elif key_or_prefix.startswith(KEY_PREFIX) and len(key_or_prefix) <= PREFIX_LEN:
            matches = [prefix for prefix in index if prefix.decode().startswith(key_or_prefix)]
        else:
            raise LookupError(
                f"{shown(key_or_prefix)!r} is neither a whole key nor a key's prefix"
                f" ({KEY_PREFIX} and up to {PREFIX_LEN - len(KEY_PREFIX)} characters, as 'keys list' shows)"
            )
        if not matches:
            raise LookupError(f"no key starts with {shown(key_or_prefix)!r}")
        if len(matches) > 1:
            raise LookupError(f"{len(matches)} keys start with {shown(key_or_prefix)!r}; give more of the prefix")
        found = matches[0]
        digest = index[found].decode()
        fields = await self._redis.hgetall(f"apikey:{digest}")  # type: ignore[misc]
        async with self._redis.pipeline(transaction=True) as pipe:  # the key and its index entry go together
            pipe.delete(f"apikey:{digest}")
            pipe.hdel(_INDEX, found.decode())
            pipe.publish(REVOCATIONS_CHANNEL, digest)
            await pipe.execute()
        self.forget(digest)
        return KeyInfo(
            found.decode(),
            fields.get(b"tenant", b"?").decode(),
            fields.get(b"plan", b"?").decode(),
            fields.get(b"created_at", b"?").decode(),
        )

    def forget(self, digest: str) -> None:
        """Drop the cached look-up of the key with this digest (it was revoked)."""
        self._forgets += 1
        self._cache.pop(digest, None)

    def forget_all(self) -> None:
        """Drop every cached look-up (revocations may have been missed)."""
        self._forgets += 1
        self._cache.clear()


async def follow_revocations(redis: Redis, store: ApiKeyStore) -> None:
    """Forget each key that any process revokes, as the revocation is announced; runs until cancelled.

    A revocation announced while this process was not subscribed (Redis restarting, say)
    is missed, so every (re)subscription starts by forgetting every cached look-up. A lost
    connection is retried with backoff; cancelling ends it at once.
    """
    attempt = 0
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(REVOCATIONS_CHANNEL)
                store.forget_all()
                if attempt:
                    log.info("listening for key revocations again")
                attempt = 0
                while True:
                    message = await pubsub.get_message(timeout=_LISTEN_WAKE_S)
                    if message is not None and message["type"] == "message":
                        store.forget(message["data"].decode())
        except (RedisError, OSError) as exc:
            attempt += 1
            if attempt == 1:
                log.warning("key revocations are not being received; retrying", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(_RESUBSCRIBE_BACKOFF.delay_s(attempt))

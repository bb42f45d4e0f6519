"""How close tenants come to their rate limits, and the 429s per minute: for the dashboard, fleet-wide.

Each web process counts as it decides requests (a dictionary update or two, no Redis) and
flushes every ``FLUSH_S``, only when it counted something, in one pipeline:

- ``rl:usage:<minute>``, a hash: ``refused``, the limiter's 429s in that Unix minute;
- ``rl:refused:<minute>``, a sorted set: tenant (``@anonymous`` for callers without a valid
  key, who are limited by address) → its 429s that minute; the ``TOP_KEPT`` largest stay;
- ``rl:lowest:<minute>``, a sorted set: tenant → the smallest share of a bucket it had left
  (0 empty, 1 full) after any request that minute. ``ZADD LT`` keeps the lowest that any
  process saw; the ``TOP_KEPT`` lowest stay.

Every key expires ``USAGE_TTL_S`` after its minute's last write, so the dashboard's hour of
history is all that Redis holds. A flush that fails is dropped (these are statistics),
with one warning per outage.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.logging import get_logger
from service.ratelimit.decision import Decision

__all__ = [
    "ANONYMOUS_CALLER",
    "FLUSH_S",
    "LOWEST_PREFIX",
    "MINUTE_PREFIX",
    "REFUSED_PREFIX",
    "TOP_KEPT",
    "USAGE_TTL_S",
    "LimitUsage",
    "lowest_key",
    "minute_key",
    "refused_key",
]

FLUSH_S = 5.0
TOP_KEPT = 20
USAGE_TTL_S = 7200
ANONYMOUS_CALLER = "@anonymous"  # every caller without a valid key; no tenant name has an "@"

log = get_logger(__name__)


MINUTE_PREFIX = "rl:usage:"
REFUSED_PREFIX = "rl:refused:"
LOWEST_PREFIX = "rl:lowest:"


def minute_key(minute: int) -> str:
    return f"{MINUTE_PREFIX}{minute}"


def refused_key(minute: int) -> str:
    return f"{REFUSED_PREFIX}{minute}"


def lowest_key(minute: int) -> str:
    return f"{LOWEST_PREFIX}{minute}"


class LimitUsage:
    """One process's counts since its last flush, and the flushing."""

    def __init__(self, redis: Redis, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock
        self._refused: dict[str, int] = {}
        self._lowest: dict[str, float] = {}
        self._failing = False

    def admitted(self, tenant: str, decision: Decision) -> None:
        """A request of ``tenant`` was admitted: remember how empty its emptiest bucket is now."""
        share = decision.lowest_share()
        lowest = self._lowest
        if share < lowest.get(tenant, 1.0):  # a full bucket is no news
            lowest[tenant] = share

    def refused(self, tenant: str | None) -> None:
        """The limiter refused a request of ``tenant`` (None: a caller without a valid key)."""
        caller = ANONYMOUS_CALLER if tenant is None else tenant
        self._refused[caller] = self._refused.get(caller, 0) + 1
        if tenant is not None:
            self._lowest[tenant] = 0.0

    async def flush(self) -> None:
        """Add what was counted since the last flush to this minute's keys (nothing to do: no command)."""
        refused, self._refused = self._refused, {}
        lowest, self._lowest = self._lowest, {}
        if not refused and not lowest:
            return
        minute = int(self._clock() // 60)
        async with self._redis.pipeline(transaction=False) as pipe:
            if refused:
                pipe.hincrby(minute_key(minute), "refused", sum(refused.values()))
                pipe.expire(minute_key(minute), USAGE_TTL_S)
                for caller, count in heapq.nlargest(TOP_KEPT, refused.items(), key=lambda item: item[1]):
                    pipe.zincrby(refused_key(minute), count, caller)
                pipe.zremrangebyrank(refused_key(minute), 0, -TOP_KEPT - 1)
                pipe.expire(refused_key(minute), USAGE_TTL_S)
            if lowest:
                emptiest = heapq.nsmallest(TOP_KEPT, lowest.items(), key=lambda item: item[1])
                pipe.zadd(lowest_key(minute), dict(emptiest), lt=True)
                pipe.zremrangebyrank(lowest_key(minute), TOP_KEPT, -1)
                pipe.expire(lowest_key(minute), USAGE_TTL_S)
            try:
                await pipe.execute()
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("rate-limit usage could not be written; dropped", error=f"{type(exc).__name__}: {exc}")
                self._failing = True
                return
        self._failing = False

    async def run(self) -> None:
        """Flush every ``FLUSH_S`` until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

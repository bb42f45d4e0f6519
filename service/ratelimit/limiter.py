"""The limiter: every decision atomic in Redis (all its buckets pay, or none), batched per loop turn.

- **Batching.** Decisions that arrive in the same loop turn go to Redis together, in one
  round trip: one ``EVALSHA`` for all of them on a single Redis server, or, with
  ``group_by_slot`` (Redis Cluster, where a script may touch one hash slot only), one
  ``EVALSHA`` per slot in one pipeline; a caller's keys share its hash tag's slot.
- **Exact local refusals.** When Redis has said a bucket held ``r`` units, at most
  ``r + rate * (now - sent)`` can be there now (``sent`` is when that call left, so the
  bound errs high: other processes only spend). While that bound is below the cost, the
  request is refused here, without a round trip. Admissions always go to Redis.
- **Deadline.** A batch that Redis has not answered within ``deadline_s`` ends as
  fail-open or fail-closed per route; the connection is dropped, never reused mid-reply.
- **No double spending.** Nothing is retried except a ``NOSCRIPT`` reply (the script did
  not run: after ``SCRIPT FLUSH`` or a failover), which reloads it and resends once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from service.logging import get_logger
from service.ratelimit.headers import ratelimit_header, retry_after_header
from service.ratelimit.metrics import LimiterMetrics
from service.ratelimit.policy import Bucket, RouteBuckets, resp_bulk

__all__ = ["SCRIPT", "BucketState", "Decision", "Limiter", "Outcome", "bucket_key"]

SCRIPT = resources.files("service.ratelimit").joinpath("token_bucket.lua").read_text(encoding="utf-8")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
_EVALSHA = resp_bulk(b"EVALSHA") + resp_bulk(SCRIPT_SHA.encode())
_NOW_FROM_REDIS = resp_bulk(b"")
_REFUSAL_CACHE_MAX = 100_000
_FIELDS_PER_BUCKET = 4
_WARN_EVERY_S = 1.0

log = get_logger(__name__)


class Outcome:
    """What became of a request. Plain strings, not an Enum: enum hashing is Python code,
    and every decision is counted in a dictionary keyed by its outcome."""

    ALLOWED: Final = "allowed"
    LIMITED: Final = "limited"
    SHADOW_LIMITED: Final = "shadow_limited"  # admitted, though a shadow bucket came up short
    FAIL_OPEN: Final = "fail_open"
    FAIL_CLOSED: Final = "fail_closed"


def bucket_key(caller: str, bucket_name: str) -> str:
    """The Redis key of one caller's bucket; the hash tag keeps a caller's keys in one slot."""
    return f"rl:{{{caller}}}:{bucket_name}"


class BucketState(NamedTuple):
    """One bucket as Redis (or the refusal cache) last saw it, in the script's integer units.

    A named tuple rather than a frozen dataclass: one is built per bucket per request.
    """

    bucket: Bucket
    ok: bool
    remaining_units: int
    full_in_us: int
    retry_in_us: int  # -1: never (cost above capacity)

    @property
    def name(self) -> str:
        return self.bucket.name

    @property
    def remaining(self) -> int:
        """Whole tokens left."""
        return self.remaining_units // self.bucket.units_per_token

    @property
    def full_in_s(self) -> float:
        return self.full_in_us / 1e6


class Decision(NamedTuple):
    """The verdict on one request and what its headers need."""

    route: RouteBuckets
    outcome: str  # an Outcome
    states: tuple[BucketState, ...] = ()  # empty when Redis did not answer

    @property
    def violated(self) -> tuple[BucketState, ...]:
        """Enforced buckets that could not pay (shadow ones never count)."""
        return tuple(s for s in self.states if not s.ok and not s.bucket.shadow)

    @property
    def retry_after_s(self) -> float:
        """Seconds until every enforced bucket can pay again."""
        waits = [s.retry_in_us if s.retry_in_us >= 0 else s.full_in_us for s in self.states if not s.bucket.shadow]
        return max(waits, default=0) / 1e6

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and, when the state is known, ``RateLimit`` (plus ``Retry-After`` if refused)."""
        headers = {}
        if self.route.policy_header:
            headers["RateLimit-Policy"] = self.route.policy_header
        limited = self.outcome is Outcome.LIMITED
        closest = None
        closest_rank = (0, 0)
        for state in self.states:
            if state.bucket.shadow or (limited and state.ok):
                continue
            rank = (state.remaining, -state.full_in_us)
            if closest is None or rank < closest_rank:
                closest, closest_rank = state, rank
        if closest is not None:
            headers["RateLimit"] = ratelimit_header(closest)
        if limited:
            headers["Retry-After"] = retry_after_header(self.retry_after_s)
        return headers


@dataclass(slots=True)
class _Call:
    keys: list[str]
    keys_wire: bytes
    route: RouteBuckets
    spend: bool
    future: asyncio.Future[Decision]


class Limiter:
    """Decides requests against Redis; one instance per process, on its own no-retry pool."""

    def __init__(
        self,
        redis: Redis,
        *,
        deadline_s: float,
        metrics: LimiterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        group_by_slot: bool = False,
    ) -> None:
        self._redis = redis
        self._pool = redis.connection_pool
        self._deadline_s = deadline_s
        self._metrics = metrics or LimiterMetrics()
        self._clock = clock
        self._group_by_slot = group_by_slot
        # Connections kept between batches: the pool's hand-out check costs a read per batch.
        self._idle: list[AbstractConnection] = []
        self._pending: list[_Call] = []
        self._inflight: set[asyncio.Task[None]] = set()
        # key -> (remaining units Redis reported, local time the call was sent); only near-empty buckets.
        self._refusals: dict[str, tuple[int, float]] = {}
        self._last_warning_at = -_WARN_EVERY_S

    @property
    def metrics(self) -> LimiterMetrics:
        return self._metrics

    async def decide(self, caller: str, route: RouteBuckets, *, spend: bool = True) -> Decision:
        """Spend the buckets of ``route`` for ``caller`` (or only read them: ``spend=False``)."""
        keys = [bucket_key(caller, b.name) for b in route.buckets]
        if spend and self._refusals:
            refused = self._refuse_locally(keys, route)
            if refused is not None:
                self._metrics.count(Outcome.LIMITED, route.plan, local=True)
                return refused
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        keys_wire = b"".join([resp_bulk(key.encode()) for key in keys])
        self._pending.append(_Call(keys, keys_wire, route, spend, future))
        return await future

    async def close(self) -> None:
        """Wait for batches in flight (each ends by its deadline), then hand the connections back."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        while self._idle:
            await self._pool.release(self._idle.pop())

    def _refuse_locally(self, keys: list[str], route: RouteBuckets) -> Decision | None:
        now = self._clock()
        violated = []
        for key, bucket in zip(keys, route.buckets, strict=True):
            entry = self._refusals.get(key)
            if entry is None or bucket.shadow:
                continue
            reported, sent = entry
            refill_units_per_us = bucket.refill_units_per_us
            # An upper bound of what Redis holds now; one unit of slack for float rounding.
            at_most = reported + refill_units_per_us * (now - sent) * 1e6 + 1
            cost_units = bucket.cost * bucket.units_per_token
            if at_most >= cost_units:
                del self._refusals[key]
                continue
            missing = cost_units - at_most
            capacity_units = bucket.capacity * bucket.units_per_token
            violated.append(
                BucketState(
                    bucket,
                    ok=False,
                    remaining_units=int(at_most),
                    full_in_us=int((capacity_units - at_most) / refill_units_per_us),
                    retry_in_us=int(missing / refill_units_per_us),
                )
            )
        if not violated:
            return None
        return Decision(route, Outcome.LIMITED, tuple(violated))

    def _flush(self) -> None:
        calls, self._pending = self._pending, []
        if self._group_by_slot:
            slots: dict[int, list[_Call]] = {}
            for call in calls:
                slots.setdefault(key_slot(call.keys[0].encode()), []).append(call)
            groups = list(slots.values())
        else:
            groups = [calls]
        task = asyncio.get_running_loop().create_task(self._run(groups))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _run(self, groups: list[list[_Call]]) -> None:
        commands = [_command(group) for group in groups]
        sent = self._clock()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._deadline_s):
                replies = await self._send(commands)
                retry = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if retry:
                    # NOSCRIPT: the script did not run, so sending it again cannot spend twice.
                    self._metrics.redis_error("noscript")
                    await self._redis.script_load(SCRIPT)
                    for i, reply in zip(retry, await self._send([commands[i] for i in retry]), strict=True):
                        replies[i] = reply
        except (RedisError, OSError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
            self._metrics.redis_error(kind)
            self._warn("rate limiter fell back", reason=kind, error=str(exc) or type(exc).__name__)
            for group in groups:
                self._fail(group)
            return
        self._metrics.redis_latency.observe(time.perf_counter() - started)
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, Exception):
                self._metrics.redis_error("reply")
                self._warn("rate limiter script failed", reason="reply", error=str(reply))
                self._fail(group)
            else:
                self._resolve(group, reply, sent)

    async def _send(self, commands: list[bytes]) -> list[Any]:
        """One round trip; error replies come back in place (a connection failure raises)."""
        connection = await self._connection()
        try:
            await connection.send_packed_command(commands, check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response(disable_decoding=True))
                except ResponseError as error:
                    replies.append(error)
        except BaseException:
            # A reply may still be on its way: this connection must never be reused.
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)
            raise
        self._idle.append(connection)
        return replies

    async def _connection(self) -> AbstractConnection:
        while self._idle:
            connection = self._idle.pop()
            reader = connection._reader
            if reader is not None and not reader.at_eof():
                return connection
            # Closed by the server while idle (a restart, a failover): let the pool renew it.
            await connection.disconnect(nowait=True)
            await self._pool.release(connection)
        fresh: AbstractConnection = await self._pool.get_connection()
        return fresh

    def _warn(self, event: str, **fields: str) -> None:
        """Log a fallback at most once a second: a Redis outage must not flood the logs (metrics count all)."""
        now = self._clock()
        if now - self._last_warning_at >= _WARN_EVERY_S:
            self._last_warning_at = now
            log.warning(event, **fields)

    def _fail(self, group: list[_Call]) -> None:
        for call in group:
            outcome = Outcome.FAIL_CLOSED if call.route.fail_closed else Outcome.FAIL_OPEN
            self._metrics.count(outcome, call.route.plan)
            if not call.future.done():
                call.future.set_result(Decision(call.route, outcome))

    def _resolve(self, group: list[_Call], reply: list[int], sent: float) -> None:
        at = 0
        refusals = self._refusals
        for call in group:
            admitted = reply[at] == 1
            at += 1
            states = []
            shadow_short = False
            for key, bucket in zip(call.keys, call.route.buckets, strict=True):
                ok = reply[at]
                remaining_units = reply[at + 1]
                retry_in_us = reply[at + 3]
                states.append(BucketState(bucket, ok == 1, remaining_units, reply[at + 2], retry_in_us))
                at += _FIELDS_PER_BUCKET
                if bucket.shadow:
                    shadow_short = shadow_short or ok != 1
                elif retry_in_us != 0:
                    if len(refusals) >= _REFUSAL_CACHE_MAX:
                        refusals.clear()
                    refusals[key] = (remaining_units, sent)
                else:
                    refusals.pop(key, None)
            if not admitted:
                outcome = Outcome.LIMITED
            elif shadow_short:
                outcome = Outcome.SHADOW_LIMITED
            else:
                outcome = Outcome.ALLOWED
            if call.spend:
                self._metrics.count(outcome, call.route.plan)
            if not call.future.done():
                call.future.set_result(Decision(call.route, outcome, tuple(states)))


def _command(group: list[_Call]) -> bytes:
    """One ``EVALSHA`` for every decision of ``group`` (one hash slot), framed as RESP by hand.

    The arguments of each route are framed once, when the policies load; only the keys
    are framed per request. redis-py's generic ``pack_command`` was the limiter's largest cost.
    """
    key_count = sum(len(call.keys) for call in group)
    arg_count = 2 + sum(2 + 4 * len(call.route.buckets) for call in group)
    parts = [
        b"*%d\r\n" % (3 + key_count + arg_count),
        _EVALSHA,
        resp_bulk(b"%d" % key_count),
        *[call.keys_wire for call in group],
        _NOW_FROM_REDIS,
        resp_bulk(b"%d" % len(group)),
        *[call.route.spend_args if call.spend else call.route.read_args for call in group],
    ]
    return b"".join(parts)

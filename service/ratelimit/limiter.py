"""The limiter: every decision atomic in Redis (all its buckets pay, or none), batched per loop turn.

- **Batching.** Decisions that arrive in the same loop turn go to Redis together: one
  ``EVALSHA`` for all of them on a single server, or on Redis Cluster one call per primary
  for the callers of its slots (``cluster.py``; a caller's keys share its hash tag's slot).
  At most ``BATCHES_IN_FLIGHT_MAX`` batches are unanswered at once (decisions arriving
  meanwhile wait for the next), so a busy process sends few, large batches on a few
  connections; one that holds ``BATCH_MAX`` decisions goes at once, so that Redis starts on
  it while this process still reads the turn's other requests. A waiting decision's
  deadline runs from when it was queued.
- **Exact local refusals.** A bucket that Redis has said cannot pay refuses the caller's
  next requests here, without a round trip, until it may have refilled (``refusals.py``).
  Admissions always go to Redis.
- **Deadline.** A batch that Redis has not answered within ``deadline_s`` ends as
  fail-open or fail-closed per route; the connection is dropped, never reused mid-reply.
  When the deadline's timer fires late, this process was busy or not scheduled, not Redis
  slow: an event loop runs due timers before it reads its sockets, so an answer that came
  in time may be waiting unread. The batch then gets a few more loop turns to read it.
- **No double spending.** Nothing is retried except a ``NOSCRIPT`` reply (the script did
  not run: after ``SCRIPT FLUSH`` or a failover), which reloads it and resends (up to
  three times, should flushes keep coming).
- **Reads riding along.** On the process's own Redis, a request's read that does not depend
  on the decision (``GET /v1/jobs/{id}``'s job) can go in the batch's write, after the
  decisions (``ride``): one round trip, not two. A read that did not come back (the batch
  failed or ran out of time, ``NOSCRIPT``) is answered with the error as its value, and
  its caller reads on its own; the decisions are answered before the riders are read.
- **Out of memory.** On Redis >= 7 the script is flagged ``allow-oom``, so the limiter
  still decides (and refuses) when Redis is at ``maxmemory`` and refuses other writes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from service.logging import get_logger
from service.ratelimit.cluster import ClusterTransport, Group
from service.ratelimit.connections import KeptConnections
from service.ratelimit.decision import Decision, Outcome
from service.ratelimit.metrics import LimiterMetrics
from service.ratelimit.policy import RouteBuckets
from service.ratelimit.refusals import Refusals
from service.ratelimit.script import (
    ALLOW_OOM_SCRIPT,
    ALLOW_OOM_SCRIPT_SHA,
    REPLY_PER_BUCKET,
    SCRIPT,
    SCRIPT_SHA,
    BatchFramer,
)
from service.script_calls import BATCH_MAX

__all__ = ["Decision", "Limiter", "Outcome"]

_WARN_EVERY_S = 1.0
_NOSCRIPT_RELOADS = 3  # per batch, within its deadline
BATCHES_IN_FLIGHT_MAX = 4  # a few connections; Redis reads the next batches while this process reads a reply
_LATE_S = 0.005  # a deadline timer this late means the process stalled (timers fire within ~1 ms otherwise)
# More loop turns for a stalled batch to read its answer: one does on either loop, more if it comes in pieces.
_STALL_TURNS = 3

log = get_logger(__name__)


# A read riding in a batch's write: the framed command, and the future of its reply.
_Rider = tuple[bytes, "asyncio.Future[Any]"]

# A decision waiting for its batch: caller, route, and its future.
# A plain tuple: one is made per request, and a class's __init__ would cost more than the rest.
_Call = tuple[str, RouteBuckets, "asyncio.Future[Decision]"]


class _Batch:
    """The decisions of one round trip, and whether its place among the batches in flight was given back."""

    __slots__ = ("deadline_at", "decided_at", "groups", "riders", "settled", "timeout")

    def __init__(self, groups: Sequence[Group], riders: list[_Rider], deadline_at: float) -> None:
        self.groups = groups
        self.riders = riders
        self.deadline_at = deadline_at
        self.decided_at = 0.0  # perf_counter() when the decisions' replies were read, before its riders' (if any)
        self.settled = False
        self.timeout: asyncio.Timeout | None = None  # its read's, while it reads


class Limiter:
    """Decides requests against Redis; one instance per process, on its own no-retry pool."""

    def __init__(
        self,
        redis: Redis,
        *,
        deadline_s: float,
        metrics: LimiterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        cluster: ClusterTransport | None = None,
        carries_reads: bool = False,
    ) -> None:
        self._redis = redis
        self._deadline_s = deadline_s
        self._metrics = metrics or LimiterMetrics()
        self._clock = clock
        # Set: the limiter's Redis is a cluster, and batches go through this (``redis`` is then unused).
        self.cluster = cluster
        # Set: the limiter's Redis holds the process's data too, so reads may ride in its batches (``ride``).
        self.carries_reads = carries_reads and cluster is None
        self._connections = KeptConnections(redis.connection_pool, clock)
        self._pending: list[_Call] = []
        self._riders: list[_Rider] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the pending decisions, when there are any
        self._pending_since = 0.0  # loop time the first pending decision was queued: its deadline runs from then
        self._unanswered = 0  # batches sent and neither answered nor given up, at most BATCHES_IN_FLIGHT_MAX
        self._inflight: set[asyncio.Task[None]] = set()
        self._refusals = Refusals(clock)
        # The allow-oom script (Redis >= 7) until Redis refuses to load it.
        self._script = ALLOW_OOM_SCRIPT
        self._framer = BatchFramer(ALLOW_OOM_SCRIPT_SHA)
        self._last_warning_at = -_WARN_EVERY_S

    @property
    def metrics(self) -> LimiterMetrics:
        return self._metrics

    async def decide(self, caller: str, route: RouteBuckets) -> Decision:
        """Spend the buckets of ``route`` for ``caller`` (reading its ``read_only`` ones)."""
        refused = self.refuse_locally(caller, route)
        if refused is not None:
            return refused
        return await self.submit(caller, route)

    def submit(self, caller: str, route: RouteBuckets) -> asyncio.Future[Decision]:
        """Queue the decision for this loop turn's batch; the future holds Redis's verdict.

        ``decide`` is this after ``refuse_locally``; the middleware calls the two itself
        to save a coroutine per request.
        """
        # The decisions of one turn share its loop: only the turn's first asks for it (a system call on 3.11).
        loop = self._loop
        if len(self._pending) >= BATCH_MAX:
            self._flush()  # a full batch (and its riders) goes now, if a place in flight is free
        if loop is None or not self._pending:
            loop = self._loop = asyncio.get_running_loop()
            self._pending_since = loop.time()
            loop.call_soon(self._flush)
        future: asyncio.Future[Decision] = loop.create_future()
        self._pending.append((caller, route, future))
        return future

    def ride(self, command: bytes) -> asyncio.Future[Any]:
        """Send ``command`` (a framed read) in the write of the batch of the decision just ``submit``-ted.

        The future holds its reply undecoded, or an exception as a value (an error reply, or a
        ``RedisError`` when it did not come back; a refused request never looks): the caller
        then reads on its own. Only when ``carries_reads``, in the turn of ``submit``.
        """
        loop = self._loop
        assert loop is not None, "ride() goes with the decision submit() just queued"
        assert self._pending, "ride() goes with the decision submit() just queued"
        future: asyncio.Future[Any] = loop.create_future()
        self._riders.append((command, future))
        return future

    async def close(self) -> None:
        """Wait for batches in flight (each ends by its deadline), then hand the connections back."""
        while self._inflight:  # an answered batch may send the decisions that waited for it
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._connections.close()

    def refuse_locally(self, caller: str, route: RouteBuckets) -> Decision | None:
        """A refusal decided without Redis, when an earlier reply proves a bucket cannot pay yet (``refusals.py``)."""
        decision = self._refusals.refuse(caller, route)
        if decision is not None:
            self._metrics.count(Outcome.LIMITED, route.plan, local=True)
        return decision

    def _flush(self) -> None:
        if not self._pending or self._unanswered >= BATCHES_IN_FLIGHT_MAX:
            return  # nothing to send, or it waits for an answer (``_settle`` sends it then)
        calls, self._pending = self._pending, []
        riders, self._riders = self._riders, []
        groups = [calls] if self.cluster is None else self.cluster.split(calls)
        self._unanswered += 1
        batch = _Batch(groups, riders, self._pending_since + self._deadline_s)
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._inflight.add(task)
        task.add_done_callback(functools.partial(self._ended, batch))

    def _settle(self, batch: _Batch) -> None:
        """Give the batch's place in flight back (once), and send the decisions that waited for it."""
        if not batch.settled:
            batch.settled = True
            self._unanswered -= 1
            self._flush()

    def _ended(self, batch: _Batch, task: asyncio.Task[None]) -> None:
        """A batch's task has ended; one cancelled (the loop is closing), even before it started,
        answers its calls by their fail-open/closed rule, so that no request waits on."""
        self._inflight.discard(task)
        if task.cancelled():
            self.give_up(batch.groups, "cancelled", "the batch was cancelled")
        for _, future in batch.riders:
            if not future.done():  # the batch failed, timed out or never ran
                future.set_result(RedisError("the read did not come back with the rate limiter's batch"))
        self._settle(batch)

    def _expire(self, batch: _Batch, turns: int = 0) -> None:
        """At the batch's deadline: answer it by the fail-open/closed rule and stop its read; after
        ``_STALL_TURNS`` more loop turns when the deadline found this process stalled."""
        loop = asyncio.get_running_loop()
        if turns < _STALL_TURNS and (turns or loop.time() - batch.deadline_at > _LATE_S):
            loop.call_soon(self._expire, batch, turns + 1)
            return
        self.give_up(batch.groups, "timeout", "no answer within the deadline")
        self._settle(batch)
        if batch.timeout is not None:
            batch.timeout.reschedule(loop.time())

    async def _run(self, batch: _Batch) -> None:
        try:
            await self._decide(batch)
        finally:
            self._settle(batch)

    async def _decide(self, batch: _Batch) -> None:
        groups = batch.groups
        sent = self._clock()
        started = time.perf_counter()
        # A timer answers the batch at the deadline and then cancels its read (``_expire``): the
        # cancel alone can be lost, as Python 3.11's wait_for (around redis-py's writes while it
        # sets up a new connection) swallows a cancel that lands while the write completes
        # (cpython #86296), and the batch would then wait on for Redis.
        expiry = asyncio.get_running_loop().call_at(batch.deadline_at, self._expire, batch)
        try:
            async with asyncio.timeout(None) as batch.timeout:
                if self.cluster is not None:
                    await self.cluster.send(groups, self, sent)  # answers each group as its primary replies
                else:
                    await self._send_batch(batch, sent)
        except (RedisError, OSError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
            self.give_up(groups, kind, str(exc) or type(exc).__name__)
            return
        finally:
            batch.timeout = None
            expiry.cancel()
        # The decisions' round trip, without the reads that rode along and came after.
        self._metrics.redis_latency.observe((batch.decided_at or time.perf_counter()) - started)

    async def _send_batch(self, batch: _Batch, sent: float) -> None:
        """The single-server round trip: every group's call in one write, on one connection, the riders after.
        The decisions are answered (and the batch's place given back) before the riders' replies are read:
        a job's result can be large, and no decision waits for it."""
        groups, riders = batch.groups, batch.riders
        commands = [self._framer.evalsha(group) for group in groups]
        if riders:

            def decided(replies: list[Any]) -> None:
                batch.decided_at = time.perf_counter()
                self._answer_ran(groups, replies, sent)
                if not any(isinstance(reply, NoScriptError) for reply in replies):
                    self._settle(batch)  # else it is not over: its resends keep its place

            replies = await self._send(commands, [command for command, _ in riders], decided)
            for (_, future), reply in zip(riders, replies[len(commands) :], strict=True):
                future.set_result(reply)  # an error reply in place
            del replies[len(commands) :]
        else:
            replies = await self._send(commands)
            self._answer_ran(groups, replies, sent)
        for _ in range(_NOSCRIPT_RELOADS):
            retry = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if not retry:
                return
            # NOSCRIPT: the script did not run, so sending it again cannot spend twice (and a
            # SCRIPT FLUSH may land again between the load and the resend).
            await self.load_script(self._redis)
            commands = [self._framer.evalsha(group) for group in groups]  # the SHA may have changed
            again = await self._send([commands[i] for i in retry])
            for i, reply in zip(retry, again, strict=True):
                replies[i] = reply
            self._answer_ran([groups[i] for i in retry], again, sent)
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, NoScriptError):  # still, after every reload: the fail-open/closed rule
                self.answer(group, reply, sent)

    def _answer_ran(self, groups: Sequence[Group], replies: list[Any], sent: float) -> None:
        """Answer each group whose call ran (one that got ``NOSCRIPT`` is sent again)."""
        for group, reply in zip(groups, replies, strict=True):
            if not isinstance(reply, NoScriptError):
                self.answer(group, reply, sent)

    def frame(self, group: Group) -> bytes:
        """One ``EVALSHA`` deciding ``group`` (the cluster transport frames per slot)."""
        return self._framer.evalsha(group)

    def answer(self, group: Group, reply: list[int] | ResponseError, sent: float) -> None:
        """Resolve ``group`` from its script's reply; an error reply answers it by the fail-open/closed rule."""
        if isinstance(reply, Exception):
            self._metrics.redis_error("reply")
            self._warn("rate limiter script failed", reason="reply", error=str(reply))
            self._fail(group)
        else:
            self._resolve(group, reply, sent)

    def cluster_reply(self, code: str) -> None:
        """A cluster's reply that the call did not run and goes elsewhere or again: ``ratelimit_redis_errors_total``."""
        self._metrics.redis_error(code.lower())

    async def warm_up(self, timeout_s: float) -> None:
        """Open the connections that batches use and load the script, before requests need them.

        Otherwise a new process's first batches connect (TLS and AUTH on a managed Redis) and
        load the script within the deadline, and on a slow machine or a distant Redis the first
        requests after a deploy fell back. Bounded by ``timeout_s``; a Redis that does not answer
        is left to the batches, which fall back as they would on any sick Redis.
        """
        if self.cluster is not None:
            return  # the cluster transport connects to each primary itself
        try:
            async with asyncio.timeout(timeout_s):
                await self._load(self._redis)
                await self._connections.open(BATCHES_IN_FLIGHT_MAX)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("the rate limiter could not warm up", error=str(exc) or type(exc).__name__)

    async def load_script(self, redis: Redis) -> None:
        """After a ``NOSCRIPT`` reply: load the script on the server behind ``redis``."""
        self._metrics.redis_error("noscript")
        await self._load(redis)

    async def _load(self, redis: Redis) -> None:
        """Load the script; a Redis before 7 refuses the allow-oom flag line, and gets the plain script from then on."""
        try:
            await redis.script_load(self._script)
        except ResponseError:
            if self._script == SCRIPT:
                raise
            self._script = SCRIPT
            self._framer = BatchFramer(SCRIPT_SHA)
            await redis.script_load(SCRIPT)

    async def _send(
        self,
        commands: list[bytes],
        trailing: Sequence[bytes] = (),
        between: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """One round trip on a kept connection; error replies come back in place (a connection failure raises).
        ``trailing`` and ``between``: ``KeptConnections.round_trip``'s."""
        return await self._connections.round_trip(commands, trailing, between)

    def _warn(self, event: str, **fields: str) -> None:
        """Log a fallback at most once a second: a Redis outage must not flood the logs (metrics count all)."""
        now = self._clock()
        if now - self._last_warning_at >= _WARN_EVERY_S:
            self._last_warning_at = now
            log.warning(event, **fields)

    def give_up(self, groups: Sequence[Group], kind: str, error: str) -> None:
        """Answer a batch's undecided calls by their fail-open/closed rule (once, whoever comes first)."""
        if all(future.done() for group in groups for *_, future in group):
            return
        self._metrics.redis_error(kind)
        self._warn("rate limiter fell back", reason=kind, error=error)
        for group in groups:
            self._fail(group)

    def _fail(self, group: Group) -> None:
        for _, route, future in group:
            if future.done():  # answered already (at the deadline)
                continue
            outcome = Outcome.FAIL_CLOSED if route.fail_closed else Outcome.FAIL_OPEN
            self._metrics.count(outcome, route.plan)
            future.set_result(Decision(route, outcome))

    def _resolve(self, group: Group, reply: list[int], sent: float) -> None:
        at = 0
        learn = self._refusals.learn
        count = self._metrics.count
        for caller, route, future in group:
            admitted = reply[at] == 1
            first = at + 1
            at = first + REPLY_PER_BUCKET * len(route.buckets)
            shadow_short = learn(caller, route, admitted, reply, first, sent)
            if not admitted:
                outcome = Outcome.LIMITED
            elif shadow_short:
                outcome = Outcome.SHADOW_LIMITED
            else:
                outcome = Outcome.ALLOWED
            if not future.done():  # else answered at the deadline: Redis's reply only updates the refusals
                count(outcome, route.plan)
                future.set_result(Decision(route, outcome, route.buckets, reply, first, route.read_only))

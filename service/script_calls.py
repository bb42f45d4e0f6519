"""Lua script calls of one event-loop turn, sent to Redis together: one write, one read, one timeout.

redis-py's asyncio client pays for every command on its own: a task for the write (its
``asyncio.wait_for``), a timeout and a parse per reply, a retry wrapper, a pool hand-out
and ``pack_command``. On a request that reads one job, that was the largest part of the
request. ``ScriptCalls`` frames ``EVALSHA`` by hand, queues the calls made in the same loop
turn and sends them in one write on one pooled connection, reading their replies under one
timeout. At most ``BATCHES_IN_FLIGHT_MAX`` batches are unanswered at once; calls made
meanwhile wait for the next, so a busy process sends few, large batches (each costs a
task, a write and a read). A batch that holds ``BATCH_MAX`` calls goes at once, without
waiting for the end of the turn: Redis starts on it while the process still handles the
rest of the turn's requests. (One batch in flight, and no cap: 50 requests at a time came
back together, and the process sat idle while Redis ran them all; with both, the API
bench's ``POST /v1/jobs`` did about 15% more requests a second.) A call's timeout runs
from when it was queued, its wait for the batch included.

A caller gets what redis-py would have given it:

- the reply undecoded: bytes, integers, lists, ``None`` for a nil;
- an error reply raised as redis-py's ``ResponseError`` subclass (``OutOfMemoryError``, ...);
- ``TimeoutError`` when the batch had no answer within ``timeout_s``, ``ConnectionError``
  when its connection failed. The connection is then closed, never reused with a reply on
  its way.

Nothing that may have run is sent twice. A ``NOSCRIPT`` reply (after a restart, a failover
or ``SCRIPT FLUSH``) means the script did not run: it is loaded and the call sent again,
in one round trip, up to three times. A call made ``idempotent`` (a read) whose batch's
connection failed goes into a later batch once more, as redis-py's retrying client did.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError, TimeoutError

from service.logging import get_logger
from service.redis import round_trip

__all__ = ["BATCHES_IN_FLIGHT_MAX", "BATCH_MAX", "Framed", "Script", "ScriptCalls", "resp_bulk"]

BATCHES_IN_FLIGHT_MAX = 4
BATCH_MAX = 24  # calls; the limiter's batches have the same cap (bench/RESULTS.md: "Batch cap and batches in flight")
_NOSCRIPT_RELOADS = 3

log = get_logger(__name__)

# What a script takes as a key or an argument, encoded as redis-py encodes it.
Value = str | bytes | int | float


def resp_bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string, the way every command argument travels to Redis."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _bulk(value: Value) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, bool):  # an int, but redis-py refuses it: say so rather than send "True"
        raise TypeError("a script argument cannot be a bool")
    elif isinstance(value, int):
        value = b"%d" % value
    elif isinstance(value, float):
        value = repr(value).encode()
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Framed:
    """Keys or arguments that every call of a script sends alike (shared keys, prefixes, caps), framed
    once; ``Script.frame`` takes it in place of the values, in their place."""

    __slots__ = ("count", "wire")

    def __init__(self, *values: Value) -> None:
        self.count = len(values)
        self.wire = b"".join(_bulk(value) for value in values)


class Script:
    """A Lua script as ``ScriptCalls`` sends it: ``EVALSHA`` with its SHA, and ``SCRIPT LOAD`` when Redis lacks it."""

    __slots__ = ("_evalsha", "load_command", "sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self._evalsha = resp_bulk(b"EVALSHA") + resp_bulk(self.sha.encode())
        self.load_command = b"*3\r\n" + resp_bulk(b"SCRIPT") + resp_bulk(b"LOAD") + resp_bulk(text.encode())

    def frame(self, keys: Sequence[Value | Framed], args: Sequence[Value | Framed]) -> bytes:
        """One ``EVALSHA`` of this script with ``keys`` and ``args``, framed as RESP.

        Most values are ASCII text (keys, ids) or integers: those are framed as text and
        encoded together, which costs a fifth less than framing each as bytes; a ``Framed``
        run is already framed; the rest (bytes, other text, floats) one by one with ``_bulk``.
        """
        pieces = [b""]  # the head, once the counts are known
        text: list[str] = []
        counts = []
        for values in (keys, args):
            count = len(values)
            for value in values:
                if type(value) is str and value.isascii():
                    text.append(f"${len(value)}\r\n{value}\r\n")
                elif type(value) is int:
                    digits = str(value)
                    text.append(f"${len(digits)}\r\n{digits}\r\n")
                else:
                    if text:
                        pieces.append("".join(text).encode())
                        text = []
                    if isinstance(value, Framed):
                        pieces.append(value.wire)
                        count += value.count - 1
                    else:
                        pieces.append(_bulk(value))
            counts.append(count)
        if text:
            pieces.append("".join(text).encode())
        key_count, arg_count = counts
        keys_wire = str(key_count).encode()
        pieces[0] = b"*%d\r\n%b$%d\r\n%b\r\n" % (3 + key_count + arg_count, self._evalsha, len(keys_wire), keys_wire)
        return b"".join(pieces)


# A call waiting for its batch: the framed EVALSHA, its script, its future, and how many
# more times a connection failure may send it (1 for a read, 0 for anything else).
_Call = tuple[bytes, Script, "asyncio.Future[Any]", int]


class ScriptCalls:
    """Script calls on ``pool``, batched per loop turn; ``close()`` waits for the batches in flight."""

    def __init__(self, pool: ConnectionPool, *, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._pending: list[_Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the pending calls, when there are any
        self._pending_since = 0.0  # loop time the first pending call was queued: its timeout runs from then
        self._unanswered = 0  # batches sent and not yet answered, at most BATCHES_IN_FLIGHT_MAX
        self._inflight: set[asyncio.Task[None]] = set()

    def call(
        self,
        script: Script,
        keys: Sequence[Value | Framed],
        args: Sequence[Value | Framed],
        *,
        idempotent: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue ``script`` with ``keys`` and ``args`` for this loop turn's batch; the future holds its reply.

        ``idempotent``: running it twice does no harm, so a failed connection may send it again.
        """
        # The calls of one turn share its loop: only the turn's first call asks for it (a system call on 3.11).
        loop = self._loop
        if loop is None or not self._pending:
            loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue((script.frame(keys, args), script, future, 1 if idempotent else 0), loop)
        return future

    async def close(self) -> None:
        """Wait for the batches in flight; each ends within the timeout."""
        while self._inflight or self._pending:
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            else:
                await asyncio.sleep(0)  # a flush is due this loop turn

    def _queue(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        if len(self._pending) >= BATCH_MAX:
            self._flush()  # a full batch goes now, if a place in flight is free
        if not self._pending:
            self._loop = loop
            self._pending_since = loop.time()
            loop.call_soon(self._flush)
        self._pending.append(call)

    def _flush(self) -> None:
        if not self._pending or self._unanswered >= BATCHES_IN_FLIGHT_MAX:
            return  # nothing to send, or it waits for a batch to be answered (``_settle`` sends it then)
        calls, self._pending = self._pending, []
        self._unanswered += 1
        task = asyncio.get_running_loop().create_task(self._run(calls, self._pending_since + self._timeout_s))
        self._inflight.add(task)
        task.add_done_callback(functools.partial(self._settle, calls))

    async def _run(self, calls: list[_Call], deadline_at: float) -> None:
        try:
            replies = await self._round_trips(calls, deadline_at)
        except (RedisError, OSError) as exc:  # OSError: the builtin TimeoutError of the batch's timeout too
            self._fail(calls, exc)
            return
        for (_, _, future, _), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _settle(self, calls: list[_Call], task: asyncio.Task[None]) -> None:
        """A batch's task has ended: free its place, and send the calls that waited for it.

        A task cancelled (the loop is closing), even before it started, or ended by a bug,
        fails the calls it has not answered, so that no caller waits for a reply that will not come.
        """
        self._inflight.discard(task)
        self._unanswered -= 1
        if task.cancelled():
            self._fail(calls, ConnectionError("the Redis call was cancelled"), resend=False)
        elif (exc := task.exception()) is not None:
            log.error("script calls failed unexpectedly", exc_info=exc)
            self._fail(calls, ConnectionError(f"the Redis call failed: {type(exc).__name__}"), resend=False)
        self._flush()

    async def _round_trips(self, calls: list[_Call], deadline_at: float) -> list[Any]:
        """The batch's replies, in order; a ``NOSCRIPT`` one loads the scripts missing and sends their calls again."""
        pool = self._pool
        async with asyncio.timeout_at(deadline_at):
            connection = await pool.get_connection()
            replies = await round_trip(pool, connection, [command for command, *_ in calls])
            for _ in range(_NOSCRIPT_RELOADS):
                missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
                if not missing:
                    break
                loads = [script.load_command for script in {calls[i][1]: None for i in missing}]
                again = await round_trip(pool, connection, [*loads, *[calls[i][0] for i in missing]])
                for i, reply in zip(missing, again[len(loads) :], strict=True):
                    replies[i] = reply
        await pool.release(connection)
        return replies

    def _fail(self, calls: list[_Call], exc: BaseException, *, resend: bool = True) -> None:
        """Answer the batch's calls with the failure, or (``resend``) queue the reads that may go again."""
        if isinstance(exc, builtins.TimeoutError | TimeoutError):
            failure: type[RedisError] = TimeoutError
            detail = f"no answer from Redis within {self._timeout_s:g} s"
        else:
            failure = ConnectionError
            detail = str(exc) or type(exc).__name__
        for command, script, future, resends in calls:
            if future.done():
                continue
            if resend and resends and failure is ConnectionError:
                self._queue((command, script, future, resends - 1), future.get_loop())
            else:
                future.set_exception(failure(detail))

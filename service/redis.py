"""One way to connect to Redis, for the web process, the worker and the command line.

A command never hangs: connecting (TCP or TLS, then AUTH, CLIENT SETNAME, SELECT) has one
budget of ``timeout_s``, every read and write has ``timeout_s``, and a timeout is never
retried. So a command against a server that is gone, refuses the password or answers
nothing fails within about ``timeout_s`` with a ``RedisError`` (``describe`` says which in
one line).

Managed Redis (Upstash, Fly) and NATs drop idle connections, sometimes without a word.
redis-py's answer, ``health_check_interval``, PINGs from inside the connect path and
recurses when that PING is refused (redis-py #3745: a missing password ends in
``RecursionError`` or a hang), so it is off. Instead the pool closes a connection that sat
idle longer than ``IDLE_CONNECTION_MAX_S`` before handing it out (the next command opens
a fresh one), and TCP keep-alive probes find dead peers of connections in use.

Retries are opt-in per pool and only for connection errors (refused, reset, closed), with
the project's jittered backoff: a command that may already have run on the server (a
rate-limit script call, say) must never be sent twice, so the limiter asks for none.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, TimeoutError

from service.backoff import Backoff
from service.settings import RedisURL, Settings

__all__ = [
    "IDLE_CONNECTION_MAX_S",
    "Pool",
    "RedisBackoff",
    "cancel_until_done",
    "connection_pool",
    "describe",
    "read_replies",
    "redis_client",
    "round_trip",
]

# A pooled connection idle longer than this is closed before reuse (the old health check's interval).
IDLE_CONNECTION_MAX_S = 30.0
# A retried command waits up to 0.1 s, then 0.2 s, 0.4 s, ... at most 1 s.
COMMAND_RETRY_BACKOFF = Backoff(base_s=0.1, cap_s=1.0)
# Keep-alive probes on a silent connection: the first after 30 s, then every 10 s, dead after 3 unanswered.
_KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}


class RedisBackoff(AbstractBackoff):
    """The project's ``Backoff`` in redis-py's retry loop (which counts ``failures`` from 1)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def compute(self, failures: int) -> float:
        return self.backoff.delay_s(failures)


class Pool(ConnectionPool):
    """redis-py's pool, changed where a stock pool can hang, fail or hand out a broken connection.

    - Connecting has one budget (``connect_budget_s``) for TCP, TLS and the handshake, and a
      connection whose connect failed or was cancelled half-way is closed, never handed
      out again with a handshake reply still on its way.
    - Connects run side by side: the stock pool holds a lock while it connects, so against
      a server that answers nothing the tenth caller waits ten timeouts (redis-py #3842).
    - A connection idle longer than ``idle_max_s`` is closed before it is handed out.
    - With every connection in use, a caller waits its turn for one (up to
      ``connect_budget_s``) instead of failing at once with "Too many connections": a burst
      of requests one over ``max_connections`` was a burst of 503s.
    - A connection handed out again is checked the cheap way: its stream is open and holds
      no unread byte. The stock check (``can_read_destructive``) tries a read under a zero
      timeout, which costs a loop turn and ~20 µs per command; redis-py closes a connection
      whose command was cut short, so there is nothing for a read to find.

    ``tests/test_redis_contract.py`` pins the redis-py members this relies on.
    """

    def __init__(self, *args: Any, connect_budget_s: float, idle_max_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connect_budget_s = connect_budget_s
        self.idle_max_s = idle_max_s
        self._released_at: dict[AbstractConnection, float] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()  # callers waiting for a connection, first first

    async def get_connection(self, *_: Any, **__: Any) -> AbstractConnection:
        budget_ends = None  # waiting and connecting share the budget, set when either begins
        if self._waiters or not self.can_get_connection():
            budget_ends = self._budget_ends()
            await self._wait_for_a_connection(budget_ends)
        connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        released_at = self._released_at.pop(connection, None)
        try:
            if released_at is not None and time.monotonic() - released_at > self.idle_max_s:
                await connection.disconnect(nowait=True)
            elif _reusable(connection):
                return connection
            async with asyncio.timeout_at(budget_ends or self._budget_ends()):
                await self.ensure_connection(connection)
        except BaseException as exc:
            await connection.disconnect(nowait=True)
            await self.release(connection)
            if isinstance(exc, asyncio.TimeoutError):  # the budget ran out (redis-py's own timeouts are RedisErrors)
                raise TimeoutError(f"no answer within {self.connect_budget_s:g} s while connecting") from None
            raise
        return connection

    def _budget_ends(self) -> float:
        """Loop time at which a wait or a connect that begins now runs out of budget. (Asked only off the
        common path, a connection handed out as it is: on Python 3.11 the running loop is a system call.)"""
        return asyncio.get_running_loop().time() + self.connect_budget_s

    async def _wait_for_a_connection(self, budget_ends: float) -> None:
        """Wait in line until a connection can be had; ``ConnectionError`` when the budget ends (loop time)."""
        loop = asyncio.get_running_loop()
        again = False
        try:
            async with asyncio.timeout_at(budget_ends):
                while True:
                    waiter = loop.create_future()
                    if again:  # woken, but a caller that did not wait took it: first in line for the next one
                        self._waiters.appendleft(waiter)
                    else:
                        self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:  # cancelled, or the wait is over
                        if not waiter.done() or waiter.cancelled():
                            with contextlib.suppress(ValueError):
                                self._waiters.remove(waiter)
                        elif self.can_get_connection():  # woken, and leaving: the turn passes on
                            self._wake_next()
                        raise
                    if self.can_get_connection():
                        return
                    again = True
        except builtins.TimeoutError:
            raise ConnectionError(
                f"no Redis connection free within {self.connect_budget_s:g} s: all {self.max_connections} in use"
            ) from None

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def release(self, connection: AbstractConnection) -> None:
        self._released_at[connection] = time.monotonic()
        await super().release(connection)
        if self._waiters:
            self._wake_next()


def _reusable(connection: AbstractConnection) -> bool:
    """Whether a pooled connection is open with nothing unread: ready for a command without a check on the wire."""
    reader = connection._reader
    return reader is not None and not reader.at_eof() and not reader._buffer  # type: ignore[attr-defined]


def connection_pool(
    url: RedisURL,
    *,
    max_connections: int = 50,
    timeout_s: float = 5.0,
    retries: int = 2,
    client_name: str = "ottoai",
    socket_timeout_s: float | None = -1.0,
) -> Pool:
    """A connection pool for ``url``.

    ``timeout_s`` bounds connecting and each read and write; ``socket_timeout_s`` is the read
    timeout when it must differ (``None`` waits forever, for blocking pops that carry their
    own timeout; the default ``-1`` means "same as ``timeout_s``"). ``retries`` is how many
    times a command is sent again after a connection error. ``rediss://`` verifies the
    server certificate unless the URL itself says otherwise (``?ssl_cert_reqs=none``).
    """
    retry = (
        Retry(RedisBackoff(COMMAND_RETRY_BACKOFF), retries, supported_errors=(ConnectionError,))
        if retries > 0
        else Retry(NoBackoff(), 0)
    )
    options: dict[str, object] = {
        "max_connections": max_connections,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s if socket_timeout_s == -1.0 else socket_timeout_s,
        "retry": retry,
        "retry_on_error": [ConnectionError] if retries > 0 else [],
        "client_name": client_name,
        "connect_budget_s": timeout_s,
        "idle_max_s": IDLE_CONNECTION_MAX_S,
    }
    if url.scheme != "unix":  # unix sockets take no keep-alive option (redis-py raises TypeError)
        options["socket_keepalive"] = True
        options["socket_keepalive_options"] = {
            getattr(socket, name): value for name, value in _KEEPALIVE.items() if hasattr(socket, name)
        }
    if url.tls and "ssl_cert_reqs" not in url.url:
        options["ssl_cert_reqs"] = "required"
    return Pool.from_url(url.url, **options)


def redis_client(
    settings: Settings, *, client_name: str = "ottoai", retries: int = 2, url: RedisURL | None = None
) -> Redis:
    """A client with its own pool, sized and timed from ``settings``; close it with ``aclose()``.

    It connects to ``url``, by default the main Redis (``REDIS_URL``).
    """
    pool = connection_pool(
        url or settings.require_redis(),
        max_connections=settings.redis_max_connections,
        timeout_s=settings.redis_timeout_s,
        retries=retries,
        client_name=client_name,
    )
    return Redis.from_pool(pool)


def describe(exc: BaseException, url: RedisURL) -> str:
    """One line saying why Redis at ``url`` (password hidden) could not be used, and what to look at."""
    detail = str(exc) or type(exc).__name__
    where = url.redacted
    if isinstance(exc, AuthenticationError):
        return f"Redis at {where} refused the credentials ({detail}): check the user and password in {url.variable}"
    if isinstance(exc, TimeoutError):
        return f"Redis at {where} did not answer in time ({detail}): is it overloaded, paused or unreachable?"
    if isinstance(exc, RedisError | OSError):
        return f"cannot use Redis at {where}: {detail}"
    return f"Redis at {where}: {type(exc).__name__}: {detail}"


async def round_trip(
    pool: ConnectionPool, connection: AbstractConnection, commands: list[bytes], *, trailing: Sequence[bytes] = ()
) -> list[Any]:
    """Send ``commands`` (packed) in one write and read their replies in order, error replies in place.

    ``trailing`` commands go in the same write, after them; their replies are left on the
    connection for ``read_replies``, which must read them before the connection is used again.

    The caller bounds the whole round trip (``asyncio.timeout``): nothing here waits on a
    timer of its own. redis-py's ``send_packed_command`` and ``read_response`` would add a
    task for the write (``asyncio.wait_for``) and a timeout per reply, the largest part of a
    small call; this writes to the connection's stream and reads its parser directly
    (``tests/test_redis_contract.py`` pins both). A connection failure (or a cancel) raises,
    after closing the connection and handing it back to ``pool``: a reply may still be on
    its way, so it must never be reused.
    """
    try:
        if not connection.is_connected:
            await connection.connect()  # type: ignore[no-untyped-call]
        writer = connection._writer
        assert writer is not None
        writer.writelines([*commands, *trailing] if trailing else commands)
        await writer.drain()
    except BaseException as exc:
        await _drop(pool, connection, exc)
        raise
    return await read_replies(pool, connection, len(commands))


async def read_replies(pool: ConnectionPool, connection: AbstractConnection, count: int) -> list[Any]:
    """The next ``count`` replies on ``connection``, error replies in place; a failure closes it (``round_trip``)."""
    parser: Any = connection._parser  # the async parsers' read_response; BaseParser declares none
    try:
        # The parser answers an error reply as a ResponseError value, and raises ConnectionError at EOF.
        return [await parser.read_response(disable_decoding=True) for _ in range(count)]
    except BaseException as exc:
        await _drop(pool, connection, exc)
        raise


async def _drop(pool: ConnectionPool, connection: AbstractConnection, exc: BaseException) -> None:
    """After ``exc``, close ``connection`` and hand it back to ``pool``; an ``OSError`` (not a timeout)
    is raised as redis-py's ``ConnectionError``, anything else is the caller's to raise again."""
    await connection.disconnect(nowait=True)
    await pool.release(connection)
    if isinstance(exc, OSError) and not isinstance(exc, builtins.TimeoutError):
        raise ConnectionError(f"Redis connection failed: {exc}") from exc


async def cancel_until_done(task: asyncio.Task[Any], *, every_s: float = 0.1) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it does not.

    Once is not always enough for a task inside redis-py: taking a connection from a pool
    checks it with ``can_read_destructive()`` under a zero timeout, and on Python 3.11 a
    cancellation that lands there is turned into that timeout and swallowed (the task then
    waits on, ``cancelling()`` but never cancelled).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)

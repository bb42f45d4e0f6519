"""What the project takes from redis-py beyond its documented commands, pinned so an upgrade fails by name.

``service.redis.round_trip`` (the limiter's batches and ``ScriptCalls``' script calls)
writes hand-framed commands to a connection's private ``_writer`` stream and reads raw
replies from its private ``_parser``, under the caller's one timeout: redis-py's
``send_packed_command`` and ``read_response`` add a task per write and a timeout per reply,
which were most of a small call. The limiter (``service/ratelimit/connections.py``) keeps
connections between batches; before reusing an idle one it asks the private
``connection._reader`` whether the server closed it: the public check,
``can_read_destructive()`` (what the pool runs when it hands a connection out), cost
about 25 µs a call here against 55 ns for ``_reader.at_eof()``, once per batch.

``service.redis.Pool`` replaces the pool's ``get_connection`` (one connect budget, no lock
held while connecting, idle connections closed) with the pool's own
``get_available_connection``, ``ensure_connection`` and ``release``, and gives redis-py's
``Retry`` the errors it may retry. It leaves ``health_check_interval`` off: with it, a
refused first command recurses inside the connect (redis-py #3745).

Each member below is checked for presence, for being a coroutine function where the
project awaits it, and for accepting the exact call the project makes; the Redis tests
check the behaviour the project depends on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
import redis.crc
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, DefaultParser
from redis.asyncio.retry import Retry
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ResponseError, TimeoutError

from service.redis import Pool, connection_pool, round_trip
from service.settings import RedisURL
from tests.proxy import DelayProxy
from tests.servers import SilentServer, new_redis_server, redis_url


@dataclass(frozen=True)
class Pinned:
    """One member of redis-py the limiter uses, and how it calls it (``args``: after ``self``)."""

    owner: type | ModuleType
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    called: bool = True  # False: an attribute the limiter reads
    awaited: bool = True

    def __str__(self) -> str:
        if isinstance(self.owner, ModuleType):
            return f"{self.owner.__name__}.{self.name}"
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    def broken(self) -> str | None:
        """Why the limiter's use of this member would fail, or ``None`` if it still fits."""
        # getattr_static: a slot (``_reader``) is a descriptor on the class, not a value.
        member = inspect.getattr_static(self.owner, self.name, None)
        if member is None:
            return f"{self} is gone"
        if not self.called:
            return None
        function = getattr(self.owner, self.name)
        # unwrap: redis-py wraps some methods (get_connection) in a plain deprecation decorator.
        if self.awaited and not inspect.iscoroutinefunction(inspect.unwrap(function)):
            return f"{self} is no longer a coroutine function"
        receiver = (None,) if isinstance(self.owner, type) else ()
        try:
            inspect.signature(function).bind(*receiver, *self.args, **self.kwargs)
        except TypeError as exc:
            return f"{self}{inspect.signature(function)} no longer takes the limiter's call: {exc}"
        return None


PINNED = [
    Pinned(AbstractConnection, "_reader", called=False, awaited=False),
    Pinned(AbstractConnection, "_writer", called=False, awaited=False),
    Pinned(AbstractConnection, "_parser", called=False, awaited=False),
    Pinned(AbstractConnection, "is_connected", called=False, awaited=False),
    Pinned(AbstractConnection, "connect"),
    Pinned(DefaultParser, "read_response", kwargs={"disable_decoding": True}),
    Pinned(AbstractConnection, "disconnect", kwargs={"nowait": True}),
    Pinned(ConnectionPool, "get_connection"),
    Pinned(ConnectionPool, "release", (None,)),
    Pinned(ConnectionPool, "get_available_connection", awaited=False),
    Pinned(ConnectionPool, "ensure_connection", (None,)),
    Pinned(Retry, "__init__", (None, 2), {"supported_errors": (ConnectionError,)}, awaited=False),
    Pinned(redis.crc, "key_slot", (b"rl:{acme}:burst",), awaited=False),
]


@pytest.mark.parametrize("pinned", PINNED, ids=str)
def test_redis_py_still_has_what_the_limiter_uses(pinned: Pinned) -> None:
    assert pinned.broken() is None


def test_a_removed_member_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(AbstractConnection, "connect")

    [gone] = [problem for pinned in PINNED if (problem := pinned.broken())]

    assert gone == "redis.asyncio.connection.AbstractConnection.connect is gone"


def test_a_changed_signature_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    async def read_response(self: object) -> None: ...

    monkeypatch.setattr(DefaultParser, "read_response", read_response)

    [changed] = [problem for pinned in PINNED if (problem := pinned.broken())]

    assert changed.startswith(f"redis.{DefaultParser.__module__.split('.', 1)[1]}.{DefaultParser.__qualname__}")
    assert changed.endswith("no longer takes the limiter's call: got an unexpected keyword argument 'disable_decoding'")


def test_a_hash_tag_decides_the_slot() -> None:
    # Slot grouping sends a caller's buckets in one script call: they must share a slot.
    assert redis.crc.key_slot(b"rl:{acme}:burst") == redis.crc.key_slot(b"rl:{acme}:sustained")


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    client = Redis.from_url(redis_url())
    try:
        yield client.connection_pool
    finally:
        await client.aclose()


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)


async def test_raw_replies_arrive_in_order_and_an_error_reply_leaves_the_connection_usable(
    pool: ConnectionPool,
) -> None:
    connection = await pool.get_connection()
    first, second, third = await round_trip(
        pool,
        connection,
        [command(b"EVAL", b"return {1, -1, 2}", b"0"), command(b"EVALSHA", b"0" * 40, b"0"), command(b"PING")],
    )
    fourth = await round_trip(pool, connection, [command(b"PING")])
    await pool.release(connection)

    assert first == [1, -1, 2]
    assert isinstance(second, NoScriptError)
    assert third == b"PONG"
    assert fourth == [b"PONG"]
    assert issubclass(NoScriptError, ResponseError)  # the limiter looks for ResponseError per reply


async def test_a_connection_the_server_closed_is_at_eof_and_disconnect_forgets_it(pool: ConnectionPool) -> None:
    connection = await pool.get_connection()
    [client_id] = await round_trip(pool, connection, [command(b"CLIENT", b"ID")])
    reader = connection._reader
    assert reader is not None
    assert not reader.at_eof()

    async with Redis.from_url(redis_url()) as other:
        assert await other.client_kill_filter(_id=str(client_id)) == 1
    deadline = time.monotonic() + 5
    while not reader.at_eof():
        assert time.monotonic() < deadline, "the closed connection never read EOF"
        await asyncio.sleep(0.001)
    await connection.disconnect(nowait=True)
    await pool.release(connection)

    assert connection._reader is None
    renewed = await pool.get_connection()
    assert await round_trip(pool, renewed, [command(b"PING")]) == [b"PONG"]
    await pool.release(renewed)


# -- service.redis.Pool: what a sick Redis does to a command ----------------------------------

TIMEOUT_S = 0.5
# Slack for a loaded machine: the failures below come after one timeout, never after several.
SLACK_S = 1.0


def pool_for(url: str, **options: Any) -> Pool:
    return connection_pool(RedisURL.parse("REDIS_URL", url), timeout_s=TIMEOUT_S, **options)


def test_authentication_errors_are_connection_errors() -> None:
    # The web's error path answers 503 for a ConnectionError, and the pool may retry one.
    assert issubclass(AuthenticationError, ConnectionError)
    assert not issubclass(TimeoutError, ConnectionError)  # so a timeout is never retried


@pytest.mark.parametrize("password", ["", "wrong"], ids=["missing password", "wrong password"])
async def test_refused_credentials_fail_the_command_at_once_without_recursing(password: str) -> None:
    server = new_redis_server("--requirepass", "s3cret")
    url = f"redis://:{password}@127.0.0.1:{server.port}/0" if password else server.url
    client = Redis.from_pool(pool_for(url))
    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()
        server.stop()

    assert time.monotonic() - started < TIMEOUT_S + SLACK_S


async def test_a_listener_that_never_answers_fails_the_command_within_the_timeout_and_once() -> None:
    server = await SilentServer().start()
    client = Redis.from_pool(pool_for(f"redis://127.0.0.1:{server.port}/0", retries=2))
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await client.ping()
        failed_s = time.monotonic() - started
    finally:
        await client.aclose()
        await server.close()

    assert failed_s < TIMEOUT_S + SLACK_S
    assert server.received.count(b"SETNAME") == 1  # one connection's handshake: a timeout is not retried


async def test_concurrent_commands_against_a_paused_redis_each_fail_within_one_timeout() -> None:
    # redis-py's stock pool connects under a lock: the tenth caller would wait ten timeouts.
    server = new_redis_server()
    client = Redis.from_pool(pool_for(server.url))
    server.pause()
    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(*(client.ping() for _ in range(10)), return_exceptions=True)
        failed_s = time.monotonic() - started
        server.resume()
        assert await client.ping() is True  # and it recovers by itself
    finally:
        server.resume()
        await client.aclose()
        server.stop()

    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes
    assert failed_s < TIMEOUT_S + SLACK_S


async def test_a_command_cut_short_while_connecting_leaves_no_reply_behind() -> None:
    async with Redis.from_url(redis_url()) as direct:
        await direct.set("contract:key", "value")
    proxy = DelayProxy(int(redis_url().rsplit(":", 1)[1].split("/")[0]), delay_s=0.2).start()
    # The handshake takes two round trips, 0.8 s through the proxy: within a 3 s budget.
    client = Redis.from_pool(connection_pool(RedisURL.parse("REDIS_URL", proxy.url), timeout_s=3.0, max_connections=1))
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.get("contract:key"), 0.05)  # cancelled inside the handshake
        value = await client.get("contract:key")
    finally:
        await client.aclose()
        proxy.stop()
        async with Redis.from_url(redis_url()) as direct:
            await direct.delete("contract:key")

    assert value == b"value"  # not the late reply to the handshake's CLIENT SETNAME


async def test_a_connection_idle_past_the_limit_is_replaced_before_a_command() -> None:
    pool = pool_for(redis_url())
    client = Redis.from_pool(pool)
    try:
        first = await client.client_id()
        assert await client.client_id() == first  # reused while fresh
        pool.idle_max_s = 0.0  # as if it had sat idle for longer than IDLE_CONNECTION_MAX_S
        await asyncio.sleep(0.01)
        second = await client.client_id()
    finally:
        await client.aclose()

    assert second != first

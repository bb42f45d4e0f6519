"""What the limiter takes from redis-py beyond its documented commands, pinned so an upgrade fails by name.

``Limiter`` (``service/ratelimit/limiter.py``) keeps connections between batches, writes
its hand-framed ``EVALSHA`` with ``send_packed_command`` and reads raw replies with
``read_response``. Before reusing an idle connection it asks the private
``connection._reader`` whether the server closed it: the public check,
``can_read_destructive()`` (what the pool runs when it hands a connection out), cost
about 25 µs a call here against 55 ns for ``_reader.at_eof()``, once per batch.

Each member below is checked for presence, for being a coroutine function where the
limiter awaits it, and for accepting the exact call the limiter makes; the Redis tests
check the behaviour the limiter depends on.
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
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from tests.servers import redis_url


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
    Pinned(AbstractConnection, "send_packed_command", (b"",), {"check_health": False}),
    Pinned(AbstractConnection, "read_response", kwargs={"disable_decoding": True}),
    Pinned(AbstractConnection, "disconnect", kwargs={"nowait": True}),
    Pinned(ConnectionPool, "get_connection"),
    Pinned(ConnectionPool, "release", (None,)),
    Pinned(redis.crc, "key_slot", (b"rl:{acme}:burst",), awaited=False),
]


@pytest.mark.parametrize("pinned", PINNED, ids=str)
def test_redis_py_still_has_what_the_limiter_uses(pinned: Pinned) -> None:
    assert pinned.broken() is None


def test_a_removed_member_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(AbstractConnection, "read_response")

    [gone] = [problem for pinned in PINNED if (problem := pinned.broken())]

    assert gone == "redis.asyncio.connection.AbstractConnection.read_response is gone"


def test_a_changed_signature_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    async def send_packed_command(self: AbstractConnection, command: bytes) -> None: ...

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)

    [changed] = [problem for pinned in PINNED if (problem := pinned.broken())]

    assert changed.startswith("redis.asyncio.connection.AbstractConnection.send_packed_command(self")
    assert changed.endswith("no longer takes the limiter's call: got an unexpected keyword argument 'check_health'")


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
    try:
        await connection.send_packed_command(
            [command(b"EVAL", b"return {1, -1, 2}", b"0"), command(b"EVALSHA", b"0" * 40, b"0"), command(b"PING")],
            check_health=False,
        )

        first = await connection.read_response(disable_decoding=True)
        with pytest.raises(NoScriptError):
            await connection.read_response(disable_decoding=True)
        third = await connection.read_response(disable_decoding=True)
    finally:
        await pool.release(connection)

    assert first == [1, -1, 2]
    assert third == b"PONG"
    assert issubclass(NoScriptError, ResponseError)  # the limiter catches ResponseError per reply


async def test_a_connection_the_server_closed_is_at_eof_and_disconnect_forgets_it(pool: ConnectionPool) -> None:
    connection = await pool.get_connection()
    await connection.send_packed_command(command(b"CLIENT", b"ID"), check_health=False)
    client_id = await connection.read_response(disable_decoding=True)
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
    try:
        await renewed.send_packed_command(command(b"PING"), check_health=False)
        assert await renewed.read_response(disable_decoding=True) == b"PONG"
    finally:
        await pool.release(renewed)

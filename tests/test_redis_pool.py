"""``service.redis.Pool`` under more callers than connections, and what it checks before handing one out again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from service.redis import Pool, connection_pool
from service.settings import RedisURL
from tests.servers import redis_url

TIMEOUT_S = 0.5
SLACK_S = 1.0  # a loaded machine


def two_connections(timeout_s: float) -> Pool:
    return connection_pool(RedisURL.parse("REDIS_URL", redis_url()), timeout_s=timeout_s, max_connections=2)


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    """Two connections, and a wait for one far longer than any test here needs."""
    pool = two_connections(timeout_s=10.0)
    try:
        yield pool
    finally:
        await pool.disconnect()


async def test_callers_beyond_max_connections_wait_their_turn_instead_of_failing(pool: Pool) -> None:
    client = Redis.from_pool(pool)

    async def pop() -> object:
        # Holds its connection for 0.05 s: 12 callers on 2 connections take 6 turns.
        popped: object = await client.blpop(["pool:nothing"], timeout=0.05)  # type: ignore[arg-type,misc]
        return popped  # (redis-py types the timeout as whole seconds; Redis takes fractions)

    outcomes = await asyncio.gather(*(pop() for _ in range(12)))

    assert outcomes == [None] * 12
    assert len(pool._in_use_connections) == 0
    assert len(pool._available_connections) == 2


async def test_a_caller_that_finds_every_connection_held_too_long_gets_a_connection_error_naming_why() -> None:
    pool = two_connections(timeout_s=TIMEOUT_S)
    held = [await pool.get_connection(), await pool.get_connection()]
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match=r"no Redis connection free within 0.5 s: all 2 in use"):
            await Redis.from_pool(pool).ping()
    finally:
        for connection in held:
            await pool.release(connection)
        await pool.disconnect()

    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + SLACK_S


async def test_a_waiter_that_is_cancelled_leaves_the_line_and_the_next_one_gets_the_connection(pool: Pool) -> None:
    held = [await pool.get_connection(), await pool.get_connection()]
    leaving = asyncio.ensure_future(pool.get_connection())
    staying = asyncio.ensure_future(pool.get_connection())
    await asyncio.sleep(0.01)
    leaving.cancel()
    await pool.release(held.pop())

    connection = await asyncio.wait_for(staying, 5)
    assert leaving.cancelled()
    assert not pool._waiters
    await pool.release(connection)
    await pool.release(held.pop())


async def test_a_connection_released_with_an_unread_reply_is_renewed_before_reuse(pool: Pool) -> None:
    client = Redis.from_pool(pool)
    await client.set("pool:key", "value")
    connection = await pool.get_connection()
    await connection.send_command("PING")  # and never read
    reader = connection._reader
    assert reader is not None
    deadline = time.monotonic() + 5
    while not reader._buffer:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the reply never arrived"
        await asyncio.sleep(0.001)
    await pool.release(connection)
    try:
        assert await client.get("pool:key") == b"value"  # not the PONG left behind
    finally:
        await client.delete("pool:key")

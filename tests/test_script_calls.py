"""``ScriptCalls``: the script calls of one loop turn in one round trip, answered as redis-py would answer them."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

import service.script_calls
from service.redis import Pool, connection_pool, round_trip
from service.script_calls import BATCH_MAX, BATCHES_IN_FLIGHT_MAX, Framed, Script, ScriptCalls, Value
from service.settings import RedisURL
from tests.servers import SilentServer, new_redis_server, redis_url

ECHO = Script("return {KEYS[1], ARGV[1], ARGV[2]}")
INCR = Script("return redis.call('INCR', KEYS[1])")
TIMEOUT_S = 0.5
SLACK_S = 1.0  # a loaded machine; the failures below come after one timeout, never after several


def pool_for(url: str) -> Pool:
    return connection_pool(RedisURL.parse("REDIS_URL", url), timeout_s=TIMEOUT_S, retries=0)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_pool(pool_for(redis_url()))
    for script in (ECHO, INCR):  # loaded, so that each batch below is one round trip
        await client.script_load(script.text)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many commands each round trip of ``ScriptCalls`` carried."""
    sent: list[int] = []

    async def counted(pool: ConnectionPool, connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
        sent.append(len(commands))
        return await round_trip(pool, connection, commands)

    monkeypatch.setattr(service.script_calls, "round_trip", counted)
    return sent


async def test_the_calls_of_one_loop_turn_share_one_round_trip(redis: Redis, round_trips: list[int]) -> None:
    calls = ScriptCalls(redis.connection_pool, timeout_s=TIMEOUT_S)

    replies = await asyncio.gather(*(calls.call(ECHO, [f"key-{n}"], [n, "x"]) for n in range(20)))

    assert replies == [[f"key-{n}".encode(), str(n).encode(), b"x"] for n in range(20)]
    assert round_trips == [20]
    await calls.close()


async def test_a_full_batch_goes_at_once_and_the_rest_of_the_turn_in_the_next(
    redis: Redis, round_trips: list[int]
) -> None:
    calls = ScriptCalls(redis.connection_pool, timeout_s=TIMEOUT_S)
    count = 2 * BATCH_MAX + 3

    replies = await asyncio.gather(*(calls.call(ECHO, [f"key-{n}"], [n, "x"]) for n in range(count)))

    assert replies == [[f"key-{n}".encode(), str(n).encode(), b"x"] for n in range(count)]
    assert round_trips == [BATCH_MAX, BATCH_MAX, 3]  # in the order they were made
    await calls.close()


async def test_keys_and_arguments_are_encoded_as_redis_py_encodes_them(redis: Redis) -> None:
    calls = ScriptCalls(redis.connection_pool, timeout_s=TIMEOUT_S)

    reply = await calls.call(ECHO, ["ключ"], [b"\x00\xff", 0.1])
    [encoded] = await asyncio.gather(calls.call(ECHO, [b"k"], [-7, 1e100]))

    assert reply == ["ключ".encode(), b"\x00\xff", b"0.1"]
    assert encoded == [b"k", b"-7", b"1e+100"]
    with pytest.raises(TypeError, match="bool"):
        calls.call(ECHO, ["k"], [True, 1])
    await calls.close()


_VALUES = st.lists(
    st.text() | st.binary() | st.integers() | st.floats(allow_nan=False, allow_infinity=False), max_size=12
)


@given(keys=_VALUES, args=_VALUES)
def test_a_call_is_framed_as_redis_py_packs_the_same_command(keys: list[Value], args: list[Value]) -> None:
    packed = Connection().pack_command("EVALSHA", ECHO.sha, len(keys), *keys, *args)
    assert ECHO.frame(keys, args) == b"".join(packed)


def _in_runs(values: list[Value], cuts: list[int]) -> list[Value | Framed]:
    """``values`` with the stretches between ``cuts`` (odd ones) framed ahead as ``Framed`` runs."""
    bounds = [0, *sorted(min(cut, len(values)) for cut in cuts), len(values)]
    parts: list[Value | Framed] = []
    for n, (start, end) in enumerate(itertools.pairwise(bounds)):
        parts.extend([Framed(*values[start:end])] if n % 2 else values[start:end])
    return parts


@given(
    keys=_VALUES,
    args=_VALUES,
    key_cuts=st.lists(st.integers(0, 12), max_size=4),
    arg_cuts=st.lists(st.integers(0, 12), max_size=4),
)
def test_framed_runs_frame_as_the_values_they_hold(
    keys: list[Value], args: list[Value], key_cuts: list[int], arg_cuts: list[int]
) -> None:
    packed = Connection().pack_command("EVALSHA", ECHO.sha, len(keys), *keys, *args)
    assert ECHO.frame(_in_runs(keys, key_cuts), _in_runs(args, arg_cuts)) == b"".join(packed)


async def test_an_error_reply_is_raised_to_its_caller_alone(redis: Redis, round_trips: list[int]) -> None:
    await redis.set("script-calls:text", "not a number")
    calls = ScriptCalls(redis.connection_pool, timeout_s=TIMEOUT_S)

    outcomes: tuple[Any, ...] = await asyncio.gather(
        calls.call(INCR, ["script-calls:text"], []),
        calls.call(INCR, ["script-calls:counter"], []),
        return_exceptions=True,
    )
    failed, counted = outcomes

    assert isinstance(failed, ResponseError)
    assert "not an integer" in str(failed)
    assert counted == 1
    assert round_trips == [2]
    await redis.delete("script-calls:text", "script-calls:counter")
    await calls.close()


async def test_a_flushed_script_is_loaded_again_and_its_calls_run_once(round_trips: list[int]) -> None:
    server = new_redis_server()
    client = Redis.from_pool(pool_for(server.url))
    calls = ScriptCalls(client.connection_pool, timeout_s=TIMEOUT_S)
    try:
        assert await calls.call(INCR, ["n"], []) == 1  # loaded: a new server has no script
        await client.script_flush()

        replies: tuple[Any, ...] = await asyncio.gather(calls.call(INCR, ["n"], []), calls.call(ECHO, ["k"], [1, 2]))
        assert list(replies) == [2, [b"k", b"1", b"2"]]
        assert await client.get("n") == b"2"
        # Each batch: the EVALSHAs, then the missing scripts' SCRIPT LOADs with those calls again.
        assert round_trips == [1, 2, 2, 4]
    finally:
        await calls.close()
        await client.aclose()
        server.stop()


def handshake_only(data: bytes) -> bytes:
    """A connection's set-up answered (CLIENT SETINFO, CLIENT SETNAME), and nothing after it."""
    return b"+OK\r\n" * (data.count(b"SETINFO") + data.count(b"SETNAME"))


async def test_a_silent_server_fails_every_call_within_one_timeout() -> None:
    # Past the set-up, nothing is answered: a paused or wedged Redis.
    silent = await SilentServer(reply=handshake_only).start()
    client = Redis.from_pool(pool_for(f"redis://127.0.0.1:{silent.port}"))
    calls = ScriptCalls(client.connection_pool, timeout_s=TIMEOUT_S)
    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(
            *(calls.call(ECHO, ["k"], [1, 2], idempotent=n % 2 == 0) for n in range(BATCHES_IN_FLIGHT_MAX + 2)),
            return_exceptions=True,
        )
        took = time.monotonic() - started
        await calls.close()
    finally:
        await client.aclose()
        await silent.close()

    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes
    assert took < TIMEOUT_S + SLACK_S


async def test_a_call_queued_behind_a_batch_in_flight_times_out_from_when_it_was_made() -> None:
    silent = await SilentServer(reply=handshake_only).start()
    client = Redis.from_pool(pool_for(f"redis://127.0.0.1:{silent.port}"))
    calls = ScriptCalls(client.connection_pool, timeout_s=1.0)
    try:
        first = []
        for _ in range(BATCHES_IN_FLIGHT_MAX):  # a batch each (one per loop turn), all unanswered
            first.append(calls.call(ECHO, ["k"], [1, 2]))
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)  # every place in flight is taken: the next call waits for one
        queued_at = time.monotonic()
        with pytest.raises(TimeoutError):
            await calls.call(ECHO, ["k"], [1, 2])
        waited = time.monotonic() - queued_at
        for call in first:
            with pytest.raises(TimeoutError):
                await call
        await calls.close()
    finally:
        await client.aclose()
        await silent.close()

    assert 0.9 < waited < 1.3  # 1 s from when it was made, not the first batches' rest and then 1 s more


@pytest.mark.parametrize("started", [False, True])
async def test_a_batch_cancelled_while_the_loop_closes_fails_its_calls_and_sends_nothing_again(started: bool) -> None:
    silent = await SilentServer(reply=handshake_only).start()
    client = Redis.from_pool(pool_for(f"redis://127.0.0.1:{silent.port}"))
    calls = ScriptCalls(client.connection_pool, timeout_s=5.0)
    try:
        read = calls.call(ECHO, ["k"], [1, 2], idempotent=True)
        await asyncio.sleep(0)  # the loop turn that sends the batch: its task is made, not yet started
        [batch] = calls._inflight
        if started:
            await asyncio.sleep(0.2)  # connected, and waiting for a reply that never comes
        batch.cancel()

        with pytest.raises(ConnectionError, match="cancelled"):
            await read
        await calls.close()
    finally:
        await client.aclose()
        await silent.close()

    assert calls._pending == []


async def test_a_read_whose_connection_broke_goes_once_more_and_a_write_does_not(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = 0

    async def breaks_once(pool: ConnectionPool, connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
        nonlocal broken
        if broken == 0:
            broken += 1
            await connection.disconnect(nowait=True)
            await pool.release(connection)
            raise ConnectionError("Connection reset by peer")
        return await round_trip(pool, connection, commands)

    monkeypatch.setattr(service.script_calls, "round_trip", breaks_once)
    await redis.delete("script-calls:writes")
    calls = ScriptCalls(redis.connection_pool, timeout_s=TIMEOUT_S)

    outcomes: tuple[Any, ...] = await asyncio.gather(
        calls.call(ECHO, ["k"], [1, 2], idempotent=True),
        calls.call(INCR, ["script-calls:writes"], []),
        return_exceptions=True,
    )
    read, write = outcomes

    assert read == [b"k", b"1", b"2"]
    assert isinstance(write, ConnectionError)
    assert await redis.get("script-calls:writes") is None  # never sent again
    await calls.close()


async def test_a_cancelled_caller_leaves_the_rest_of_its_batch_answered(redis: Redis) -> None:
    calls = ScriptCalls(redis.connection_pool, timeout_s=TIMEOUT_S)
    gone = calls.call(ECHO, ["gone"], [1, 2])
    kept = calls.call(ECHO, ["kept"], [1, 2])
    gone.cancel()

    assert await kept == [b"kept", b"1", b"2"]
    await calls.close()
    assert redis.connection_pool._in_use_connections == set()


async def test_a_connection_the_server_closed_fails_the_round_trip_and_is_not_reused(redis: Redis) -> None:
    pool = redis.connection_pool
    connection = await pool.get_connection()
    [client_id] = await round_trip(pool, connection, [b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n"])
    async with Redis.from_url(redis_url()) as other:
        assert await other.client_kill_filter(_id=str(client_id)) == 1

    with pytest.raises(ConnectionError):
        await round_trip(pool, connection, [b"*1\r\n$4\r\nPING\r\n"])

    assert connection._reader is None  # disconnected, and back in the pool to be connected afresh
    assert await redis.ping()

"""The limiter itself: batching per loop turn, and never sending a call twice (on a cluster: test_ratelimit_cluster)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from service.ratelimit.limiter import BATCHES_IN_FLIGHT_MAX, Limiter, Outcome
from service.ratelimit.policy import parse_policies
from service.ratelimit.script import ALLOW_OOM_SCRIPT, ALLOW_OOM_SCRIPT_SHA, SCRIPT
from service.redis import IDLE_CONNECTION_MAX_S, read_replies
from service.script_calls import BATCH_MAX
from tests.servers import SilentServer, redis_url

POLICIES = parse_policies(
    {
        "plans": {"default": {"*": [{"name": "burst", "capacity": 3, "per_second": 0.01}]}},
        "anonymous": {"*": [{"name": "address", "capacity": 1, "per_second": 0.01}]},
    }
)
ROUTE = POLICIES.plan("default").for_route(None)
LIMITER_CLIENT_NAME = f"limiter-test-{uuid.uuid4().hex}"  # finds the limiter's connection in CLIENT LIST


def round_trips(limiter: Limiter) -> float:
    [metric] = limiter.metrics.redis_latency.collect()
    return next(s.value for s in metric.samples if s.name.endswith("_count"))


async def _limiter_connection_ids(redis: Redis) -> set[str]:
    return {client["id"] for client in await redis.client_list() if client["name"] == LIMITER_CLIENT_NAME}


@pytest.fixture
async def limiter_redis(redis: Redis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url(), client_name=LIMITER_CLIENT_NAME)
    try:
        yield client
    finally:
        await client.aclose()


async def test_decisions_of_one_loop_turn_share_one_round_trip(limiter_redis: Redis) -> None:
    limiter = Limiter(limiter_redis, deadline_s=1.0)
    callers = [f"tenant-{n}" for n in range(BATCH_MAX // 4)]

    decisions = await asyncio.gather(*(limiter.decide(caller, ROUTE) for caller in callers * 4))

    outcomes = [d.outcome for d in decisions]
    assert outcomes == [Outcome.ALLOWED] * len(callers) * 3 + [Outcome.LIMITED] * len(callers)  # 3 each, in order
    assert round_trips(limiter) == 1
    await limiter.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(
    limiter_redis: Redis, redis: Redis
) -> None:
    limiter = Limiter(limiter_redis, deadline_s=1.0)
    assert (await limiter.decide("acme", ROUTE)).outcome == Outcome.ALLOWED
    [held] = [client for client in await redis.client_list() if client["name"] == LIMITER_CLIENT_NAME]
    await redis.client_kill_filter(_id=held["id"])  # as a Redis restart or an idle timeout would
    # Wait until the limiter's idle connection has read the EOF (the state KeptConnections checks).
    [(idle, _)] = limiter._connections.idle
    deadline = time.monotonic() + 5
    while idle._reader is not None and not idle._reader.at_eof():
        assert time.monotonic() < deadline, "the closed connection never read EOF"
        await asyncio.sleep(0.001)

    decision = await limiter.decide("acme", ROUTE)

    assert decision.outcome == Outcome.ALLOWED
    assert [state.remaining for state in decision.states] == [1]  # the same bucket, on a new connection
    assert limiter.metrics.redis_errors == {}
    await limiter.close()


def _get(key: str) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key.encode())


async def test_reads_riding_with_the_decisions_come_back_in_the_same_round_trip(
    limiter_redis: Redis, redis: Redis
) -> None:
    await redis.set("ride:a", "1")
    limiter = Limiter(limiter_redis, deadline_s=1.0, carries_reads=True)
    decisions = [limiter.submit(f"tenant-{n}", ROUTE) for n in range(3)]
    reads = [limiter.ride(_get("ride:a")), limiter.ride(_get("ride:none")), limiter.ride(b"*1\r\n$6\r\nNOSUCH\r\n")]

    assert [(await d).outcome for d in decisions] == [Outcome.ALLOWED] * 3
    first, missing, error = [await read for read in reads]
    assert (first, missing) == (b"1", None)
    assert isinstance(error, ResponseError)  # in place, as a value: nobody has to retrieve it
    assert round_trips(limiter) == 1
    await limiter.close()


@pytest.fixture
def slow_reads(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The trailing replies of a kept connection (the reads that rode) wait until the event is set,
    as a large job result on its way would."""
    release = asyncio.Event()

    async def slow(pool: Any, connection: Any, count: int) -> list[Any]:
        await release.wait()
        return await read_replies(pool, connection, count)

    monkeypatch.setattr("service.ratelimit.connections.read_replies", slow)
    return release


async def test_decisions_are_answered_before_the_reads_that_rode_with_them(
    limiter_redis: Redis, redis: Redis, slow_reads: asyncio.Event
) -> None:
    await redis.set("ride:a", "1")
    limiter = Limiter(limiter_redis, deadline_s=5.0, carries_reads=True)
    deciding = limiter.submit("acme", ROUTE)
    read = limiter.ride(_get("ride:a"))

    assert (await asyncio.wait_for(deciding, 1)).outcome == Outcome.ALLOWED
    assert not read.done()
    assert limiter._unanswered == 0  # its place in flight given back: the next batch does not wait for the read
    slow_reads.set()
    assert await asyncio.wait_for(read, 1) == b"1"
    await limiter.close()


async def test_a_read_still_coming_at_the_deadline_is_answered_with_an_error_value(
    limiter_redis: Redis, slow_reads: asyncio.Event
) -> None:
    limiter = Limiter(limiter_redis, deadline_s=0.05, carries_reads=True)
    deciding = limiter.submit("acme", ROUTE)
    read = limiter.ride(_get("ride:a"))

    assert (await deciding).outcome == Outcome.ALLOWED  # Redis's answer, not the deadline's
    assert isinstance(await asyncio.wait_for(read, 1), RedisError)  # the reader reads it on its own
    assert limiter.metrics.redis_errors == {}  # the decisions were in time
    await limiter.close()


async def test_a_full_batch_goes_at_once_with_its_riders(limiter_redis: Redis, redis: Redis) -> None:
    await redis.set("ride:a", "1")
    limiter = Limiter(limiter_redis, deadline_s=1.0, carries_reads=True)
    sizes: list[int] = []
    send = limiter._send

    async def counted(commands: list[bytes], trailing: Sequence[bytes] = (), between: Any = None) -> list[Any]:
        sizes.append(len(trailing))  # one read rides with each decision here
        return await send(commands, trailing, between)

    limiter._send = counted  # type: ignore[method-assign]
    callers = [f"tenant-{n}" for n in range(BATCH_MAX + 2)]
    deciding = []
    reads = []
    for caller in callers:  # one loop turn
        deciding.append(limiter.submit(caller, ROUTE))
        reads.append(limiter.ride(_get("ride:a")))

    assert [(await d).outcome for d in deciding] == [Outcome.ALLOWED] * len(callers)
    assert [await read for read in reads] == [b"1"] * len(callers)
    assert sizes == [BATCH_MAX, 2]  # each read in the batch of its own decision
    await limiter.close()


async def test_a_read_whose_batch_was_cancelled_before_it_started_is_answered() -> None:
    limiter = Limiter(Redis.from_url("redis://127.0.0.1:1/0"), deadline_s=5.0, carries_reads=True)
    deciding = limiter.submit("acme", ROUTE)
    read = limiter.ride(_get("ride:a"))
    await asyncio.sleep(0)
    [batch] = limiter._inflight
    batch.cancel()

    assert (await deciding).outcome == Outcome.FAIL_OPEN
    assert isinstance(await read, RedisError)
    await limiter.close()


async def test_a_call_that_may_have_run_is_never_sent_again() -> None:
    # Answer the connection set-up (CLIENT SETINFO), then take the script call and never reply.
    server = await SilentServer(reply=lambda data: b"+OK\r\n" * data.count(b"SETINFO")).start()
    port = server.port
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    limiter = Limiter(client, deadline_s=0.05)
    try:
        decision = await limiter.decide("acme", ROUTE)
        await asyncio.sleep(0.3)  # time for any (wrong) retry to arrive
    finally:
        await limiter.close()
        await client.aclose()
        await server.close()

    assert decision.outcome == Outcome.FAIL_OPEN
    assert server.received.count(b"EVALSHA") == 1


async def test_a_batch_cancelled_before_it_started_answers_its_requests_and_frees_its_place() -> None:
    limiter = Limiter(Redis.from_url("redis://127.0.0.1:1/0"), deadline_s=5.0)
    decision = limiter.submit("acme", ROUTE)
    await asyncio.sleep(0)  # the loop turn that sends the batch: its task is made, not yet started
    [batch] = limiter._inflight
    batch.cancel()

    assert (await decision).outcome == Outcome.FAIL_OPEN
    assert limiter._unanswered == 0
    assert limiter.metrics.redis_errors == {"cancelled": 1}
    await limiter.close()


async def test_a_redis_that_cannot_read_the_allow_oom_flag_gets_the_plain_script(
    limiter_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis 6.2 refuses a script that starts with a "#!" flags line; it then gets the plain one.
    await limiter_redis.script_flush()  # earlier tests loaded the flagged script
    loaded: list[str] = []
    script_load = limiter_redis.script_load

    async def like_redis_6_2(script: str) -> str:
        loaded.append(script)
        if script.startswith("#!"):
            raise ResponseError("Error compiling script (new function): user_script:1: unexpected symbol near '#'")
        loaded_sha: str = await script_load(script)
        return loaded_sha

    monkeypatch.setattr(limiter_redis, "script_load", like_redis_6_2)
    limiter = Limiter(limiter_redis, deadline_s=1.0)

    decisions = [await limiter.decide("acme", ROUTE) for _ in range(4)]

    assert [d.outcome for d in decisions] == [Outcome.ALLOWED] * 3 + [Outcome.LIMITED]
    assert loaded == [ALLOW_OOM_SCRIPT, SCRIPT]  # one fallback, then the plain script's SHA every time
    await limiter.close()


async def test_warming_up_connects_and_loads_the_script_before_the_first_request(
    limiter_redis: Redis, redis: Redis
) -> None:
    await redis.script_flush()  # a Redis that has not seen the script: the first batch would reload it
    limiter = Limiter(limiter_redis, deadline_s=1.0)

    await limiter.warm_up(timeout_s=5.0)

    assert await redis.script_exists(ALLOW_OOM_SCRIPT_SHA) == [True]
    connected = await _limiter_connection_ids(redis)
    assert len(connected) == BATCHES_IN_FLIGHT_MAX
    decision = await limiter.decide("acme", ROUTE)
    assert decision.outcome == Outcome.ALLOWED
    assert limiter.metrics.redis_errors == {}  # no NOSCRIPT round trip inside the first request's deadline
    assert await _limiter_connection_ids(redis) == connected  # and no connect: it used one opened already
    await limiter.close()


async def test_warming_up_against_a_redis_that_never_answers_ends_at_its_bound() -> None:
    server = await SilentServer().start()
    client = Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
    limiter = Limiter(client, deadline_s=0.05)
    try:
        started = time.monotonic()
        await limiter.warm_up(timeout_s=0.2)
        waited_s = time.monotonic() - started
        decision = await limiter.decide("acme", ROUTE)
    finally:
        await limiter.close()
        await client.aclose()
        await server.close()

    assert waited_s < 1.0  # its bound (0.2 s), not a wait on the silent server
    assert decision.outcome == Outcome.FAIL_OPEN  # the batches fall back as on any sick Redis
    assert limiter.metrics.redis_errors == {"timeout": 1}


async def test_a_batch_is_answered_at_its_deadline_even_when_its_cancel_is_lost(
    limiter_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = Limiter(limiter_redis, deadline_s=0.05)

    async def send_swallowing_the_cancel(commands: list[bytes]) -> list[Any]:
        # As Python 3.11's wait_for (around redis-py's writes) can: the cancel lands and is lost.
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            await asyncio.sleep(1)
        return []

    monkeypatch.setattr(limiter, "_send", send_swallowing_the_cancel)
    started = time.monotonic()
    decision = await limiter.decide("acme", ROUTE)
    waited_s = time.monotonic() - started

    assert decision.outcome == Outcome.FAIL_OPEN
    assert waited_s < 0.5  # the deadline (0.05 s), not the lost cancel's full second
    assert limiter.metrics.redis_errors == {"timeout": 1}
    await limiter.close()


async def test_a_connection_idle_past_the_limit_is_replaced_before_a_batch(limiter_redis: Redis) -> None:
    now = [0.0]
    limiter = Limiter(limiter_redis, deadline_s=1.0, clock=lambda: now[0])
    assert (await limiter.decide("acme", ROUTE)).outcome == Outcome.ALLOWED
    [(connection, _)] = limiter._connections.idle
    first_stream = connection._reader

    now[0] += IDLE_CONNECTION_MAX_S + 1  # a managed Redis or a NAT may have dropped it silently
    decision = await limiter.decide("acme", ROUTE)

    [(connection, _)] = limiter._connections.idle
    assert decision.outcome == Outcome.ALLOWED
    assert connection._reader is not first_stream  # closed and opened again, not reused as it was
    await limiter.close()


async def test_decisions_arriving_while_batches_are_unanswered_wait_and_go_out_together(
    limiter_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = Limiter(limiter_redis, deadline_s=5.0)
    sizes: list[int] = []
    evalsha = limiter._framer.evalsha

    def counted_evalsha(group: list[Any]) -> bytes:
        sizes.append(len(group))
        return evalsha(group)

    monkeypatch.setattr(limiter._framer, "evalsha", counted_evalsha)
    answering = asyncio.Event()
    send = limiter._send

    async def held_send(commands: list[bytes]) -> list[Any]:
        await answering.wait()
        return await send(commands)

    monkeypatch.setattr(limiter, "_send", held_send)
    decisions = []
    turns = BATCHES_IN_FLIGHT_MAX + 3
    for turn in range(turns):  # a few loop turns apart, three decisions each
        decisions += [asyncio.ensure_future(limiter.decide(f"tenant-{turn}-{n}", ROUTE)) for n in range(3)]
        for _ in range(3):
            await asyncio.sleep(0)

    assert sizes == [3] * BATCHES_IN_FLIGHT_MAX  # the rest wait for an answer
    answering.set()
    outcomes = [decision.outcome for decision in await asyncio.gather(*decisions)]

    assert outcomes == [Outcome.ALLOWED] * 3 * turns
    assert sizes == [3] * BATCHES_IN_FLIGHT_MAX + [3 * 3]  # the last three turns' in one round trip
    await limiter.close()


async def test_a_decision_waiting_behind_hung_batches_is_answered_by_its_own_deadline(
    limiter_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = Limiter(limiter_redis, deadline_s=0.1)

    async def hung_send(commands: list[bytes]) -> list[Any]:
        await asyncio.sleep(5)
        return []

    monkeypatch.setattr(limiter, "_send", hung_send)
    holding = []
    for n in range(BATCHES_IN_FLIGHT_MAX):  # each a batch of its own, holding a place in flight
        holding.append(asyncio.ensure_future(limiter.decide(f"tenant-{n}", ROUTE)))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(limiter._inflight) == n + 1
    await asyncio.sleep(0.05)
    started = time.monotonic()
    decision = await limiter.decide("waiting", ROUTE)
    waited_s = time.monotonic() - started

    assert decision.outcome == Outcome.FAIL_OPEN
    assert waited_s < 0.1 + 0.4  # its deadline, plus slack for a loaded machine
    assert [task.result().outcome for task in holding] == [Outcome.FAIL_OPEN] * BATCHES_IN_FLIGHT_MAX
    await limiter.close()


async def _stalled_decision() -> tuple[str, dict[str, int]]:
    """A decision whose batch is written, after which the process stalls for twice the deadline (a
    CPU-bound turn, a throttled machine) while Redis answers at once: its outcome, and the Redis
    errors the limiter counted meanwhile."""
    client = Redis.from_url(redis_url(), client_name=LIMITER_CLIENT_NAME)
    limiter = Limiter(client, deadline_s=0.05)
    try:
        await limiter.decide("warm-up", ROUTE)  # the connection is open and the script loaded
        errors = dict(limiter.metrics.redis_errors)
        loop = asyncio.get_running_loop()
        decision = limiter.submit(f"acme-{uuid.uuid4().hex}", ROUTE)
        loop.call_soon(loop.call_soon, time.sleep, 0.1)  # next turn writes the batch; the stall follows it
        outcome = (await decision).outcome
        return outcome, {kind: n - errors.get(kind, 0) for kind, n in limiter.metrics.redis_errors.items() if n}
    finally:
        await limiter.close()
        await client.aclose()


def _on_uvloop() -> tuple[str, dict[str, int]]:
    import uvloop  # type: ignore[import-not-found,unused-ignore]

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(_stalled_decision())
    finally:
        loop.close()


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_a_loop_stalled_past_the_deadline_takes_the_answer_redis_sent_in_time(
    redis: Redis, event_loop: str
) -> None:
    """uvloop (libuv) runs due timers before it polls sockets; asyncio's loop runs them before the
    reads the poll woke. Either way the deadline's timer comes before the answer is read."""
    outcome, errors = await (_stalled_decision() if event_loop == "asyncio" else asyncio.to_thread(_on_uvloop))

    assert outcome == Outcome.ALLOWED  # Redis's verdict, not a fail-open
    assert not any(errors.values())

"""The Lua token bucket, run in real Redis, against a pure-Python bucket with the same clock.

The script's test seam is its first argument: a time in microseconds instead of Redis
``TIME``, so the model and the script see the same clock, stepping forwards and back.
The model counts tokens as exact fractions, independently of the script's integer units.
Arguments and reply go through ``service.ratelimit.script``, the limiter's own layout.
Each test runs on a single Redis, on a Redis Cluster node (cluster mode checks every key a
script touches against the slot of its declared keys), and there as ``CROSS_SLOT_SCRIPT``
(no declared keys, the keys in ARGV: how the limiter decides a node's batch in one call).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from redis.crc import key_slot

from service.ratelimit.policy import Bucket
from service.ratelimit.script import (
    CROSS_SLOT_SCRIPT,
    CROSS_SLOT_SCRIPT_SHA,
    FULL_IN_US,
    OK,
    REMAINING_UNITS,
    REPLY_PER_BUCKET,
    RETRY_IN_US,
    SCRIPT,
    SCRIPT_SHA,
    argv,
    bucket_key,
)
from tests.servers import redis_url, shared_cluster

START_US = 1_700_000_000_000_000
CALLER = "model"


class KeysInArgv(Redis):
    """A cluster node's client on which the script runs as ``CROSS_SLOT_SCRIPT`` (keys in ARGV), as per node."""


@pytest.fixture(scope="module", params=["single", "cluster", "cluster-keys-in-argv"])
def sync_redis(request: pytest.FixtureRequest) -> Iterator[Redis]:
    """A single Redis, or the Redis Cluster node that serves the model caller's slot (where the script runs there)."""
    if request.param == "single":
        client = Redis.from_url(redis_url())
    else:
        cluster = shared_cluster()
        server = cluster.owner(key_slot(key_of(Bucket("any", 1, Fraction(1))).encode()))
        client = (KeysInArgv if request.param == "cluster-keys-in-argv" else Redis)(port=server.port)
    client.flushdb()
    client.script_load(SCRIPT)
    client.script_load(CROSS_SLOT_SCRIPT)
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def key_of(bucket: Bucket) -> str:
    return bucket_key(CALLER, bucket.name)


@dataclass(frozen=True)
class Reading:
    ok: bool
    tokens: Fraction
    full_in_us: int
    retry_in_us: int


def script_call(redis: Redis, keys: list[str], args: list[str]) -> tuple[str, int, list[str]]:
    """EVALSHA's SHA, number of keys, keys and arguments; for ``KeysInArgv`` no keys, and the keys first in ARGV."""
    if isinstance(redis, KeysInArgv):
        return CROSS_SLOT_SCRIPT_SHA, 0, [str(len(keys)), *keys, *args]
    return SCRIPT_SHA, len(keys), [*keys, *args]


def run_script(
    redis: Redis,
    now_us: int | None,
    decisions: list[tuple[int, list[tuple[Bucket, int]]]],
    ttls_ms: dict[str, int] | None = None,
) -> list[tuple[bool, list[Reading]]]:
    """One script call; each decision is (how many leading buckets it only reads, [(bucket, cost)]); readings in tokens.

    With ``ttls_ms``, the keys' expiries are read and removed in the same transaction
    (so that real time cannot expire what the driven clock still counts as partly empty).
    """
    keys = [key_of(bucket) for _, items in decisions for bucket, _ in items]
    wire = argv([([replace(b, cost=cost) for b, cost in items], read_only) for read_only, items in decisions], now_us)
    args = [arg.decode() for arg in wire]
    if ttls_ms is None:
        sha, numkeys, keys_and_args = script_call(redis, keys, args)
        flat = cast(list[int], redis.evalsha(sha, numkeys, *keys_and_args))
    else:
        unique = list(dict.fromkeys(keys))
        pipe = redis.pipeline(transaction=True)
        sha, numkeys, keys_and_args = script_call(redis, keys, args)
        pipe.evalsha(sha, numkeys, *keys_and_args)
        for key in unique:
            pipe.pttl(key)
            pipe.persist(key)
        flat, *rest = pipe.execute()
        ttls_ms.update(zip(unique, rest[::2], strict=True))
    results = []
    at = 0
    for _, items in decisions:
        admitted = flat[at] == 1
        at += 1
        readings = []
        for bucket, _ in items:
            ok, units = flat[at + OK] == 1, Fraction(flat[at + REMAINING_UNITS], bucket.units_per_token)
            readings.append(Reading(ok, units, flat[at + FULL_IN_US], flat[at + RETRY_IN_US]))
            at += REPLY_PER_BUCKET
        results.append((admitted, readings))
    assert at == len(flat)  # nothing left over: the reply has exactly the layout script.py reads
    return results


@dataclass
class ModelBucket:
    """A token bucket in exact arithmetic: the reference the script must match.

    Only spending stores anything (a refused or read-only request changes nothing), and the
    stored time never moves backwards, so a clock that steps back refills nothing.
    """

    bucket: Bucket
    stored_tokens: Fraction = field(init=False)
    stored_us: int | None = None

    def __post_init__(self) -> None:
        self.stored_tokens = Fraction(self.bucket.capacity)

    def tokens_at(self, now_us: int) -> Fraction:
        if self.stored_us is None or now_us <= self.stored_us:
            return self.stored_tokens
        gained = Fraction(now_us - self.stored_us, 1_000_000) * self.bucket.per_second
        return min(Fraction(self.bucket.capacity), self.stored_tokens + gained)

    def spend(self, now_us: int, cost: int) -> None:
        self.stored_tokens = self.tokens_at(now_us) - cost
        self.stored_us = now_us if self.stored_us is None else max(self.stored_us, now_us)

    def reading(self, now_us: int, ok: bool, cost: int) -> Reading:
        tokens = self.tokens_at(now_us)
        rate = self.bucket.per_second
        full_in = math.ceil((self.bucket.capacity - tokens) * 1_000_000 / rate)
        retry = -1 if cost > self.bucket.capacity else max(0, math.ceil((cost - tokens) * 1_000_000 / rate))
        return Reading(ok, tokens, full_in, retry)


def model_decide(
    models: dict[str, ModelBucket], now_us: int, read_only: int, items: list[tuple[Bucket, int]]
) -> tuple[bool, list[Reading]]:
    """The first ``read_only`` buckets are reported only: they neither spend nor refuse."""
    oks = [models[b.name].tokens_at(now_us) >= cost and cost <= b.capacity for b, cost in items]
    spent = [(ok, bucket, cost) for ok, (bucket, cost) in list(zip(oks, items, strict=True))[read_only:]]
    admitted = all(ok for ok, bucket, _ in spent if not bucket.shadow)
    if admitted:
        for ok, bucket, cost in spent:
            if ok:
                models[bucket.name].spend(now_us, cost)
    return admitted, [models[b.name].reading(now_us, ok, cost) for ok, (b, cost) in zip(oks, items, strict=True)]


rates = st.sampled_from(["0.001", "0.1", "0.25", "1", "1.5", "3.3", "7", "10", "250", "1000", "12345.678"])


@st.composite
def buckets(draw: st.DrawFn) -> list[Bucket]:
    count = draw(st.integers(1, 3))
    result = []
    for index in range(count):
        capacity = draw(st.integers(1, 50))
        result.append(
            Bucket(
                name=f"b{index}",
                capacity=capacity,
                per_second=Fraction(draw(rates)),
                cost=1,
                shadow=draw(st.booleans()) if index > 0 else False,
            )
        )
    return result


steps = st.lists(
    st.tuples(
        st.one_of(st.integers(-3_000_000, 0), st.integers(0, 200_000), st.integers(0, 20_000_000)),  # clock step
        st.lists(
            st.tuples(
                st.integers(0, 3),  # leading buckets only read: 0 spends all, 3 (or more) reads all
                st.lists(st.one_of(st.integers(1, 4), st.integers(1, 60)), min_size=3, max_size=3),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=buckets(), script=steps)
def test_script_matches_exact_token_bucket_model(
    sync_redis: Redis, policy: list[Bucket], script: list[tuple[int, list[tuple[int, list[int]]]]]
) -> None:
    sync_redis.delete(*[key_of(b) for b in policy])
    models = {b.name: ModelBucket(b) for b in policy}
    now = START_US
    for step_us, decisions in script:
        now += step_us
        calls = [(read_only, [(b, costs[i]) for i, b in enumerate(policy)]) for read_only, costs in decisions]
        expected = [model_decide(models, now, read_only, items) for read_only, items in calls]
        ttls_ms: dict[str, int] = {}
        assert run_script(sync_redis, now, calls, ttls_ms) == expected
        for bucket in policy:
            model = models[bucket.name]
            ttl_ms = ttls_ms[key_of(bucket)]
            if ttl_ms >= 0:
                # The key lives until the bucket is full again, then vanishes (missing = full).
                full_in_ms = max(1, math.ceil(model.reading(now, True, 1).full_in_us / 1000))
                assert full_in_ms - 1000 <= ttl_ms <= full_in_ms
            elif ttl_ms == -2:  # never written: nothing was ever spent from it
                assert model.stored_us is None


def test_cost_above_capacity_is_refused_and_changes_nothing(sync_redis: Redis) -> None:
    small = Bucket("small", capacity=5, per_second=Fraction(1))
    large = Bucket("large", capacity=100, per_second=Fraction(1))
    sync_redis.delete(key_of(small), key_of(large))
    run_script(sync_redis, START_US, [(0, [(small, 2), (large, 10)])])
    before = [sync_redis.get(key_of(b)) for b in (small, large)]

    [(admitted, readings)] = run_script(sync_redis, START_US, [(0, [(small, 6), (large, 1)])])

    assert not admitted
    assert readings[0].retry_in_us == -1
    assert [sync_redis.get(key_of(b)) for b in (small, large)] == before


def test_one_refused_bucket_means_no_bucket_spends(sync_redis: Redis) -> None:
    roomy = Bucket("roomy", capacity=10, per_second=Fraction(1))
    tight = Bucket("tight", capacity=1, per_second=Fraction(1, 1000))
    sync_redis.delete(key_of(roomy), key_of(tight))
    run_script(sync_redis, START_US, [(0, [(roomy, 1), (tight, 1)])])

    [(admitted, readings)] = run_script(sync_redis, START_US, [(0, [(roomy, 1), (tight, 1)])])

    assert not admitted
    assert readings[0].tokens == 9  # the roomy bucket paid only for the first request


def test_clock_stepping_back_refills_nothing(sync_redis: Redis) -> None:
    bucket = Bucket("clock", capacity=10, per_second=Fraction(1))
    sync_redis.delete(key_of(bucket))
    run_script(sync_redis, START_US, [(0, [(bucket, 10)])])
    run_script(sync_redis, START_US - 5_000_000, [(0, [(bucket, 1)])])  # back 5 s: nothing to spend

    [(_, [back_then_forward])] = run_script(sync_redis, START_US + 2_000_000, [(1, [(bucket, 1)])])

    assert back_then_forward.tokens == 2  # two seconds after the last real spend, not seven


def test_redis_time_is_used_without_the_test_clock(sync_redis: Redis) -> None:
    bucket = Bucket("live", capacity=3, per_second=Fraction(1, 100))
    sync_redis.delete(key_of(bucket))
    results = run_script(sync_redis, None, [(0, [(bucket, 1)])] * 4)
    assert [admitted for admitted, _ in results] == [True, True, True, False]
    ttl_ms: int = sync_redis.pttl(key_of(bucket))  # type: ignore[assignment]
    assert 0 < ttl_ms <= 300_000


def test_read_only_buckets_are_reported_but_neither_spend_nor_refuse(sync_redis: Redis) -> None:
    common = Bucket("common", capacity=2, per_second=Fraction(1, 1000))
    own = Bucket("own", capacity=3, per_second=Fraction(1, 1000))
    sync_redis.delete(key_of(common), key_of(own))
    run_script(sync_redis, START_US, [(0, [(common, 2)])])  # the common bucket is empty now

    readings = run_script(sync_redis, START_US, [(1, [(common, 1), (own, 1)])] * 4)

    assert [admitted for admitted, _ in readings] == [True, True, True, False]  # own's three tokens, then refused
    assert [r[0].tokens for _, r in readings] == [0, 0, 0, 0]  # read, never spent
    assert [r[1].tokens for _, r in readings] == [2, 1, 0, 0]

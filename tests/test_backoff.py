"""The one backoff: exponential with full jitter under a cap, also inside redis-py's retries."""

from __future__ import annotations

import random

import pytest
from redis.exceptions import ConnectionError

from service import redis as service_redis
from service.backoff import Backoff
from service.redis import RedisBackoff, connection_pool
from service.settings import Settings


def test_backoff_is_full_jitter_under_an_exponential_ceiling_that_caps() -> None:
    backoff = Backoff(base_s=1.0, cap_s=10.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (12, 10.0)]:
        delays = [backoff.delay_s(attempt, rng) for _ in range(500)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > 0.8 * ceiling  # the whole range is used, not a fixed step
        assert min(delays) < 0.2 * ceiling


def test_backoff_after_thousands_of_attempts_waits_at_most_the_cap() -> None:
    backoff = Backoff(base_s=0.2, cap_s=5.0)
    assert backoff.ceiling_s(5_000) == 5.0  # 0.2 * 2**4999 would not fit a float
    assert 0.0 <= backoff.delay_s(5_000) <= 5.0


def test_redis_py_failures_count_as_attempts_from_one() -> None:
    adapter = RedisBackoff(Backoff(base_s=0.1, cap_s=1.0))
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 1.0)]:
        waits = [adapter.compute(failures) for _ in range(300)]
        assert all(0.0 <= wait <= ceiling for wait in waits)
        assert max(waits) > 0.8 * ceiling


async def test_redis_commands_are_retried_with_the_project_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("redis.asyncio.retry.sleep", no_sleep)
    # A backoff that redis-py's own (0.05 s base, 1 s cap) cannot be mistaken for.
    monkeypatch.setattr(service_redis, "COMMAND_RETRY_BACKOFF", Backoff(base_s=7.0, cap_s=7.0))
    url = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}).require_redis()
    retry = connection_pool(url, retries=20).connection_kwargs["retry"]
    failures = iter(ConnectionError(f"dropped {n}") for n in range(20))

    async def command() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "PONG"

    async def on_failure(error: Exception) -> None:
        pass

    assert await retry.call_with_retry(command, on_failure) == "PONG"
    assert len(waits) == 20
    assert all(0.0 <= wait <= 7.0 for wait in waits)
    assert max(waits) > 1.0

"""Wake-ups: an idle worker blocks on a Redis list instead of polling the queue.

Every enqueue pushes a token to ``jobs:wake`` (``enqueue.lua``), and so do a retry, a
hand-back (``finish.lua``) and a claim that leaves work a peer should watch
(``claim.lua``). An idle worker waits in ``BLPOP`` on that list, on a connection of its
own, until a token comes or the next thing it knows of is due.
"""

from __future__ import annotations

from redis.asyncio import ConnectionPool, Redis

from jobs.redis_keys import WAKE_KEY
from service.redis import connection_pool
from service.settings import Settings

__all__ = ["WakeUps"]


class WakeUps:
    """One worker's wait for a wake-up token, and the way its ``stop`` ends that wait."""

    def __init__(self, settings: Settings, *, worker_id: str, redis: Redis) -> None:
        # ``stop`` pushes here (through ``redis``, the worker's other connection) to end the
        # wait: cancelling a redis-py call is not reliable (a cancel that lands while the
        # connection is being set up is lost).
        self._stop_key = f"{WAKE_KEY}:{worker_id}"
        self._redis = redis
        # The blocking pop waits up to the idle poll; its read timeout must be longer.
        self._blocking = Redis(
            connection_pool=connection_pool(
                settings.require_redis(),
                max_connections=1,
                timeout_s=settings.redis_timeout_s,
                retries=0,
                client_name="ottoai-worker-wake",
                socket_timeout_s=settings.job_idle_poll_s + settings.redis_timeout_s,
            )
        )

    @property
    def pool(self) -> ConnectionPool:
        """The blocking pop's own pool (one connection), for the process's pool metrics."""
        return self._blocking.connection_pool

    async def wait(self, timeout_s: float) -> None:
        """Block until a token is pushed (an enqueue, a peer, ``interrupt``) or ``timeout_s`` passes."""
        if timeout_s <= 0.001:
            return
        # Redis >= 6 takes a fractional timeout; redis-py types it as int.
        await self._blocking.blpop([WAKE_KEY, self._stop_key], timeout=round(timeout_s, 3))  # type: ignore[arg-type,misc]

    async def interrupt(self) -> None:
        """End the current (or the next) ``wait`` at once."""
        await self._redis.lpush(self._stop_key, "stop")  # type: ignore[misc]

    async def forget(self) -> None:
        """Drop an interruption nobody waited for."""
        await self._redis.delete(self._stop_key)

    async def close(self) -> None:
        await self._blocking.aclose(close_connection_pool=True)

"""One way to connect to Redis, for the web process, the worker and the command line.

Managed Redis (Upstash, Fly) closes idle connections and fails over, so every pool has
connect and read timeouts, TCP keep-alive and a health check of connections that sat idle.
Retries are opt-in per pool: a command that may already have run on the server (a
rate-limit script call, say) must never be sent twice, so the limiter asks for none.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError

from service.backoff import Backoff
from service.settings import RedisURL, Settings

__all__ = ["RedisBackoff", "cancel_until_done", "connection_pool", "redis_client"]

HEALTH_CHECK_INTERVAL_S = 30
# A retried command waits up to 0.1 s, then 0.2 s, 0.4 s, ... at most 1 s.
COMMAND_RETRY_BACKOFF = Backoff(base_s=0.1, cap_s=1.0)


class RedisBackoff(AbstractBackoff):
    """The project's ``Backoff`` in redis-py's retry loop (which counts ``failures`` from 1)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def compute(self, failures: int) -> float:
        return self.backoff.delay_s(failures)


def connection_pool(
    url: RedisURL,
    *,
    max_connections: int = 50,
    timeout_s: float = 5.0,
    retries: int = 3,
    client_name: str = "ottoai",
    socket_timeout_s: float | None = -1.0,
) -> ConnectionPool:
    """A connection pool for ``url``.

    ``socket_timeout_s`` is the read timeout; ``None`` waits forever (for blocking pops that
    carry their own timeout) and the default ``-1`` means "same as ``timeout_s``".
    ``rediss://`` verifies the server certificate unless the URL itself says otherwise
    (``?ssl_cert_reqs=none``).
    """
    retry = Retry(RedisBackoff(COMMAND_RETRY_BACKOFF), retries) if retries > 0 else Retry(NoBackoff(), 0)
    options: dict[str, object] = {
        "max_connections": max_connections,
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s if socket_timeout_s == -1.0 else socket_timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": retry,
        "retry_on_error": [ConnectionError, TimeoutError] if retries > 0 else [],
        "client_name": client_name,
    }
    if url.scheme != "unix":  # unix sockets take no keep-alive option (redis-py raises TypeError)
        options["socket_keepalive"] = True
    if url.tls and "ssl_cert_reqs" not in url.url:
        options["ssl_cert_reqs"] = "required"
    return ConnectionPool.from_url(url.url, **options)


def redis_client(settings: Settings, *, client_name: str = "ottoai", retries: int = 3) -> Redis:
    """A client with its own pool, sized and timed from ``settings``; close it with ``aclose()``."""
    pool = connection_pool(
        settings.require_redis(),
        max_connections=settings.redis_max_connections,
        timeout_s=settings.redis_timeout_s,
        retries=retries,
        client_name=client_name,
    )
    return Redis.from_pool(pool)


async def cancel_until_done(task: asyncio.Task[None], *, every_s: float = 0.1) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it does not.

    Once is not always enough for a task inside redis-py: taking a connection from a pool
    checks it with ``can_read_destructive()`` under a zero timeout, and on Python 3.11 a
    cancellation that lands there is turned into that timeout and swallowed (the task then
    waits on, ``cancelling()`` but never cancelled).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)

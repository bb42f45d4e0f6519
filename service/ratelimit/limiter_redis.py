"""The limiter's Redis: the process's own, or ``RATE_LIMIT_REDIS_URL``'s single server or Redis Cluster.

API keys, the job queue and cron stay on ``REDIS_URL`` (arq's transactions need one
primary); only the limiter's script calls go to ``RATE_LIMIT_REDIS_URL``. Whether that
names a cluster node is read from ``INFO cluster`` at start. A Redis that does not answer
then is asked again every ``DETECT_EVERY_S`` in the background (the limiter meanwhile
treats it as a single server, and falls open or closed as it would on any sick Redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.app_keys import LIMITER_REDIS, METRICS
from service.logging import get_logger
from service.ratelimit.cluster import ClusterTransport, is_cluster
from service.ratelimit.limiter import Limiter
from service.redis import redis_client
from service.settings import Settings

__all__ = ["ClusterDetection", "limiter_redis"]

DETECT_EVERY_S = 1.0
FIRST_DETECTION_S = 2.0  # how long start-up waits for the first answer

log = get_logger(__name__)


class ClusterDetection:
    """Finds out whether the limiter's Redis is a cluster and, when it is, gives the limiter its transport."""

    def __init__(self, client: Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self.known = not settings.separate_limiter_redis  # REDIS_URL is never a cluster
        self.cluster: ClusterTransport | None = None

    async def detect(self, timeout_s: float) -> None:
        """Ask once; on an answer, ``known`` is true and ``cluster`` is set (and started) for a cluster."""
        async with asyncio.timeout(timeout_s):
            clustered = await is_cluster(self._client)
        if clustered:
            settings = self._settings
            cluster = ClusterTransport(
                settings.limiter_redis(),
                timeout_s=settings.redis_timeout_s,
                max_connections=settings.redis_max_connections,
                client_name="ottoai-web-limiter",
            )
            await cluster.start()
            self.cluster = cluster
        self.known = True

    async def follow(self, limiter: Limiter) -> None:
        """Until the limiter's Redis has answered, ask again every ``DETECT_EVERY_S``; then hand over the transport."""
        while not self.known:
            await asyncio.sleep(DETECT_EVERY_S)
            try:
                await self.detect(self._settings.redis_timeout_s)
            except (RedisError, OSError, TimeoutError):
                continue
        limiter.cluster = self.cluster


@asynccontextmanager
async def limiter_redis(app: web.Application, settings: Settings) -> AsyncIterator[tuple[Redis, ClusterDetection]]:
    """The limiter's no-retry client (in ``app[LIMITER_REDIS]``) and its cluster detection, closed on the way out.

    On ``REDIS_URL`` too the limiter has a pool of its own: on the no-retry pool it shared with
    the job reads, 50 requests in flight held every connection, and the limiter's batches
    waited in line for one past their deadline and failed open.
    """
    url = settings.limiter_redis()
    client = app[LIMITER_REDIS] = redis_client(settings, client_name="ottoai-web-limiter", retries=0, url=url)
    app[METRICS].pools.track("web-limiter", client.connection_pool)
    detection = ClusterDetection(client, settings)
    try:
        if not detection.known:
            try:
                await detection.detect(min(FIRST_DETECTION_S, settings.redis_timeout_s))
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("the limiter's Redis does not answer yet", redis=url.redacted, error=str(exc) or "timeout")
            if detection.cluster is not None:
                log.info(
                    "the limiter's Redis is a cluster", redis=url.redacted, primaries=len(detection.cluster.primaries)
                )
        yield client, detection
    finally:
        if detection.cluster is not None:
            await detection.cluster.close()
        await client.aclose()

"""Every typed key of the application and of requests, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from redis.asyncio import Redis

from service.settings import Settings

if TYPE_CHECKING:
    from jobs.queue import JobQueue
    from service.auth import ApiKeyStore, Identity
    from service.metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
API_KEYS: web.AppKey[ApiKeyStore] = web.AppKey("api_keys")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
JOB_QUEUE: web.AppKey[JobQueue] = web.AppKey("job_queue")

REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("identity")

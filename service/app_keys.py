"""Every typed aiohttp key (``web.AppKey`` and ``web.RequestKey``) of the application, in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from redis.asyncio import Redis

from service.settings import Settings

if TYPE_CHECKING:
    import asyncpg

    from jobs.cron_store import CronStore
    from jobs.fleet_metrics import FleetMetrics
    from jobs.queue import JobQueue
    from service.auth import ApiKeyStore, Identity
    from service.dashboard.snapshot import Dashboard
    from service.metrics import Metrics
    from service.ratelimit.decision import Decision
    from service.ratelimit.limiter import Limiter
    from service.ratelimit.policy import Policies
    from service.ratelimit.usage import LimitUsage
    from service.sessions import Sessions
    from service.shared_result import SharedResult

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)  # retries on connection errors: for reads and idempotent writes
REDIS_ONCE = web.AppKey("redis_once", Redis)  # no retries: for calls that must never run twice
API_KEYS: web.AppKey[ApiKeyStore] = web.AppKey("api_keys")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
DATABASE: web.AppKey[asyncpg.Pool] = web.AppKey("database")
READINESS: web.AppKey[SharedResult[dict[str, Any]]] = web.AppKey("readiness")  # one /ready body, shared
POLICIES: web.AppKey[Policies] = web.AppKey("rate_limit_policies")
LIMITER: web.AppKey[Limiter] = web.AppKey("rate_limiter")
# Per route ("GET /v1/jobs/{job_id}"): the framed read of a request, given its tenant, that may
# ride in the limiter's batch (``Limiter.ride``); its handler finds the reply in ``READ_AHEAD``.
READS_AHEAD: web.AppKey[dict[str, Callable[[web.Request, str], bytes]]] = web.AppKey("reads_ahead")
LIMITER_REDIS = web.AppKey("rate_limiter_redis", Redis)  # RATE_LIMIT_REDIS_URL (a cluster seed node), or REDIS_URL
LIMIT_USAGE: web.AppKey[LimitUsage] = web.AppKey("rate_limit_usage")  # tenants near their limits, 429s a minute
JOB_QUEUE: web.AppKey[JobQueue] = web.AppKey("job_queue")
CRON_STORE: web.AppKey[CronStore] = web.AppKey("cron_store")
FLEET_METRICS: web.AppKey[FleetMetrics] = web.AppKey("fleet_metrics")  # the queue and Redis INFO, read and cached
OPERATOR_SESSIONS: web.AppKey[Sessions] = web.AppKey("operator_sessions")  # the dashboard's session cookies
DASHBOARD: web.AppKey[Dashboard] = web.AppKey("dashboard")  # its JSON document, shared

REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("identity")
RATE_LIMIT: web.RequestKey[Decision] = web.RequestKey("rate_limit")
READ_AHEAD: web.RequestKey[asyncio.Future[Any]] = web.RequestKey("read_ahead")  # see READS_AHEAD
# POST /v1/jobs's quick check: the body as its schema loads it, and the Idempotency-Key.
PLAIN_ENQUEUE: web.RequestKey[tuple[dict[str, Any], str | None]] = web.RequestKey("plain_enqueue")
# GET /v1/jobs's quick check: the query as its schema loads it.
PLAIN_LIST: web.RequestKey[dict[str, Any]] = web.RequestKey("plain_list")

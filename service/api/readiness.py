"""``GET /ready``: every included component passes (200) or not (503), with details of each.

The components are Redis, the limiter's own Redis (when ``RATE_LIMIT_REDIS_URL`` names
one: a single server, or a cluster), the workers (when this deployment runs them), the cron
scheduler (when it runs cron too) and PostgreSQL (when ``DATABASE_URL`` is set);
``service/readiness.py`` runs their checks under a deadline. One run's answer serves every
``/ready`` of this process for ``FRESH_S``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields

from jobs.heartbeat import live_workers
from service.app_keys import CRON_STORE, DATABASE, LIMITER, LIMITER_REDIS, READINESS, REDIS, SETTINGS
from service.database import database_ctx
from service.openapi import Access, Answer, operation
from service.readiness import CHECK_TIMEOUT_S, Check, run_checks
from service.settings import SERVICE_NAME, Settings
from service.shared_result import SharedResult

FRESH_S = 1.0  # how long one run of the checks answers every /ready of this process


async def check_redis(app: web.Application) -> tuple[bool, dict[str, Any]]:
    started = time.perf_counter()
    await app[REDIS].ping()
    return True, {"latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def check_ratelimit_redis(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """The limiter's own Redis: a PING; on a cluster, its state, all slots served and every primary answering."""
    limiter = app[LIMITER]
    if limiter.cluster is None:
        started = time.perf_counter()
        await app[LIMITER_REDIS].ping()
        return True, {"latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    health = await limiter.cluster.health()
    details: dict[str, Any] = {
        "cluster_state": health.state,
        "slots_covered": health.slots_covered,
        "primaries": len(health.primaries),
    }
    if health.unreachable:
        details["unreachable"] = health.unreachable
    return health.ok, details


async def check_workers(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """At least one worker has beaten within its heartbeat window (its key is still live)."""
    workers = await live_workers(app[REDIS])
    details: dict[str, Any] = {"alive": len(workers)}
    if workers:
        details["last_beat_age_s"] = min(w["beat_age_s"] for w in workers)
    return bool(workers), details


async def check_scheduler(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """A worker that runs cron has beaten within its heartbeat window, and no cron job is stalled."""
    health = await app[CRON_STORE].health()
    details: dict[str, Any] = {"workers": health.workers}
    if health.last_beat_age_s is not None:
        details["last_tick_age_s"] = health.last_beat_age_s
    if health.stalled:
        details["stalled"] = list(health.stalled)
    if health.unknown:
        details["unscheduled"] = list(health.unknown)  # new jobs no worker has started yet: not a failure
    return health.ok, details


async def check_database(app: web.Application) -> tuple[bool, dict[str, Any]]:
    started = time.perf_counter()
    value = await app[DATABASE].fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)
    return value == 1, {"latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def included_checks(settings: Settings) -> dict[str, Check]:
    """The components that this deployment's settings turn on, by name."""
    checks: dict[str, Check] = {"redis": check_redis}
    if settings.rate_limit_enabled and settings.separate_limiter_redis:
        checks["ratelimit_redis"] = check_ratelimit_redis
    if settings.enable_worker:
        checks["workers"] = check_workers
        if settings.enable_cron:  # cron runs on the workers
            checks["scheduler"] = check_scheduler
    if settings.database_url:
        checks["database"] = check_database
    return checks


class ReadySchema(Schema):
    ready = fields.Boolean(required=True)
    components = fields.Dict(keys=fields.String(), values=fields.Boolean(), required=True)
    details = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)
    timestamp = fields.Integer(required=True)
    duration_ms = fields.Float(required=True)
    service = fields.String(required=True)


async def _readiness(app: web.Application, checks: dict[str, Check]) -> dict[str, Any]:
    """One run of every check, as the body of ``/ready``."""
    started = time.perf_counter()
    results = await run_checks(app, checks)
    return {
        "ready": all(passed for _, passed, _ in results),
        "components": {name: passed for name, passed, _ in results},
        "details": {name: details for name, _, details in results},
        "timestamp": int(time.time()),
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "service": SERVICE_NAME,
    }


@operation(
    operation_id="getReady",
    tags=["operations"],
    summary="Readiness: every included component passes (200) or not (503)",
    access=Access.PUBLIC,
    answers=[
        Answer(200, "Every included component passes.", ReadySchema, headers={"Cache-Control": True}),
        Answer(503, "Some component fails: `components` says which.", ReadySchema, headers={"Cache-Control": True}),
    ],
)
async def get_ready(request: web.Request) -> web.Response:
    body = await request.app[READINESS].get()
    return web.json_response(body, status=200 if body["ready"] else 503, headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """Route ``/ready`` with the components this deployment's settings turn on (and the pool the database one needs)."""
    checks = included_checks(app[SETTINGS])
    if "database" in checks:
        app.cleanup_ctx.append(database_ctx)

    async def shared_ctx(app: web.Application) -> AsyncIterator[None]:
        readiness = app[READINESS] = SharedResult(lambda: _readiness(app, checks), fresh_s=FRESH_S)
        try:
            yield
        finally:
            await readiness.close()

    app.cleanup_ctx.append(shared_ctx)
    app.router.add_get("/ready", get_ready, allow_head=False)

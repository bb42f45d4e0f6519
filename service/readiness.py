"""``GET /ready``: the truth about each dependency, fast even when one of them hangs.

Each component is a check that returns ``(passed, details)``. They run concurrently, each
under its own timeout, so one hung dependency costs at most ``CHECK_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_apigami import docs, response_schema
from marshmallow import Schema, fields

from jobs.heartbeat import live_workers
from service.app_keys import DATABASE, READINESS_CHECKS, REDIS, SETTINGS
from service.logging import get_logger
from service.settings import SERVICE_NAME

__all__ = ["Check", "database_ctx", "setup"]

CHECK_TIMEOUT_S = 1.0
Check = Callable[[web.Application], Awaitable[tuple[bool, dict[str, Any]]]]

log = get_logger(__name__)


async def check_redis(app: web.Application) -> tuple[bool, dict[str, Any]]:
    started = time.perf_counter()
    await app[REDIS].ping()
    return True, {"latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def check_workers(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """At least one worker has beaten within its heartbeat window (its key is still live)."""
    workers = await live_workers(app[REDIS])
    details: dict[str, Any] = {"alive": len(workers)}
    if workers:
        details["last_beat_age_s"] = min(w["beat_age_s"] for w in workers)
    return bool(workers), details


async def check_database(app: web.Application) -> tuple[bool, dict[str, Any]]:
    started = time.perf_counter()
    value = await app[DATABASE].fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)
    return value == 1, {"latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def _run(name: str, check: Check, app: web.Application) -> tuple[str, bool, dict[str, Any]]:
    try:
        passed, details = await asyncio.wait_for(check(app), CHECK_TIMEOUT_S)
    except TimeoutError:
        return name, False, {"error": f"no answer within {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:  # a failing dependency is a finding, not an error of /ready
        log.warning("readiness check failed", component=name, error=f"{type(exc).__name__}: {exc}")
        return name, False, {"error": type(exc).__name__}
    return name, passed, details


class ReadySchema(Schema):
    ready = fields.Boolean(required=True)
    components = fields.Dict(keys=fields.String(), values=fields.Boolean(), required=True)
    details = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)
    timestamp = fields.Integer(required=True)
    duration_ms = fields.Float(required=True)
    service = fields.String(required=True)


@docs(tags=["operations"], summary="Readiness: every included component passes (200) or not (503)")
@response_schema(ReadySchema, 200)
@response_schema(ReadySchema, 503)
async def get_ready(request: web.Request) -> web.Response:
    started = time.perf_counter()
    checks = request.app[READINESS_CHECKS]
    results = await asyncio.gather(*(_run(name, check, request.app) for name, check in checks.items()))
    ready = all(passed for _, passed, _ in results)
    body = {
        "ready": ready,
        "components": {name: passed for name, passed, _ in results},
        "details": {name: details for name, _, details in results},
        "timestamp": int(time.time()),
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "service": SERVICE_NAME,
    }
    return web.json_response(body, status=200 if ready else 503, headers={"Cache-Control": "no-store"})


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """A one-connection PostgreSQL pool for the readiness check; it connects on first use."""
    url = app[SETTINGS].database_url
    assert url is not None
    pool = asyncpg.create_pool(url, min_size=0, max_size=1, timeout=CHECK_TIMEOUT_S, command_timeout=CHECK_TIMEOUT_S)
    app[DATABASE] = await pool
    try:
        yield
    finally:
        await asyncio.wait_for(app[DATABASE].close(), 5)


def setup(app: web.Application) -> None:
    """Route ``/ready`` and include the components that this deployment's settings turn on."""
    settings = app[SETTINGS]
    checks: dict[str, Check] = {"redis": check_redis}
    if settings.enable_worker:
        checks["workers"] = check_workers
    if settings.database_url:
        checks["database"] = check_database
        app.cleanup_ctx.append(database_ctx)
    app[READINESS_CHECKS] = checks
    app.router.add_get("/ready", get_ready, allow_head=False)

"""The readiness checks: the truth about each dependency, fast even when one of them hangs.

Each component is a check that returns ``(passed, details)``. ``run_checks`` runs them
concurrently, each under its own timeout, so one hung dependency costs at most
``CHECK_TIMEOUT_S``. ``service/api/readiness.py`` serves the result as ``GET /ready``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from jobs.heartbeat import live_workers
from service.app_keys import DATABASE, REDIS
from service.logging import get_logger
from service.settings import Settings

__all__ = ["CHECK_TIMEOUT_S", "Check", "CheckResult", "included_checks", "run_checks"]

CHECK_TIMEOUT_S = 1.0
Check = Callable[[web.Application], Awaitable[tuple[bool, dict[str, Any]]]]
CheckResult = tuple[str, bool, dict[str, Any]]  # component name, passed, details

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


def included_checks(settings: Settings) -> dict[str, Check]:
    """The components that this deployment's settings turn on, by name."""
    checks: dict[str, Check] = {"redis": check_redis}
    if settings.enable_worker:
        checks["workers"] = check_workers
    if settings.database_url:
        checks["database"] = check_database
    return checks


async def _run(name: str, check: Check, app: web.Application) -> CheckResult:
    try:
        passed, details = await asyncio.wait_for(check(app), CHECK_TIMEOUT_S)
    except TimeoutError:
        return name, False, {"error": f"no answer within {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:  # a failing dependency is a finding, not an error of /ready
        log.warning("readiness check failed", component=name, error=f"{type(exc).__name__}: {exc}")
        return name, False, {"error": type(exc).__name__}
    return name, passed, details


async def run_checks(app: web.Application, checks: dict[str, Check]) -> list[CheckResult]:
    """Every check's result, in the order of ``checks``; a check that raises or hangs fails."""
    return await asyncio.gather(*(_run(name, check, app) for name, check in checks.items()))

"""How readiness checks run: concurrently, each under its own timeout, a failure a finding; shared.

Each component is a check that returns ``(passed, details)``. ``run_checks`` runs them
together, so one hung dependency costs at most ``CHECK_TIMEOUT_S``. ``SharedResult``
(``service.shared_result``) lets one run answer every caller for about a second, so a
flood of ``/ready`` costs the dependencies nothing extra. The checks themselves and ``GET /ready`` are in
``service/api/readiness.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from service.logging import get_logger

__all__ = ["CHECK_TIMEOUT_S", "Check", "CheckResult", "run_checks"]

CHECK_TIMEOUT_S = 1.0
Check = Callable[[web.Application], Awaitable[tuple[bool, dict[str, Any]]]]
CheckResult = tuple[str, bool, dict[str, Any]]  # component name, passed, details

log = get_logger(__name__)


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

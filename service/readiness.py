"""How readiness checks run: concurrently, each under its own timeout, a failure a finding; shared.

Each component is a check that returns ``(passed, details)``. ``run_checks`` runs them
together, so one hung dependency costs at most ``CHECK_TIMEOUT_S``. ``SharedResult`` lets
one run answer every caller for about a second, so a flood of ``/ready`` costs the
dependencies nothing extra. The checks themselves and ``GET /ready`` are in
``service/api/readiness.py``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from service.logging import get_logger

__all__ = ["CHECK_TIMEOUT_S", "Check", "CheckResult", "SharedResult", "run_checks"]

CHECK_TIMEOUT_S = 1.0
Check = Callable[[web.Application], Awaitable[tuple[bool, dict[str, Any]]]]
CheckResult = tuple[str, bool, dict[str, Any]]  # component name, passed, details

log = get_logger(__name__)
_T = TypeVar("_T")


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


class SharedResult(Generic[_T]):
    """The result of ``compute``, shared: one computation at a time, reused for ``fresh_s`` after it ends.

    Callers that arrive while it runs await the same computation; a caller that goes away
    (its request cancelled) does not cancel it for the others.
    """

    def __init__(
        self, compute: Callable[[], Awaitable[_T]], *, fresh_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._fresh_s = fresh_s
        self._clock = clock
        self._task: asyncio.Task[_T] | None = None
        self._finished_at = -math.inf

    async def get(self) -> _T:
        """The shared result: the running computation's, a fresh one's, or a new one's."""
        task = self._task
        if task is None or (task.done() and self._clock() - self._finished_at >= self._fresh_s):
            task = self._task = asyncio.ensure_future(self._compute())
            task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, _: asyncio.Task[_T]) -> None:
        self._finished_at = self._clock()

    async def close(self) -> None:
        """Cancel a computation that is still running (the app is stopping)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

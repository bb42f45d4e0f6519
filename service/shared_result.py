"""One computation's result shared by every caller that asks while it runs or soon after.

``/ready`` shares one run of its checks for about a second; the fleet-wide metrics share one
read of Redis between scrapes (``jobs.fleet_metrics``). A foundation: it imports nothing of
the project.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["SharedResult"]

_T = TypeVar("_T")


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

    async def get(self, fresh_s: float | None = None) -> _T:
        """The shared result: the running computation's, a fresh one's, or a new one's.

        ``fresh_s`` asks for a result younger than that instead of the usual ``fresh_s``.
        """
        fresh_s = self._fresh_s if fresh_s is None else fresh_s
        task = self._task
        if task is None or (task.done() and self._clock() - self._finished_at >= fresh_s):
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

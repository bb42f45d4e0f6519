"""Stopping a background task for sure.

On Python 3.11 a ``Task.cancel()`` can be lost: ``asyncio.wait_for`` (redis-py wraps every
write in one) returns its result instead of raising when the cancel lands as the wrapped
call completes (cpython #86296, fixed in 3.12). A task cancelled once may then go on, and
whoever awaits it waits forever: a web process that never stopped on SIGTERM was one.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any], *, every_s: float = 0.1) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``every_s`` while it runs."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=every_s)
    if not task.cancelled():
        task.exception()  # retrieved: an error it ended with is the caller's to look at, not the loop's to log

"""Stopping a background task for sure: cancel it, and cancel again while it runs on.

Python 3.11's ``asyncio.timeout`` can swallow a cancel that arrives while a zero timeout
expires, and redis-py checks every connection it hands out under one; a task cancelled at
that moment goes on as if nothing happened (a key-revocation listener then held its app's
shutdown forever). Python 3.12 fixed the timeout; until then, a cancel is repeated.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]

_RECHECK_S = 0.1


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, repeating the cancel every ``_RECHECK_S`` while it has not."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=_RECHECK_S)
    if not task.cancelled():
        task.exception()  # retrieved: an error it ended with is its own to log, not asyncio's

"""Waiting for an event with a deadline, instead of sleeping a fixed time and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["until"]

_T = TypeVar("_T")


async def until(check: Callable[[], Awaitable[_T]], what: str, timeout_s: float = 10.0, every_s: float = 0.02) -> _T:
    """Await ``check()`` until it returns something truthy, and return that; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:g} s (last seen: {value!r})")
        await asyncio.sleep(every_s)

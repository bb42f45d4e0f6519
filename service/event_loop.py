"""The event loop of the long-running processes: uvloop when it is installed, else asyncio's own.

``serve``, ``dev`` and the worker run their main coroutine with ``run``. uvloop (a dependency
on Linux and macOS) answers HTTP requests with less CPU per request; where it is missing
(another platform, or an install without it) asyncio's default loop runs the same code.
The short-lived commands (``keys``, ``doctor``, ``cron``) keep ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "loop_name", "run"]

_T = TypeVar("_T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or ``None`` (asyncio's default loop) when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop ``run`` uses here (for the start-up log line)."""
    return "asyncio" if loop_factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

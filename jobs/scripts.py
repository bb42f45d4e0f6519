"""The Lua scripts of the jobs system: their text, or registered on a redis-py client (which reloads on NOSCRIPT)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["load_script", "script_text"]


def _text(name: str) -> str:
    return files("jobs").joinpath(f"{name}.lua").read_text()


def script_text(name: str, *, include: Sequence[str] = ()) -> str:
    """``jobs/<name>.lua`` after the Lua of each ``include``: functions that several scripts share
    (a script cannot call another), e.g. ``job_state.lua``."""
    return "".join(_text(part) + "\n" for part in include) + _text(name)


def load_script(redis: Redis, name: str, *, include: Sequence[str] = ()) -> AsyncScript:
    """``script_text(name, include=include)`` registered on ``redis``."""
    return redis.register_script(script_text(name, include=include))

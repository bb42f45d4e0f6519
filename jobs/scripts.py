"""The Lua scripts of the jobs system, loaded once per client (redis-py reloads on NOSCRIPT)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["load_script"]


def _text(name: str) -> str:
    return files("jobs").joinpath(f"{name}.lua").read_text()


def load_script(redis: Redis, name: str, *, include: Sequence[str] = ()) -> AsyncScript:
    """``jobs/<name>.lua`` registered on ``redis``, after the Lua of each ``include``: functions that
    several scripts share (a script cannot call another), e.g. ``job_state.lua``."""
    return redis.register_script("".join(_text(part) + "\n" for part in include) + _text(name))

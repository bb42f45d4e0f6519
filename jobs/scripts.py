"""The Lua scripts of the jobs system, loaded once per client (redis-py reloads on NOSCRIPT)."""

from __future__ import annotations

from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["load_script"]


def load_script(redis: Redis, name: str) -> AsyncScript:
    """``jobs/<name>.lua`` registered on ``redis``."""
    return redis.register_script(files("jobs").joinpath(f"{name}.lua").read_text())

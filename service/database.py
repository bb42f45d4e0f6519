"""The PostgreSQL pool of the web process; today only the readiness check of ``DATABASE_URL`` uses it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from service.app_keys import DATABASE, METRICS, SETTINGS
from service.readiness import CHECK_TIMEOUT_S

__all__ = ["database_ctx"]


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """A one-connection PostgreSQL pool for the readiness check; it connects on first use."""
    url = app[SETTINGS].database_url
    assert url is not None
    pool = asyncpg.create_pool(url, min_size=0, max_size=1, timeout=CHECK_TIMEOUT_S, command_timeout=CHECK_TIMEOUT_S)
    app[DATABASE] = connected = await pool
    app[METRICS].pools.track(
        "database",
        lambda: (connected.get_size() - connected.get_idle_size(), connected.get_idle_size(), connected.get_max_size()),
    )
    try:
        yield
    finally:
        await asyncio.wait_for(app[DATABASE].close(), 5)

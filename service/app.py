"""The application factory: ``create_app(settings)`` is used by ``serve``, ``dev`` and tests.

It only wires: the middlewares, the resources opened in ``cleanup_ctx`` and the routes.
Each piece it wires lives in the module named after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from jobs.cron import SCHEDULE, Schedule
from jobs.registry import Registry
from jobs.tasks import TASKS
from service import openapi
from service.api import cron, dashboard, health, internal, metrics, ratelimit, readiness
from service.api import jobs as jobs_api
from service.app_keys import API_KEYS, METRICS, POLICIES, READS_AHEAD, REDIS, REDIS_ONCE, SETTINGS
from service.auth import ApiKeyStore, follow_revocations
from service.metrics import Metrics
from service.middleware import request_middleware
from service.ratelimit.middleware import limiter_ctx, v1_gate
from service.ratelimit.policy import load_policies
from service.redis import cancel_until_done, redis_client
from service.request_body import MAX_BODY_BYTES
from service.settings import Settings

__all__ = ["create_app"]

# How long a connection's unread request body is drained after its answer, so that the
# client can read the answer before the connection closes (aiohttp's default is 10 s).
LINGERING_S = 2.0


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's two Redis clients: reads that may be retried, and calls that must run at most once.

    A rate-limit script call or an enqueue that fails mid-reply may already have run, so
    those go through a pool without retries; key look-ups and checks are safe to retry.
    """
    settings = app[SETTINGS]
    client = redis_client(settings, client_name="ottoai-web")
    once = redis_client(settings, client_name="ottoai-web-once", retries=0)
    app[REDIS] = client
    app[REDIS_ONCE] = once
    app[API_KEYS] = ApiKeyStore(client)
    app[METRICS].pools.track("web", client.connection_pool)
    app[METRICS].pools.track("web-once", once.connection_pool)
    try:
        yield
    finally:
        await app[API_KEYS].close()
        await once.aclose()
        await client.aclose()


async def _key_revocations_ctx(app: web.Application) -> AsyncIterator[None]:
    """A revoked key is forgotten by this process at once (``follow_revocations``), on a connection of its own."""
    subscriber = redis_client(app[SETTINGS], client_name="ottoai-web-revocations", retries=0)
    listener = asyncio.get_running_loop().create_task(follow_revocations(subscriber, app[API_KEYS]))
    try:
        yield
    finally:
        await cancel_until_done(listener)
        await subscriber.aclose()


def create_app(
    settings: Settings,
    *,
    registry: Registry = TASKS,
    schedule: Schedule = SCHEDULE,
    extra_contexts: tuple[Callable[[web.Application], AsyncIterator[None]], ...] = (),
) -> web.Application:
    """Build the web application for ``settings``.

    Redis connections and other resources open in ``cleanup_ctx`` when the app starts and
    close when it stops. ``registry`` holds the tasks the jobs API accepts, ``schedule`` the
    cron jobs that ``/internal/cron`` and readiness know. ``extra_contexts``
    run after the built-in ones (``dev`` adds the in-process worker this way).
    """
    settings.require_redis()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[request_middleware(v1_gate=v1_gate)],
        # aiohttp (3.14) runs its keep-alive timer from the moment a connection opens and after
        # each response, and closes a connection still waiting for a whole request when it
        # fires: so it is also the deadline of a slow or half-sent request head.
        handler_args={"keepalive_timeout": settings.http_idle_timeout_s, "lingering_time": LINGERING_S},
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_key_revocations_ctx)
    app[READS_AHEAD] = {}
    app[POLICIES] = load_policies(settings.rate_limits_file)  # validated even when off: no surprise on switching on
    if settings.rate_limit_enabled:
        app.cleanup_ctx.append(limiter_ctx)
    jobs_api.setup(app, registry)
    cron.setup(app, schedule)
    app.cleanup_ctx.extend(extra_contexts)

    health.setup(app)
    metrics.setup(app)
    readiness.setup(app)
    internal.setup(app)
    ratelimit.setup(app)
    dashboard.setup(app)
    openapi.setup(app, unions={"Enqueue": jobs_api.enqueue_body(registry)})
    return app

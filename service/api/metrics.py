"""``GET /metrics``: the Prometheus text of this process (loopback, or Bearer $METRICS_TOKEN).

The same text is served without a token on ``METRICS_PORT`` (``service.metrics.metrics_listener``,
started by ``serve`` and ``dev``). Besides the web process's own families it shows the
fleet-wide ones read from Redis (``jobs.fleet_metrics``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from jobs.fleet_metrics import FleetMetrics
from service.app_keys import CRON_STORE, FLEET_METRICS, METRICS, REDIS, SETTINGS
from service.callers import require_internal
from service.metrics import CONTENT_TYPE
from service.openapi import Access, Answer, operation


@operation(
    operation_id="getMetrics",
    tags=["operations"],
    summary="Prometheus metrics (open from loopback, else Bearer $METRICS_TOKEN)",
    access=Access.METRICS,
    answers=[Answer(200, "The Prometheus text format, version 0.0.4.", {"type": "string"}, media_type="text/plain")],
)
async def get_metrics(request: web.Request) -> web.Response:
    require_internal(request, request.app[SETTINGS].metrics_token)
    body = await request.app[METRICS].scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _fleet_metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fleet-wide families, read through the process's retrying client; cron's with ``ENABLE_CRON``."""
    fleet = app[FLEET_METRICS] = FleetMetrics(
        app[REDIS], app[CRON_STORE].schedule if app[SETTINGS].enable_cron else None
    )
    fleet.register(app[METRICS])
    try:
        yield
    finally:
        await fleet.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_fleet_metrics_ctx)
    app.router.add_get("/metrics", get_metrics, allow_head=False)

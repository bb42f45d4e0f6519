"""``GET /metrics``: the Prometheus text of this process (loopback, or Bearer $METRICS_TOKEN).

The same text is served without a token on ``METRICS_PORT`` (``service.metrics.metrics_listener``,
started by ``serve`` and ``dev``). Besides the web process's own families it shows the
fleet-wide ones read from Redis (``jobs.fleet_metrics``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_apigami import docs

from jobs.fleet_metrics import FleetMetrics
from service.app_keys import CRON_STORE, METRICS, REDIS, SETTINGS
from service.auth import require_internal
from service.metrics import CONTENT_TYPE


@docs(
    tags=["operations"],
    summary="Prometheus metrics (open from loopback, else Bearer $METRICS_TOKEN)",
    responses={200: {"description": "Prometheus text format"}},
)
async def get_metrics(request: web.Request) -> web.Response:
    require_internal(request, request.app[SETTINGS].metrics_token)
    body = await request.app[METRICS].scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _fleet_metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fleet-wide families, read through the process's retrying client; cron's with ``ENABLE_CRON``."""
    fleet = FleetMetrics(app[REDIS], app[CRON_STORE].schedule if app[SETTINGS].enable_cron else None)
    fleet.register(app[METRICS])
    try:
        yield
    finally:
        await fleet.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_fleet_metrics_ctx)
    app.router.add_get("/metrics", get_metrics, allow_head=False)

"""``GET /metrics``: the Prometheus text of this process (loopback, or Bearer $METRICS_TOKEN)."""

from __future__ import annotations

from aiohttp import web

from service.app_keys import METRICS, SETTINGS
from service.auth import require_internal
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
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics, allow_head=False)

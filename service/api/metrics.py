"""``GET /metrics``: the Prometheus text of this process (loopback, or Bearer $METRICS_TOKEN)."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs

from service.app_keys import METRICS, SETTINGS
from service.auth import require_internal


@docs(
    tags=["operations"],
    summary="Prometheus metrics (open from loopback, else Bearer $METRICS_TOKEN)",
    responses={200: {"description": "Prometheus text format"}},
)
async def get_metrics(request: web.Request) -> web.Response:
    require_internal(request, request.app[SETTINGS].metrics_token)
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics, allow_head=False)

"""``GET /health`` (the process is up; touches no dependency) and ``GET /metrics``."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, response_schema
from marshmallow import Schema, fields

from service import __version__
from service.app_keys import METRICS, SETTINGS
from service.auth import require_internal
from service.settings import SERVICE_NAME


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})
    service = fields.String(required=True)
    version = fields.String(required=True)


@docs(tags=["operations"], summary="Liveness: the process answers; no dependency is touched")
@response_schema(HealthSchema, 200)
async def get_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": SERVICE_NAME, "version": __version__})


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
    app.router.add_get("/health", get_health, allow_head=False)
    app.router.add_get("/metrics", get_metrics, allow_head=False)

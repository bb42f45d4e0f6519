"""``GET /health``: the process is up; touches no dependency."""

from __future__ import annotations

import json

from aiohttp import web
from marshmallow import Schema, fields

from service import __version__
from service.openapi import Access, Answer, operation
from service.settings import SERVICE_NAME


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})
    service = fields.String(required=True)
    version = fields.String(required=True)


# The answer never changes: rendered once (json_response would encode it on every probe).
_BODY = json.dumps({"status": "ok", "service": SERVICE_NAME, "version": __version__}).encode()
_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


@operation(
    operation_id="getHealth",
    tags=["operations"],
    summary="Liveness: the process answers; no dependency is touched",
    access=Access.PUBLIC,
    answers=[Answer(200, "The process is up.", HealthSchema)],
)
async def get_health(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, headers=_HEADERS)


def setup(app: web.Application) -> None:
    app.router.add_get("/health", get_health, allow_head=False)

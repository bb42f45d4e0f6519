"""``/internal/*``: operators' views of the worker fleet (loopback, Bearer $INTERNAL_TOKEN, or a dashboard session)."""

from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, fields

from jobs.heartbeat import live_workers
from service.api.route_docs import operator_operation
from service.app_keys import REDIS
from service.openapi import Answer
from service.operators import require_operator


class WorkerSchema(Schema):
    id = fields.String(required=True)
    host = fields.String(required=True)
    pid = fields.Integer(required=True)
    started_at = fields.Float(required=True, metadata={"description": "Unix time the worker started"})
    beat_at = fields.Float(required=True, metadata={"description": "Unix time of its last heartbeat"})
    beat_age_s = fields.Float(required=True)
    interval_s = fields.Float(required=True)
    running = fields.Integer(required=True)
    complete = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    retried = fields.Integer(required=True)
    cron = fields.Boolean(required=True, metadata={"description": "it runs the cron schedule"})


class WorkersSchema(Schema):
    workers = fields.List(fields.Nested(WorkerSchema), required=True)


@operator_operation(
    operation_id="getWorkerHeartbeats",
    summary="Live workers and their job counters (loopback, or Bearer $INTERNAL_TOKEN)",
    answers=[Answer(200, "The workers whose heartbeat is live.", WorkersSchema)],
)
async def get_worker_heartbeat(request: web.Request) -> web.Response:
    require_operator(request)
    return web.json_response({"workers": await live_workers(request.app[REDIS])})


def setup(app: web.Application) -> None:
    app.router.add_get("/internal/worker/heartbeat", get_worker_heartbeat, allow_head=False)

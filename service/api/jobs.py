"""``/v1/jobs``: enqueue, look up, abort and list background jobs of the caller's tenant."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, request_schema, response_schema
from marshmallow import Schema, fields, validate

from jobs.queue import MAX_DEFER_S, STATUSES, IdempotencyConflict, JobQueue, JobView
from jobs.registry import InvalidArguments, Registry, UnknownTask
from service.app_keys import IDENTITY, JOB_QUEUE, REDIS_ONCE, SETTINGS
from service.errors import Problem

__all__ = ["setup"]

IDEMPOTENCY_KEY_MAX = 255


class EnqueueSchema(Schema):
    task = fields.String(required=True, metadata={"example": "diagnostics.ping"})
    args = fields.Dict(keys=fields.String(), load_default=dict, metadata={"example": {}})
    defer_seconds = fields.Float(load_default=0.0, validate=validate.Range(min=0, max=MAX_DEFER_S))


class ErrorSchema(Schema):
    type = fields.String(required=True)
    message = fields.String(required=True)


class JobSchema(Schema):
    id = fields.String(required=True)
    task = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    tries = fields.Integer(required=True)
    enqueued_at = fields.String(required=True, metadata={"format": "date-time"})
    started_at = fields.String(metadata={"format": "date-time"})
    finished_at = fields.String(metadata={"format": "date-time"})
    result = fields.Raw()
    error = fields.Nested(ErrorSchema)


class ListQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(min=1, max=200))


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


def _tenant(request: web.Request) -> str:
    identity = request[IDENTITY]
    assert identity is not None  # the /v1 middleware has refused it otherwise
    return identity.tenant


def _job_response(view: JobView, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(view.to_json(), status=status, headers=headers)


def _not_found(job_id: str) -> Problem:
    return Problem(404, f"no job {job_id!r}", type_="not-found")


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or not key.isascii():
        raise Problem(
            422,
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters",
            type_="validation-error",
            errors={"Idempotency-Key": ["not a valid key"]},
        )
    return key


@docs(
    tags=["jobs"],
    summary="Enqueue a background job",
    description=(
        "Validates `args` against the task's schema (422 when they do not fit) and answers 202 with the job "
        "and its `Location`. With an `Idempotency-Key` header, a retry with the same body returns the same job "
        "for 24 h; the same key with another body is 409."
    ),
    parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}, "required": False}],
    responses={
        202: {"description": "accepted"},
        409: {"description": "Idempotency-Key reused with another body"},
        422: {"description": "unknown task or bad arguments"},
        503: {"description": "background jobs are disabled in this deployment"},
    },
    security=[{"bearer": []}, {"apiKey": []}],
)
@request_schema(EnqueueSchema)
@response_schema(JobSchema, 202)
async def post_job(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].enable_worker:
        raise Problem(503, "background jobs are disabled in this deployment (ENABLE_WORKER=false)", type_="disabled")
    body: dict[str, Any] = request["data"]
    key = _idempotency_key(request)
    try:
        view, created = await request.app[JOB_QUEUE].enqueue(
            _tenant(request), body["task"], body["args"], defer_s=body["defer_seconds"], idempotency=key
        )
    except UnknownTask:
        raise Problem(
            422, f"unknown task {body['task']!r}", type_="validation-error", errors={"task": ["unknown task"]}
        ) from None
    except InvalidArguments as exc:
        raise Problem(
            422, "the arguments do not fit the task", type_="validation-error", errors={"args": exc.errors}
        ) from None
    except IdempotencyConflict as exc:
        raise Problem(409, str(exc), type_="idempotency-conflict") from None
    headers = {"Location": f"/v1/jobs/{view.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _job_response(view, 202, **headers)


@docs(
    tags=["jobs"],
    summary="A job of the caller's tenant",
    responses={404: {"description": "no such job for this tenant"}},
    security=[{"bearer": []}, {"apiKey": []}],
)
@response_schema(JobSchema, 200)
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    view = await request.app[JOB_QUEUE].get(_tenant(request), job_id)
    if view is None:
        raise _not_found(job_id)
    return _job_response(view)


@docs(
    tags=["jobs"],
    summary="Abort a queued or running job",
    description="A job that has not started is aborted at once; a running one is cancelled by its worker shortly.",
    responses={
        202: {"description": "abort accepted"},
        404: {"description": "no such job for this tenant"},
        409: {"description": "the job has already finished"},
    },
    security=[{"bearer": []}, {"apiKey": []}],
)
@response_schema(JobSchema, 202)
async def delete_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    tenant = _tenant(request)
    queue = request.app[JOB_QUEUE]
    outcome = await queue.abort(tenant, job_id)
    if outcome == "missing":
        raise _not_found(job_id)
    if outcome == "finished":
        raise Problem(409, f"job {job_id!r} has already finished", type_="job-finished")
    view = await queue.get(tenant, job_id)
    if view is None:
        raise _not_found(job_id)
    return _job_response(view, 202)


@docs(
    tags=["jobs"],
    summary="The caller's jobs, newest first",
    description="`next_cursor` is null on the last page; pass it as `cursor` to get the next one.",
    security=[{"bearer": []}, {"apiKey": []}],
)
@request_schema(ListQuerySchema, location="querystring")
@response_schema(JobListSchema, 200)
async def list_jobs(request: web.Request) -> web.Response:
    query: dict[str, Any] = request["data"]
    try:
        views, next_cursor = await request.app[JOB_QUEUE].list_jobs(
            _tenant(request), status=query.get("status"), limit=query["limit"], cursor=query.get("cursor")
        )
    except ValueError as exc:
        raise Problem(422, str(exc), type_="validation-error", errors={"cursor": [str(exc)]}) from None
    return web.json_response({"jobs": [view.to_json() for view in views], "next_cursor": next_cursor})


async def _queue_ctx(app: web.Application, *, registry: Registry) -> AsyncIterator[None]:
    """The queue on the process's no-retry client: an enqueue must never be sent twice."""
    app[JOB_QUEUE] = JobQueue(app[REDIS_ONCE], app[SETTINGS], registry)
    yield


def setup(app: web.Application, registry: Registry) -> None:
    """The jobs routes, enqueueing the tasks of ``registry``."""
    app.cleanup_ctx.append(functools.partial(_queue_ctx, registry=registry))
    app.router.add_post("/v1/jobs", post_job)
    app.router.add_get("/v1/jobs", list_jobs, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}", get_job, allow_head=False)
    app.router.add_delete("/v1/jobs/{job_id}", delete_job)

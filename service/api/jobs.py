"""``/v1/jobs``: enqueue, look up, abort and list background jobs of the caller's tenant."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web
from aiohttp_apigami import request_schema

from jobs.queue import ArgumentsTooLarge, IdempotencyConflict, JobQueue, JobView, TooManyUnfinishedJobs
from jobs.registry import InvalidArguments, Registry, UnknownTask
from jobs.serialization import compact_json
from service.api.job_schemas import (
    EnqueueHeadersSchema,
    EnqueueSchema,
    JobListSchema,
    JobSchema,
    ListQuerySchema,
    enqueue_body,
    enqueue_is_plain,
    list_is_plain,
)
from service.api.route_docs import v1_operation
from service.app_keys import (
    IDENTITY,
    JOB_QUEUE,
    PLAIN_ENQUEUE,
    PLAIN_LIST,
    READ_AHEAD,
    READS_AHEAD,
    REDIS,
    REDIS_ONCE,
    SETTINGS,
)
from service.errors import Problem
from service.openapi import Answer

__all__ = ["enqueue_body", "enqueue_for", "setup"]

# When a tenant at its cap of unfinished jobs may try again: a slot frees when one of its
# jobs ends, which nothing here can predict; this is a polite interval to poll at.
UNFINISHED_RETRY_AFTER_S = 5

_JOB_LINKS = {
    "getJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
    "abortJob": {"operationId": "abortJob", "parameters": {"job_id": "$response.body#/id"}},
}


def _tenant(request: web.Request) -> str:
    identity = request[IDENTITY]
    assert identity is not None  # the /v1 middleware has refused it otherwise
    return identity.tenant


def _json_response(body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    """``web.json_response`` with orjson (``compact_json``): every job route answers through it."""
    return web.Response(
        body=compact_json(body), status=status, content_type="application/json", charset="utf-8", headers=headers
    )


def _job_response(view: JobView, status: int = 200, **headers: str) -> web.Response:
    return _json_response(view.to_json(), status, **headers)


def _not_found(job_id: str) -> Problem:
    return Problem(404, f"no job {job_id!r}", type_="not-found")


@v1_operation(
    operation_id="enqueueJob",
    tags=["jobs"],
    summary="Enqueue a background job",
    description=(
        "Validates `args` against the task's schema (422 when they do not fit) and answers 202 with the job "
        "and its `Location`. With an `Idempotency-Key` header, a retry with the same body returns the same job "
        "for 24 h; the same key with another body is 409. Quotas: the arguments are at most `JOB_ARGS_MAX_BYTES` "
        "as JSON (413), and a tenant has at most `JOB_UNFINISHED_MAX` jobs queued, deferred or running (429 with "
        "type `too-many-unfinished-jobs`)."
    ),
    request_body="Enqueue",
    quick_check=enqueue_is_plain,
    answers=[
        Answer(
            202,
            "Accepted: the job, queued (or deferred).",
            JobSchema,
            headers={"Location": True, "Idempotent-Replayed": False},
            links=_JOB_LINKS,
        )
    ],
    problems={
        400: "The body is not JSON.",
        408: "The body did not arrive in time.",
        409: "The `Idempotency-Key` was used with another body.",
        413: "The body is larger than 1 MiB, or the arguments are larger than `JOB_ARGS_MAX_BYTES` as JSON "
        "(type `arguments-too-large`, with the `limit`).",
        415: "The body is not JSON in UTF-8, or has a content coding other than gzip or deflate.",
        422: "An unknown task, arguments that do not fit it, or a malformed `Idempotency-Key`.",
        429: "A rate limit refused the request (`violated-policies` names the empty buckets), or the tenant has "
        "`JOB_UNFINISHED_MAX` jobs queued, deferred or running (type `too-many-unfinished-jobs`, with the `limit`).",
        503: "Background jobs are disabled in this deployment, Redis cannot answer now, or Redis is full "
        "(type `storage-full`).",
    },
)
@request_schema(EnqueueSchema)
@request_schema(EnqueueHeadersSchema, location="headers", put_into="headers")
async def post_job(request: web.Request) -> web.Response:
    body, key = request.get(PLAIN_ENQUEUE) or (request["data"], request["headers"].get("idempotency_key"))
    view, created = await enqueue_for(
        request.app, _tenant(request), body["task"], body["args"], defer_s=body["defer_seconds"], idempotency=key
    )
    headers = {"Location": f"/v1/jobs/{view.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _job_response(view, 202, **headers)


async def enqueue_for(
    app: web.Application,
    tenant: str,
    task: str,
    args: Mapping[str, Any],
    *,
    defer_s: float = 0.0,
    idempotency: str | None = None,
) -> tuple[JobView, bool]:
    """Enqueue for ``tenant`` as ``POST /v1/jobs`` does (the dashboard's retry too): the same checks
    and quotas, each refusal the same problem. The job, and whether it is new."""
    if not app[SETTINGS].enable_worker:
        raise Problem(503, "background jobs are disabled in this deployment (ENABLE_WORKER=false)", type_="disabled")
    try:
        return await app[JOB_QUEUE].enqueue(tenant, task, args, defer_s=defer_s, idempotency=idempotency)
    except UnknownTask:
        raise Problem(
            422, f"unknown task {task!r}", type_="validation-error", errors={"task": ["unknown task"]}
        ) from None
    except InvalidArguments as exc:
        raise Problem(
            422, "the arguments do not fit the task", type_="validation-error", errors={"args": exc.errors}
        ) from None
    except IdempotencyConflict as exc:
        raise Problem(409, str(exc), type_="idempotency-conflict") from None
    except ArgumentsTooLarge as exc:
        # The body was read whole (it is under 1 MiB): the connection can carry on.
        raise Problem(
            413, f"{exc} (JOB_ARGS_MAX_BYTES)", type_="arguments-too-large", close_connection=False, limit=exc.limit
        ) from None
    except TooManyUnfinishedJobs as exc:
        raise Problem(
            429,
            f"{exc}; wait until some of them finish",
            type_="too-many-unfinished-jobs",
            headers={"Retry-After": str(UNFINISHED_RETRY_AFTER_S)},
            limit=exc.limit,
        ) from None


@v1_operation(
    operation_id="getJob",
    tags=["jobs"],
    summary="A job of the caller's tenant",
    answers=[Answer(200, "The job.", JobSchema, links={"abortJob": _JOB_LINKS["abortJob"]})],
    problems={404: "No such job for this tenant (another tenant's job is not found either)."},
)
async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    view = await request.app[JOB_QUEUE].get(_tenant(request), job_id, ahead=request.get(READ_AHEAD))
    if view is None:
        raise _not_found(job_id)
    return _job_response(view)


@v1_operation(
    operation_id="abortJob",
    tags=["jobs"],
    summary="Abort a queued or running job",
    description=(
        "A job that has not started is aborted at once; a running one is cancelled by its worker shortly. "
        "The job stays readable (status `aborted`) for as long as finished jobs are kept."
    ),
    answers=[Answer(202, "Abort accepted: the job as it is now.", JobSchema)],
    problems={404: "No such job for this tenant.", 409: "The job has already finished."},
)
async def delete_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    outcome, view = await request.app[JOB_QUEUE].abort(_tenant(request), job_id)
    if outcome == "missing":
        raise _not_found(job_id)
    if outcome == "finished":
        raise Problem(409, f"job {job_id!r} has already finished", type_="job-finished")
    if view is None:
        raise _not_found(job_id)
    return _job_response(view, 202)


@v1_operation(
    operation_id="listJobs",
    tags=["jobs"],
    summary="The caller's jobs, newest first",
    description="`next_cursor` is null on the last page; pass it as `cursor` to get the next one.",
    answers=[Answer(200, "A page of jobs.", JobListSchema)],
    problems={422: "A query parameter out of range, or a `cursor` this API did not hand out."},
    quick_check=list_is_plain,
)
@request_schema(ListQuerySchema, location="querystring")
async def list_jobs(request: web.Request) -> web.Response:
    query: dict[str, Any] = request.get(PLAIN_LIST) or request["data"]
    try:
        views, next_cursor = await request.app[JOB_QUEUE].list_jobs(
            _tenant(request), status=query.get("status"), limit=query["limit"], cursor=query.get("cursor")
        )
    except ValueError as exc:
        raise Problem(422, str(exc), type_="validation-error", errors={"cursor": [str(exc)]}) from None
    return _json_response({"jobs": [view.to_json() for view in views], "next_cursor": next_cursor})


async def _queue_ctx(app: web.Application, *, registry: Registry) -> AsyncIterator[None]:
    """The queue on the process's no-retry client (an enqueue must never be sent twice), its reads on the other."""
    queue = app[JOB_QUEUE] = JobQueue(app[REDIS_ONCE], app[SETTINGS], registry, reads=app[REDIS])
    try:
        yield
    finally:
        await queue.close()


def setup(app: web.Application, registry: Registry) -> None:
    """The jobs routes, enqueueing the tasks of ``registry``."""
    app.cleanup_ctx.append(functools.partial(_queue_ctx, registry=registry))
    app.router.add_post("/v1/jobs", post_job)
    app.router.add_get("/v1/jobs", list_jobs, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}", get_job, allow_head=False)
    app.router.add_delete("/v1/jobs/{job_id}", delete_job)
    app[READS_AHEAD]["GET /v1/jobs/{job_id}"] = _job_read


def _job_read(request: web.Request, tenant: str) -> bytes:
    """``get_job``'s read, to go with the limiter's decision."""
    return request.app[JOB_QUEUE].read_command(tenant, request.match_info["job_id"])

"""``/internal/cron``: the cron schedule for operators (loopback, or Bearer $INTERNAL_TOKEN).

Each job's schedule, next run, pause state and last runs; run a job now; pause and resume
it. Plain JSON APIs: the same as ``python -m jobs cron ...``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from marshmallow import Schema, fields, validate

from jobs.cron import Schedule
from jobs.cron_store import OUTCOMES, CronJobRunning, CronJobStatus, CronStore
from service.api.job_error import ErrorSchema
from service.api.route_docs import operator_operation
from service.app_keys import CRON_STORE, REDIS_ONCE
from service.errors import Problem
from service.openapi import Answer
from service.operators import require_operator

__all__ = ["setup"]

_NOT_FOUND = "No cron job has this name."


class RunErrorSchema(ErrorSchema):
    """A cron run's error: its own component of the document, under its own name."""


class CronRunSchema(Schema):
    job_id = fields.String(required=True)
    slot = fields.String(required=True, metadata={"format": "date-time", "description": "the slot it ran for"})
    trigger = fields.String(required=True, validate=validate.OneOf(["schedule", "manual"]))
    started_at = fields.String(required=True, metadata={"format": "date-time"})
    finished_at = fields.String(required=True, metadata={"format": "date-time"})
    duration_s = fields.Float(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(OUTCOMES))
    worker = fields.String(required=True)
    tries = fields.Integer(required=True)
    slots = fields.Integer(
        required=True,
        metadata={"description": "scheduled slots it stands for: 1, more when missed slots coalesced, 0 for a run-now"},
    )
    error = fields.Nested(RunErrorSchema, allow_none=True, required=True)


class CronJobSchema(Schema):
    name = fields.String(required=True)
    task = fields.String(required=True)
    schedule = fields.String(required=True, metadata={"description": "cron expression or arq-style fields, UTC"})
    grace_s = fields.Float(required=True)
    known = fields.Boolean(required=True, metadata={"description": "false until a worker of this release schedules it"})
    paused = fields.Boolean(required=True)
    running = fields.Boolean(required=True)
    current_run = fields.String(allow_none=True, required=True, metadata={"description": "job id of its pending run"})
    next_run_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    last_success_at = fields.String(allow_none=True, required=True, metadata={"format": "date-time"})
    runs_by_outcome = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    runs = fields.List(
        fields.Nested(CronRunSchema), required=True, metadata={"description": "the last 20, newest first"}
    )


class CronJobsSchema(Schema):
    jobs = fields.List(fields.Nested(CronJobSchema), required=True)


class CronRunQueuedSchema(Schema):
    name = fields.String(required=True)
    job_id = fields.String(required=True)


def _store(request: web.Request) -> CronStore:
    require_operator(request)
    return request.app[CRON_STORE]


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if request.app[CRON_STORE].schedule.get(name) is None:
        raise Problem(404, f"no cron job named {name!r}", type_="not-found")
    return name


@operator_operation(
    operation_id="getCron",
    summary="The cron schedule: each job's next run, pause state and last runs",
    answers=[Answer(200, "Every cron job of the schedule.", CronJobsSchema, headers={"Cache-Control": True})],
)
async def get_cron(request: web.Request) -> web.Response:
    statuses = await _store(request).status()
    return web.json_response({"jobs": [status.to_json() for status in statuses]}, headers={"Cache-Control": "no-store"})


@operator_operation(
    operation_id="runCronJob",
    summary="Run a cron job now",
    description=(
        "The run takes the place of the job's pending run (the schedule goes on after it); a paused job runs "
        "once and stays paused."
    ),
    answers=[Answer(202, "Queued: the run's job id.", CronRunQueuedSchema)],
    problems={404: _NOT_FOUND, 409: "A run of the job is in progress; try again when it has finished."},
)
async def post_run(request: web.Request) -> web.Response:
    store = _store(request)
    name = _name(request)
    try:
        job_id = await store.run_now(name)
    except CronJobRunning as exc:
        raise Problem(409, str(exc), type_="cron-job-running") from None
    return web.json_response({"name": name, "job_id": job_id}, status=202)


def _change_route(
    change: Callable[[CronStore, str], Awaitable[CronJobStatus]], *, operation_id: str, summary: str, done: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The route that applies ``change`` (pause or resume) to the named job and answers with the job as it is now."""

    @operator_operation(
        operation_id=operation_id,
        summary=summary,
        answers=[Answer(200, f"{done}: the job as it is now.", CronJobSchema)],
        problems={404: _NOT_FOUND},
    )
    async def post_change(request: web.Request) -> web.Response:
        store = _store(request)
        return web.json_response((await change(store, _name(request))).to_json())

    return post_change


post_pause = _change_route(
    CronStore.pause,
    operation_id="pauseCronJob",
    summary="Pause a cron job: its pending run is removed (a running one finishes)",
    done="Paused",
)
post_resume = _change_route(
    CronStore.resume, operation_id="resumeCronJob", summary="Resume a paused cron job at its next slot", done="Resumed"
)


async def _store_ctx(app: web.Application, *, schedule: Schedule) -> AsyncIterator[None]:
    """The store on the no-retry client: a run-now must never be sent twice."""
    app[CRON_STORE] = CronStore(app[REDIS_ONCE], schedule)
    yield


def setup(app: web.Application, schedule: Schedule) -> None:
    """The cron routes, for ``schedule``."""
    app.cleanup_ctx.append(functools.partial(_store_ctx, schedule=schedule))
    app.router.add_get("/internal/cron", get_cron, allow_head=False)
    app.router.add_post("/internal/cron/{name}/run", post_run)
    app.router.add_post("/internal/cron/{name}/pause", post_pause)
    app.router.add_post("/internal/cron/{name}/resume", post_resume)

"""``/dashboard``: the live operations page, its login, its JSON document and the actions on failed jobs.

Who may see it and act from it is ``service.operators``'s rule (loopback, the internal token,
or a session from the login form). The page itself (``GET /dashboard``), the login form and
the static files are for browsers and are not in the OpenAPI document; the JSON document
and the actions are, like every ``/internal`` route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from marshmallow import Schema, fields

from service.api.cron import CronJobSchema
from service.api.internal import WorkerSchema
from service.api.readiness import ReadySchema
from service.app_keys import DASHBOARD, OPERATOR_SESSIONS, SETTINGS
from service.dashboard import page
from service.dashboard.snapshot import Dashboard
from service.errors import Problem
from service.openapi import Access, Answer, operation
from service.operators import COOKIE_NAME, Sessions, require_operator
from service.settings import SERVICE_NAME

__all__ = ["setup"]


class QueueSchema(Schema):
    queued = fields.Integer(required=True)
    deferred = fields.Integer(required=True)
    in_progress = fields.Integer(required=True)


class ThroughputSchema(Schema):
    first_minute_at = fields.String(
        required=True, metadata={"format": "date-time", "description": "start of the oldest minute"}
    )
    complete = fields.List(fields.Integer(), required=True, metadata={"description": "per minute, oldest first"})
    failed = fields.List(fields.Integer(), required=True, metadata={"description": "tries spent, job failed"})
    retried = fields.List(fields.Integer(), required=True, metadata={"description": "a try failed, another will run"})
    aborted = fields.List(fields.Integer(), required=True)


class DashboardCronSchema(Schema):
    enabled = fields.Boolean(required=True, metadata={"description": "ENABLE_CRON"})
    jobs = fields.List(
        fields.Nested(CronJobSchema), required=True, metadata={"description": "each with its last 5 runs"}
    )


class FailureErrorSchema(Schema):
    type = fields.String(required=True)
    message = fields.String(required=True)


class FailureSchema(Schema):
    job_id = fields.String(required=True)
    task = fields.String(required=True)
    tenant = fields.String(required=True)
    error = fields.Nested(FailureErrorSchema, required=True)
    tries = fields.Integer(required=True, metadata={"description": "the try that failed"})
    max_tries = fields.Integer(required=True)
    will_retry = fields.Boolean(required=True, metadata={"description": "another try is scheduled"})
    failed_at = fields.String(required=True, metadata={"format": "date-time"})


class TenantUsageSchema(Schema):
    tenant = fields.String(required=True, metadata={"description": "`@anonymous`: every caller without a valid key"})
    lowest_remaining = fields.Float(
        required=True, allow_none=True, metadata={"description": "least share left in any of its buckets, 0 to 1"}
    )
    refused = fields.Integer(required=True, metadata={"description": "429s from the rate limiter"})


class LimitsSchema(Schema):
    enabled = fields.Boolean(required=True, metadata={"description": "RATE_LIMIT_ENABLED"})
    refused_per_minute = fields.List(fields.Integer(), required=True, metadata={"description": "oldest first"})
    tenants = fields.List(
        fields.Nested(TenantUsageSchema),
        required=True,
        metadata={"description": "over the last two minutes: nearest their limits first"},
    )


class RedisSchema(Schema):
    version = fields.String(required=True)
    used_memory_bytes = fields.Integer(required=True)
    maxmemory_bytes = fields.Integer(required=True, metadata={"description": "0: no limit"})
    eviction_policy = fields.String(required=True)
    connected_clients = fields.Integer(required=True)
    ops_per_s = fields.Integer(required=True)


class DashboardSchema(Schema):
    generated_at = fields.String(required=True, metadata={"format": "date-time"})
    refresh_s = fields.Float(required=True, metadata={"description": "how long this document is shared"})
    ready = fields.Nested(ReadySchema, allow_none=True, required=True)
    queue = fields.Nested(QueueSchema, allow_none=True, required=True)
    throughput = fields.Nested(ThroughputSchema, allow_none=True, required=True)
    workers = fields.List(fields.Nested(WorkerSchema), allow_none=True, required=True)
    cron = fields.Nested(DashboardCronSchema, allow_none=True, required=True)
    failures = fields.List(
        fields.Nested(FailureSchema),
        allow_none=True,
        required=True,
        metadata={"description": "the latest failed try of each job, newest first"},
    )
    limits = fields.Nested(LimitsSchema, allow_none=True, required=True)
    redis = fields.Nested(RedisSchema, allow_none=True, required=True)
    unavailable = fields.List(
        fields.String(), required=True, metadata={"description": "sections that could not be read now (null above)"}
    )


async def get_page(request: web.Request) -> web.StreamResponse:
    """The page; an operator without a session gets one, anyone else the login form."""
    settings = request.app[SETTINGS]
    try:
        session = require_operator(request, settings.internal_token)
    except Problem as problem:
        if problem.status == 401:
            raise web.HTTPSeeOther("/dashboard/login") from None
        raise
    sessions = request.app[OPERATOR_SESSIONS]
    if session is not None:
        return page.page(SERVICE_NAME, sessions.csrf_token(session))
    session, cookie = sessions.new()
    response = page.page(SERVICE_NAME, sessions.csrf_token(session))
    sessions.set_cookie(response, cookie)
    return response


async def get_login(request: web.Request) -> web.Response:
    return page.login_page(SERVICE_NAME, token_configured=request.app[SETTINGS].internal_token is not None)


async def post_login(request: web.Request) -> web.Response:
    """Check the token of the form; the right one gets a session and goes to the page."""
    settings = request.app[SETTINGS]
    if settings.internal_token is None:
        raise Problem(403, "INTERNAL_TOKEN is not set: the dashboard is open only from loopback", type_="forbidden")
    form = await request.post()
    token = form.get("token")
    sessions = request.app[OPERATOR_SESSIONS]
    if not isinstance(token, str) or not sessions.token_matches(token):
        return page.login_page(SERVICE_NAME, token_configured=True, failed=True, status=401)
    _, cookie = sessions.new()
    redirect = web.HTTPSeeOther("/dashboard")
    sessions.set_cookie(redirect, cookie)
    raise redirect


async def post_logout(request: web.Request) -> web.Response:
    require_operator(request, request.app[SETTINGS].internal_token)
    response = web.Response(status=204)
    response.del_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Strict")
    return response


@operation(
    operation_id="getDashboard",
    tags=["operations"],
    summary="Everything the dashboard shows, in one document (loopback, Bearer $INTERNAL_TOKEN, or its session)",
    description=(
        "Readiness, the queue, jobs finished per minute over the last hour, live workers, cron jobs, the "
        "latest failed jobs, the tenants nearest their rate limits with 429s per minute, and Redis. One "
        "document is built per web process every couple of seconds, whoever asks, so an open dashboard "
        "costs Redis a bounded number of round trips. A section that cannot be read now is null and named "
        "in `unavailable`."
    ),
    access=Access.INTERNAL,
    answers=[Answer(200, "The document.", DashboardSchema, headers={"Cache-Control": True})],
)
async def get_document(request: web.Request) -> web.Response:
    require_operator(request, request.app[SETTINGS].internal_token)
    document = await request.app[DASHBOARD].get()
    return web.json_response(document, headers={"Cache-Control": "no-store"})


async def get_static(request: web.Request) -> web.Response:
    static = page.STATIC.get(request.match_info["name"])
    if static is None:
        raise Problem(404, "no such file", type_="not-found")
    # Kept for good under the URL that names this content; under any other, asked again each time.
    versioned = request.path_qs == static.url
    cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
    return web.Response(
        body=static.body,
        content_type=static.content_type,
        charset="utf-8",
        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
    )


async def _dashboard_ctx(app: web.Application) -> AsyncIterator[None]:
    dashboard = app[DASHBOARD] = Dashboard(app)
    try:
        yield
    finally:
        await dashboard.close()


def setup(app: web.Application) -> None:
    app[OPERATOR_SESSIONS] = Sessions(app[SETTINGS].internal_token)
    app.cleanup_ctx.append(_dashboard_ctx)
    app.router.add_get("/dashboard", get_page, allow_head=False)
    app.router.add_get("/dashboard/login", get_login, allow_head=False)
    app.router.add_post("/dashboard/login", post_login)
    app.router.add_post("/dashboard/logout", post_logout)
    app.router.add_get("/dashboard/static/{name}", get_static, allow_head=False)
    app.router.add_get("/internal/dashboard.json", get_document, allow_head=False)

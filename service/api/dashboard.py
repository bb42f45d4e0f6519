"""``/dashboard``: the live operations page, its login, its JSON document and the actions on failed jobs.

Who may see it and act from it is ``service.operators``'s rule (loopback, the internal token,
or a session from the login form). Every route is in the OpenAPI document, the
browser's pages too (as HTML answers), and every error is problem+json: a wrong token on
the login form sends the browser back to the form, which says so.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from marshmallow import ValidationError

from jobs import failures
from jobs.failures import FailedTry
from service.api.jobs import enqueue_for
from service.api.route_docs import browser_operation, operator_operation, query_parameter
from service.app_keys import (
    CRON_STORE,
    DASHBOARD,
    FLEET_METRICS,
    JOB_QUEUE,
    OPERATOR_SESSIONS,
    READINESS,
    REDIS,
    SETTINGS,
)
from service.dashboard import page
from service.dashboard.page import StaticFile
from service.dashboard.schemas import AbortedSchema, DashboardSchema, LoginFormSchema, RetriedSchema, SignedOutSchema
from service.dashboard.snapshot import Dashboard
from service.errors import Problem
from service.openapi import Answer
from service.operators import require_operator
from service.sessions import COOKIE_NAME, Sessions
from service.settings import SERVICE_NAME

__all__ = ["setup"]


_HTML = {"type": "string", "description": "An HTML page."}
_REDIRECT = {"type": "string", "description": "aiohttp's short text; `Location` says where to."}
_TO_LOGIN = "/dashboard/login"


@browser_operation(
    operation_id="getDashboardPage",
    summary="The live operations page (for a browser)",
    description=(
        "For operators (loopback, `Authorization: Bearer $INTERNAL_TOKEN`, or the session the login form "
        "sets); a visit without a session gets one. Anyone else is sent to the login form."
    ),
    answers=[
        Answer(200, "The page; it polls `GET /internal/dashboard.json`.", _HTML, "text/html", {"Cache-Control": True}),
        Answer(303, "Not an operator: to the login form.", _REDIRECT, "text/plain"),
    ],
    problems={403: "From outside loopback while `INTERNAL_TOKEN` is not set (no login is possible)."},
)
async def get_page(request: web.Request) -> web.StreamResponse:
    try:
        session = require_operator(request)
    except Problem as problem:
        if problem.status == 401:
            raise web.HTTPSeeOther(_TO_LOGIN) from None
        raise
    sessions = request.app[OPERATOR_SESSIONS]
    if session is not None:
        return page.page(SERVICE_NAME, sessions.csrf_token(session))
    session, cookie = sessions.new()
    response = page.page(SERVICE_NAME, sessions.csrf_token(session))
    sessions.set_cookie(response, cookie)
    return response


@browser_operation(
    operation_id="getDashboardLogin",
    summary="The dashboard's login form (for a browser)",
    parameters=[query_parameter("failed", "Present after a wrong token: the form says so.")],
    answers=[Answer(200, "The form (without `INTERNAL_TOKEN`, why there is none).", _HTML, "text/html")],
)
async def get_login(request: web.Request) -> web.Response:
    token_configured = request.app[SETTINGS].internal_token is not None
    return page.login_page(SERVICE_NAME, token_configured=token_configured, failed="failed" in request.query)


@browser_operation(
    operation_id="postDashboardLogin",
    summary="Sign in to the dashboard with the internal token",
    description=(
        "The right token gets a session cookie (`__Host-ottoai-dashboard`: `Secure; HttpOnly; SameSite=Strict`, "
        "12 h) and is sent to the page; a wrong one back to the form, which says so. The token never goes in a URL."
    ),
    form=LoginFormSchema,
    answers=[Answer(303, "To the page (signed in), or back to the form (`?failed`).", _REDIRECT, "text/plain")],
    problems={
        403: "`INTERNAL_TOKEN` is not set: the dashboard is open only from loopback.",
        415: "The body is not an HTML form (`application/x-www-form-urlencoded`).",
        422: "The form lacks the token, or has other fields.",
    },
)
async def post_login(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if settings.internal_token is None:
        raise Problem(403, "INTERNAL_TOKEN is not set: the dashboard is open only from loopback", type_="forbidden")
    if request.content_type != "application/x-www-form-urlencoded":
        raise Problem(415, "send the login form's fields as application/x-www-form-urlencoded")
    try:
        token: str = LoginFormSchema().load(dict(await request.post()))["token"]
    except ValidationError as exc:
        detail = "the form must hold the token and nothing else"
        raise Problem(422, detail, type_="validation-error", errors=exc.messages) from None
    sessions = request.app[OPERATOR_SESSIONS]
    if not sessions.token_matches(token):
        raise web.HTTPSeeOther(f"{_TO_LOGIN}?failed")
    _, cookie = sessions.new()
    redirect = web.HTTPSeeOther("/dashboard")
    sessions.set_cookie(redirect, cookie)
    raise redirect


@operator_operation(
    operation_id="postDashboardLogout",
    tags=["dashboard"],
    summary="Sign out of the dashboard (the session's CSRF token required)",
    answers=[Answer(200, "The session cookie is cleared.", SignedOutSchema)],
    reads_redis=False,
)
async def post_logout(request: web.Request) -> web.Response:
    require_operator(request)
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE_NAME, path="/", secure=True, httponly=True, samesite="Strict")
    return response


@operator_operation(
    operation_id="getDashboard",
    summary="Everything the dashboard shows, in one document (loopback, Bearer $INTERNAL_TOKEN, or its session)",
    description=(
        "Readiness, the queue, jobs finished per minute over the last hour, live workers, cron jobs, the "
        "latest failed jobs, the tenants nearest their rate limits with 429s per minute, and Redis. One "
        "document is built per web process every couple of seconds, whoever asks, so an open dashboard "
        "costs Redis a bounded number of round trips. A section that cannot be read now is null and named "
        "in `unavailable`."
    ),
    answers=[Answer(200, "The document.", DashboardSchema, headers={"Cache-Control": True})],
    reads_redis=False,  # a section that cannot be read is null, and named in `unavailable`
)
async def get_document(request: web.Request) -> web.Response:
    require_operator(request)
    document = await request.app[DASHBOARD].get()
    return web.json_response(document, headers={"Cache-Control": "no-store"})


# The actions on a failed job: its id in the path, found by ``_failed``.
_failure_action = functools.partial(
    operator_operation, parameters=[{"in": "path", "name": "job_id", "required": True, "schema": {"type": "string"}}]
)


async def _failed(request: web.Request) -> FailedTry:
    require_operator(request)
    job_id = request.match_info["job_id"]
    failed = await failures.latest(request.app[REDIS], job_id)
    if failed is None:
        raise Problem(404, f"job {job_id!r} is not among the recent failed jobs", type_="not-found")
    return failed


@_failure_action(
    operation_id="retryFailedJob",
    summary="Enqueue a failed job again, for its tenant (loopback, Bearer $INTERNAL_TOKEN, or the dashboard's session)",
    description=(
        "A new job with the same task and arguments, through the tenant's quotas like `POST /v1/jobs`; "
        "the failed one stays as it is. Only a job that has failed for good: one waiting for its next try is 409."
    ),
    answers=[Answer(202, "The new job is queued.", RetriedSchema)],
    problems={
        404: "The job is not among the recent failed jobs.",
        409: "The job will be tried again anyway.",
        413: "The arguments are larger than `JOB_ARGS_MAX_BYTES` now.",
        422: "The task is no longer known, or the arguments no longer fit it.",
        429: "The tenant has `JOB_UNFINISHED_MAX` jobs queued, deferred or running.",
        503: "Background jobs are disabled in this deployment, or Redis cannot answer now.",
    },
)
async def post_retry(request: web.Request) -> web.Response:
    failed = await _failed(request)
    if failed.will_retry:
        raise Problem(409, f"job {failed.job_id!r} will be tried again; abort it first", type_="job-not-failed")
    view, _ = await enqueue_for(request.app, failed.tenant, failed.task, failed.args)
    body = {"job_id": view.id, "tenant": failed.tenant, "task": view.task, "retry_of": failed.job_id}
    return web.json_response(body, status=202)


@_failure_action(
    operation_id="abortFailingJob",
    summary="Abort a job that failed a try and waits for its next (loopback, Bearer $INTERNAL_TOKEN, or the session)",
    answers=[Answer(202, "Abort accepted.", AbortedSchema)],
    problems={
        404: "The job is not among the recent failed jobs, or no longer exists.",
        409: "The job has already finished.",
        503: "Redis cannot answer now.",
    },
)
async def post_abort(request: web.Request) -> web.Response:
    failed = await _failed(request)
    outcome, _ = await request.app[JOB_QUEUE].abort(failed.tenant, failed.job_id)
    if outcome == "missing":
        raise Problem(404, f"job {failed.job_id!r} no longer exists", type_="not-found")
    if outcome == "finished":
        raise Problem(409, f"job {failed.job_id!r} has already finished", type_="job-finished")
    return web.json_response({"job_id": failed.job_id, "tenant": failed.tenant, "outcome": outcome}, status=202)


def _static_route(static: StaticFile) -> Callable[[web.Request], Awaitable[web.Response]]:
    @browser_operation(
        operation_id="getDashboard" + static.name.partition(".")[2].capitalize(),
        summary=f"The dashboard's {static.name}",
        parameters=[query_parameter("v", "The content's hash, as the page names it: that URL may be cached for good.")],
        answers=[Answer(200, "The file.", {"type": "string"}, static.content_type)],
    )
    async def get_static(request: web.Request) -> web.Response:
        # Kept for good under the URL that names this content; under any other, asked again each time.
        cache = "public, max-age=31536000, immutable" if request.path_qs == static.url else "no-cache"
        return web.Response(
            body=static.body,
            content_type=static.content_type,
            charset="utf-8",
            headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
        )

    return get_static


async def _dashboard_ctx(app: web.Application) -> AsyncIterator[None]:
    dashboard = app[DASHBOARD] = Dashboard(
        app[REDIS], app[SETTINGS], readiness=app[READINESS], fleet=app[FLEET_METRICS], cron=app[CRON_STORE]
    )
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
    for static in page.STATIC.values():
        app.router.add_get(f"/dashboard/static/{static.name}", _static_route(static), allow_head=False)
    app.router.add_get("/internal/dashboard.json", get_document, allow_head=False)
    app.router.add_post("/internal/dashboard/failures/{job_id}/retry", post_retry)
    app.router.add_post("/internal/dashboard/failures/{job_id}/abort", post_abort)

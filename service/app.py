"""The application factory: ``create_app(settings)`` is used by ``serve``, ``dev`` and tests."""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp_apigami import setup_aiohttp_apispec, validation_middleware
from aiohttp_apigami.constants import SWAGGER_DICT

from jobs.registry import Registry
from jobs.tasks import TASKS
from service import __version__, readiness
from service.api import health, internal, ratelimit
from service.api import jobs as jobs_api
from service.app_keys import API_KEYS, METRICS, POLICIES, REDIS, REDIS_ONCE, REQUEST_ID, SETTINGS
from service.auth import ApiKeyStore
from service.errors import Problem, error_response
from service.logging import bind_context, get_logger
from service.metrics import Metrics
from service.ratelimit.middleware import limiter_ctx, v1_middleware
from service.ratelimit.policy import load_policies
from service.redis import redis_client
from service.settings import SERVICE_NAME, Settings

__all__ = ["MAX_BODY_BYTES", "AccessLogger", "create_app"]

MAX_BODY_BYTES = 1024 * 1024
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_counter = itertools.count(1)

log = get_logger(__name__)
access_log = get_logger("ottoai.access")


def _new_request_id() -> str:
    """32 hex digits like a UUID4's, unique without a system call per request (uuid4 reads urandom)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (the caller's ``X-Request-ID`` when sane), answer errors as problem+json, count it."""
    supplied = request.headers.get("X-Request-ID")
    request_id = supplied if supplied and _REQUEST_ID_SHAPE.fullmatch(supplied) else _new_request_id()
    request[REQUEST_ID] = request_id
    # No clear_contextvars() first: aiohttp runs each request in a task of its own, with a
    # copy of the connection's context, so nothing an earlier request bound is visible here.
    bind_context(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except Exception as exc:  # CancelledError is a BaseException: it passes
            response = error_response(request, exc)
        status = response.status
    except web.HTTPException as exc:  # a redirect or the like, which error_response raises again
        status = exc.status
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        request.app[METRICS].record_request(request.method, _route_of(request), status, time.perf_counter() - started)
    response.headers["X-Request-ID"] = request_id
    return response


class AccessLogger(AbstractAccessLogger):
    """One structured line per request; the path without its query (it may carry secrets)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        access_log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 2),
            request_id=request.get(REQUEST_ID),
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(20)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's two Redis clients: reads that may be retried, and calls that must run at most once.

    A rate-limit script call or an enqueue that fails mid-reply may already have run, so
    those go through a pool without retries; key look-ups and checks are safe to retry.
    """
    settings = app[SETTINGS]
    client = redis_client(settings, client_name="ottoai-web")
    once = redis_client(settings, client_name="ottoai-web-once", retries=0)
    app[REDIS] = client
    app[REDIS_ONCE] = once
    app[API_KEYS] = ApiKeyStore(client)
    try:
        yield
    finally:
        await once.aclose()
        await client.aclose()


def _validation_error(error: Any, req: Any, schema: Any, error_status_code: Any, error_headers: Any) -> None:
    messages = error.normalized_messages()
    errors = messages.get("json", messages) if isinstance(messages, dict) else messages
    raise Problem(422, "the request does not match the schema", type_="validation-error", errors=errors)


async def _strip_swagger2_fields(app: web.Application) -> None:
    """Drop the Swagger 2 ``produces`` that apigami's ``@docs`` adds even to an OpenAPI 3 document."""
    document = app[SWAGGER_DICT]  # apigami keeps the document under a string key
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.pop("produces", None)
                operation.pop("consumes", None)


def create_app(
    settings: Settings,
    *,
    registry: Registry = TASKS,
    extra_contexts: tuple[Callable[[web.Application], AsyncIterator[None]], ...] = (),
) -> web.Application:
    """Build the web application for ``settings``.

    Redis connections and other resources open in ``cleanup_ctx`` when the app starts and
    close when it stops. ``registry`` holds the tasks the jobs API accepts. ``extra_contexts``
    run after the built-in ones (``dev`` adds the in-process worker this way).
    """
    settings.require_redis()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[request_context_middleware, v1_middleware, validation_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_redis_ctx)
    app[POLICIES] = load_policies(settings.rate_limits_file)  # validated even when off: no surprise on switching on
    if settings.rate_limit_enabled:
        app.cleanup_ctx.append(limiter_ctx)
    jobs_api.setup(app, registry)
    app.cleanup_ctx.extend(extra_contexts)

    health.setup(app)
    readiness.setup(app)
    internal.setup(app)
    ratelimit.setup(app)
    setup_aiohttp_apispec(
        app,
        title=SERVICE_NAME,
        version=__version__,
        openapi_version="3.0.3",
        url="/openapi.json",
        swagger_path="/docs",
        error_callback=_validation_error,
        components={
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        },
    )
    app.on_startup.append(_strip_swagger2_fields)  # runs after apigami builds the document
    return app

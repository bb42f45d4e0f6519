"""The application factory: ``create_app(settings)`` is used by ``serve``, ``dev`` and tests."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp_apigami import setup_aiohttp_apispec, validation_middleware

from service import __version__
from service.api import health
from service.api import jobs as jobs_api
from service.auth import ApiKeyStore, identity_middleware, require_key_middleware
from service.errors import Problem, problem_middleware
from service.keys import API_KEYS, METRICS, REDIS, REQUEST_ID, SETTINGS
from service.logging import get_logger
from service.metrics import Metrics
from service.redis import redis_client
from service.settings import SERVICE_NAME, Settings

__all__ = ["MAX_BODY_BYTES", "AccessLogger", "create_app"]

MAX_BODY_BYTES = 1024 * 1024
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

log = get_logger(__name__)
access_log = get_logger("ottoai.access")


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (the caller's ``X-Request-ID`` when sane) and count it."""
    supplied = request.headers.get("X-Request-ID", "")
    request_id = supplied if _REQUEST_ID_SHAPE.fullmatch(supplied) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:  # a redirect or the like, passed through the error middleware
        status = exc.status
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        route = _route_of(request)
        metrics = request.app[METRICS]
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_request_duration.labels(route).observe(time.perf_counter() - started)
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
    settings = app[SETTINGS]
    client = redis_client(settings, client_name="ottoai-web")
    app[REDIS] = client
    app[API_KEYS] = ApiKeyStore(client)
    try:
        yield
    finally:
        await client.aclose()


def _validation_error(error: Any, req: Any, schema: Any, error_status_code: Any, error_headers: Any) -> None:
    messages = error.normalized_messages()
    errors = messages.get("json", messages) if isinstance(messages, dict) else messages
    raise Problem(422, "the request does not match the schema", type_="validation-error", errors=errors)


def create_app(
    settings: Settings,
    *,
    extra_contexts: tuple[Callable[[web.Application], AsyncIterator[None]], ...] = (),
) -> web.Application:
    """Build the web application for ``settings``.

    Redis connections and other resources open in ``cleanup_ctx`` when the app starts and
    close when it stops. ``extra_contexts`` run after the built-in ones (``dev`` adds the
    in-process worker this way).
    """
    settings.require_redis()
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            request_context_middleware,
            problem_middleware,
            identity_middleware,
            require_key_middleware,
            validation_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_redis_ctx)
    jobs_api.setup(app)
    app.cleanup_ctx.extend(extra_contexts)

    health.setup(app)
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
    return app

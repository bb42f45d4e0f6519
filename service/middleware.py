"""The request middleware: request id, the one problem+json error path, request metrics, the body limit,
and the ``/v1`` gate (``service/ratelimit/middleware.py``) for that prefix.

One layer does all of it because each middleware layer costs every request. A declared
``Content-Length`` over the limit is refused here, before anything reads the body (a chunked
body is held to the same limit by aiohttp as it is read).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.app_keys import METRICS, REQUEST_ID
from service.errors import CLIENT_CLOSED_REQUEST, Problem, error_response
from service.logging import bind_request_id
from service.request_body import MAX_BODY_BYTES

__all__ = ["Gate", "request_middleware"]

# What guards a prefix: called with the request and the handler instead of the handler.
Gate = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
V1_PREFIX = "/v1/"

_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_counter = itertools.count(1)


def _new_request_id() -> str:
    """32 hex digits like a UUID4's, unique without a system call per request (uuid4 reads urandom)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _too_large(length: int) -> Problem:
    return Problem(413, f"the request body ({length} bytes declared) is larger than the 1 MiB limit")


def request_middleware(*, v1_gate: Gate) -> Middleware:
    """The app's one middleware; ``v1_gate`` guards the ``/v1/`` routes."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Give every request an id (the caller's ``X-Request-ID`` when sane), answer errors as problem+json, count it.

        A request whose declared body is over the limit is answered 413 without being handled.
        """
        supplied = request.headers.get("X-Request-ID")
        request_id = supplied if supplied and _REQUEST_ID_SHAPE.fullmatch(supplied) else _new_request_id()
        request[REQUEST_ID] = request_id
        # No clear_contextvars() first: aiohttp runs each request in a task of its own, with a
        # copy of the connection's context, so nothing an earlier request bound is visible here.
        bind_request_id(request_id)
        started = time.perf_counter()
        status = 500
        try:
            try:
                length = request.content_length
                if length is not None and length > MAX_BODY_BYTES:
                    raise _too_large(length)
                if request.path.startswith(V1_PREFIX):
                    response = await v1_gate(request, handler)
                else:
                    response = await handler(request)
            except Exception as exc:  # CancelledError is a BaseException: it passes
                response = error_response(request, exc)
            status = response.status
        except web.HTTPException as exc:  # a redirect or the like, which error_response raises again
            status = exc.status
            exc.headers["X-Request-ID"] = request_id
            raise
        except asyncio.CancelledError:  # the client left and aiohttp cancelled the handler: not a server error
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            request.app[METRICS].record_request(
                request.method, _route_of(request), status, time.perf_counter() - started
            )
        response.headers["X-Request-ID"] = request_id
        return response

    return middleware

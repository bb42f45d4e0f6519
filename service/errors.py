"""The one error path: every failure leaves as RFC 9457 ``application/problem+json``.

Handlers and middlewares raise (``Problem`` or any aiohttp ``HTTPException``);
``error_response`` renders the body, called by the request middleware of ``service/middleware.py``
(one layer for request id, metrics and errors: each middleware layer costs every request).
Unexpected exceptions are logged with their traceback and answered with a bare 500 that
reveals nothing of it. A client that went away mid-request (``ClientDisconnected``) is
logged at info and counted as 499, the status proxies use for it: it is not a server error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.logging import get_logger

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_BASE",
    "ClientDisconnected",
    "Problem",
    "error_response",
    "problem_body",
    "problem_response",
]

PROBLEM_TYPE_BASE = "https://ottoai.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json; charset=utf-8"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer
# Answers that leave (part of) a request body unread: the connection cannot carry another request.
_CLOSING_STATUSES = frozenset({408, 413})
# Redis at maxmemory frees memory only as results and jobs expire or finish: not within a second.
OUT_OF_MEMORY_RETRY_AFTER_S = 30

log = get_logger(__name__)


class Problem(Exception):
    """An HTTP error with an RFC 9457 body.

    ``type_`` is a short slug (``quota-exceeded``) made absolute under ``PROBLEM_TYPE_BASE``;
    ``extensions`` become extra members of the body. ``close_connection`` ends the connection
    after the answer (by default for 408 and 413, which leave a body unread).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        close_connection: bool | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_ = type_
        self.title = title or _reason(status)
        self.headers = dict(headers or {})
        self.close_connection = status in _CLOSING_STATUSES if close_connection is None else close_connection
        self.extensions = extensions


class ClientDisconnected(Exception):
    """The client closed its connection before its request was read: nobody is left to answer."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(status: int) -> str:
    return _reason(status).lower().replace(" ", "-").replace("'", "")


def problem_body(problem: Problem) -> bytes:
    """The RFC 9457 JSON document of ``problem``."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (problem.type_ or _slug(problem.status)),
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extensions,
    }
    return json.dumps(body).encode()


def problem_response(problem: Problem) -> web.Response:
    """``problem`` as an ``application/problem+json`` response."""
    response = web.Response(
        status=problem.status,
        body=problem_body(problem),
        headers={**problem.headers, "Content-Type": PROBLEM_CONTENT_TYPE},
    )
    if problem.close_connection:
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> Problem:
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    extensions: dict[str, Any] = {}
    detail = exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"{exc.method} is not allowed here; allowed: {', '.join(sorted(exc.allowed_methods))}"
    elif isinstance(exc, web.HTTPNotFound):
        detail = "no such resource"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        detail = "request body is larger than the 1 MiB limit"
    elif exc.text and exc.content_type == "application/json":
        # webargs (behind aiohttp-apigami) puts its messages in a JSON body, e.g. for a body
        # that is not JSON at all: {"json": ["Invalid JSON body."]}.
        try:
            messages = json.loads(exc.text)
        except ValueError:
            messages = None
        if isinstance(messages, dict):
            extensions["errors"] = messages
            detail = "the request is malformed: " + _summarise(messages)
    elif exc.text and exc.content_type == "text/plain" and not exc.text.startswith(f"{exc.status}:"):
        detail = exc.text
    return Problem(exc.status, detail, headers=headers, **extensions)


def _summarise(errors: Any, prefix: str = "") -> str:
    if isinstance(errors, dict):
        return "; ".join(_summarise(v, f"{prefix}{k}.") for k, v in errors.items())
    if isinstance(errors, list):
        return f"{prefix.rstrip('.')}: {' '.join(str(e) for e in errors)}"
    return f"{prefix.rstrip('.')}: {errors}"


def error_response(request: web.Request, exc: Exception) -> web.Response:
    """The problem+json answer to an exception a handler or middleware raised.

    A ``Problem`` or an ``HTTPException`` of 400 and above is rendered as it is; Redis
    connection errors and a Redis out of memory (a write refused at ``maxmemory``) are a
    503 with ``Retry-After``; anything else is logged with its traceback and becomes a
    500 that reveals nothing of it. ``HTTPException``s below 400 (redirects) are not
    errors and are raised again for aiohttp to send.
    """
    if isinstance(exc, Problem):
        return problem_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return problem_response(_from_http_exception(exc))
    if isinstance(exc, ClientDisconnected):
        log.info("client disconnected before its request was read", method=request.method, path=request.path)
        return web.Response(status=CLIENT_CLOSED_REQUEST)  # never sent: it only names the outcome for logs and metrics
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        log.warning("redis unavailable", method=request.method, path=request.path, error=str(exc))
        return problem_response(
            Problem(
                503,
                "Redis is unavailable; try again shortly",
                type_="dependency-unavailable",
                headers={"Retry-After": "1"},
            )
        )
    if isinstance(exc, RedisOutOfMemoryError):
        log.warning("redis is out of memory; writes are refused", method=request.method, path=request.path)
        return problem_response(
            Problem(
                503,
                "the service's storage is full; try again later",
                type_="storage-full",
                headers={"Retry-After": str(OUT_OF_MEMORY_RETRY_AFTER_S)},
            )
        )
    log.error("unhandled error", method=request.method, path=request.path, exc_info=exc)
    return problem_response(Problem(500, "an unexpected error occurred; it has been logged", type_="internal"))

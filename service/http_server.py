"""The HTTP layer under the app: aiohttp's server, with what happens before a request reaches the app.

- **Parser errors.** A request aiohttp's parser refuses (a control byte in a header, a line
  over 8,190 bytes, broken framing) never reaches the app: aiohttp answers it from its
  protocol with a ``text/plain`` 400 that echoes the offending bytes, and logs them at error
  level, API key and all. ``GuardedRequestHandler`` answers it as problem+json that names
  the kind of error only, and logs a warning without the bytes.
- **Expectations.** aiohttp answers ``Expect: 100-continue`` before any middleware runs, so a
  client declaring a body over the limit would be told to send it. The request factory
  leaves out an ``Expect`` that must not be honoured (a declared body over the limit, or an
  expectation other than ``100-continue``, which RFC 9110 lets a server ignore); the request
  middleware then refuses the declared length with 413, and aiohttp never answers 417 in
  ``text/plain``.
- **Broken bodies.** After the app has answered, aiohttp drains the unread rest of a body;
  when that body broke off or did not decode it logs an "Unhandled exception" with its
  traceback. Here that is an info line: the app has already answered (400, or 499 when
  the client left).

The connection timeouts are aiohttp's own, set by ``create_app`` (``handler_args``).
``ServiceRunner`` serves an app this way and ``serve`` runs it until SIGTERM or SIGINT;
``tests/test_aiohttp_contract.py`` pins the aiohttp internals this module leans on.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from service import event_loop
from service.access_log import AccessLogger
from service.errors import Problem, problem_response
from service.logging import flush_access_lines, get_logger
from service.request_body import MAX_BODY_BYTES

__all__ = ["GuardedRequestHandler", "GuardedServer", "ServiceRunner", "serve"]

log = get_logger(__name__)

RequestFactory = Callable[
    [RawRequestMessage, StreamReader, RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"], web.BaseRequest
]

# What a parser error says, by its kind: never the offending bytes (they may hold a key).
_PARSE_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (LineTooLong, "a request line or header field is longer than 8,190 bytes"),
    (InvalidHeader, "a header field is malformed"),
    (BadHttpMethod, "the method is not a valid token"),
    (BadStatusLine, "the request line is malformed"),
    (InvalidURLError, "the request target is malformed"),
    (PayloadEncodingError, "the body's framing or encoding is malformed"),
)


def _parse_failure(exc: BaseException | None) -> str:
    for kind, what in _PARSE_FAILURES:
        if isinstance(exc, kind):
            return what
    return "it is not valid HTTP/1.1"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol whose own error answers are problem+json and whose logs hold no request bytes."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request that failed outside the app: unparseable (4xx) or escaping it (5xx)."""
        if request.writer.output_size > 0:  # as aiohttp's: a started response cannot be replaced
            raise ConnectionError("the response has started; no error answer can follow it")
        # Either way the connection closes: after a parser error nothing tells where the next request starts.
        if status >= 500:
            log.error("unhandled error outside the app", status=status, exc_info=exc)
            detail, type_ = "an unexpected error occurred; it has been logged", "internal"
        else:
            log.warning("malformed request refused", status=status, error=type(exc).__name__, remote=request.remote)
            detail, type_ = f"the request is malformed: {_parse_failure(exc)}", None
        return problem_response(Problem(status, detail, type_=type_, close_connection=True))

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's error log, except for a body that broke off or did not decode, which the app answered."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, RequestPayloadError | ConnectionError):
            log.info("unread request body abandoned", error=type(exc).__name__)
            return
        super().log_exception(*args, **kwargs)


def _honoured_expectations_only(make_request: RequestFactory) -> RequestFactory:
    """``make_request`` for messages without an ``Expect`` that must not get ``100 Continue``."""

    def make(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        expect = message.headers.get(hdrs.EXPECT)
        if expect is not None:
            length = message.headers.get(hdrs.CONTENT_LENGTH)
            within_limit = length is None or int(length) <= MAX_BODY_BYTES  # the parser has checked it is digits
            if not (expect.strip().lower() == "100-continue" and within_limit):
                headers = CIMultiDict(message.headers)
                del headers[hdrs.EXPECT]
                raw = tuple((name, value) for name, value in message.raw_headers if name.lower() != b"expect")
                message = message._replace(headers=CIMultiDictProxy(headers), raw_headers=raw)
        return make_request(message, payload, protocol, writer, task)

    return make


class GuardedServer(web.Server):
    """aiohttp's server whose connections are ``GuardedRequestHandler``s."""

    def __init__(self, handler: Any, *, request_factory: RequestFactory, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=_honoured_expectations_only(request_factory), **kwargs)

    def __call__(self) -> RequestHandler:
        # As web.Server.__call__, with the subclass: the protocol factory of every connection.
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """aiohttp's ``AppRunner`` that serves through ``GuardedServer``, with the structured access log.

    ``serve`` runs it; so do the tests that look at the server as clients see it.
    """

    def __init__(
        self, app: web.Application, *, access_log_class: type[AbstractAccessLogger] = AccessLogger, **kwargs: Any
    ) -> None:
        super().__init__(app, access_log_class=access_log_class, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app; aiohttp's server, with every option merged
        return GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )


async def _until_stop_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve(app: web.Application, sock: socket.socket, shutdown_timeout_s: float) -> None:
    runner = ServiceRunner(app, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        log.info("listening", host=host, port=port)
        await _until_stop_signal()
    finally:
        await runner.cleanup()  # stops listening, drains requests for up to shutdown_timeout_s, then cleanup_ctx
        flush_access_lines()  # the last turn's lines, before the process logs that it stopped


def serve(app: web.Application, *, sock: socket.socket, shutdown_timeout_s: float) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGTERM or SIGINT, then stop gracefully (as ``web.run_app`` does)."""
    event_loop.run(_serve(app, sock, shutdown_timeout_s))

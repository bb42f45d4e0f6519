"""What ``service/http_server.py`` takes from aiohttp beyond its documented API, pinned so an upgrade fails by name.

``ServiceRunner`` overrides ``AppRunner._make_server`` (the abstract hook of ``BaseRunner``)
and rebuilds aiohttp's ``web.Server`` as ``GuardedServer`` from its public attributes and
its ``_kwargs``; ``GuardedServer`` makes each connection's protocol as ``Server.__call__``
does, from ``_loop`` and ``_kwargs``; ``GuardedRequestHandler`` overrides
``RequestHandler.handle_error`` and ``log_exception``; the request factory rebuilds a
``RawRequestMessage`` with ``_replace``; ``HTTP_IDLE_TIMEOUT_S`` is aiohttp's keep-alive
timer, a request-head deadline because aiohttp starts it when a connection opens. The
behaviour they produce (problem+json parser errors, quiet broken bodies, no
``100 Continue`` before a 413, the head deadline) is tested through sockets in
``tests/test_hostile_input.py``.
"""

from __future__ import annotations

import asyncio
import inspect

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy
from redis.asyncio import Redis
from yarl import URL

from service.app import create_app
from service.http_server import GuardedRequestHandler, GuardedServer, ServiceRunner
from tests.conftest import make_settings


async def _handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


async def test_server_keeps_its_protocol_options_and_loop_where_guarded_server_reads_them() -> None:
    server = web.Server(_handler, keepalive_timeout=7.0, lingering_time=1.0)

    assert server._kwargs == {"keepalive_timeout": 7.0, "lingering_time": 1.0}
    assert server._loop is asyncio.get_running_loop()
    assert {"request_handler", "request_factory", "handler_cancellation"} <= set(vars(server))
    protocol = server()
    assert type(protocol) is RequestHandler  # what GuardedServer.__call__ replaces, argument for argument
    assert protocol.keepalive_timeout == 7.0


async def test_app_runner_makes_its_server_in_the_overridable_make_server(redis: Redis) -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    runner = ServiceRunner(create_app(make_settings(HTTP_IDLE_TIMEOUT_S="3")), handler_cancellation=True)
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, GuardedServer)
        assert server.handler_cancellation is True
        assert server._kwargs["keepalive_timeout"] == 3.0  # create_app's handler_args survived the rebuild
        assert type(server()) is GuardedRequestHandler
    finally:
        await runner.cleanup()


def test_request_handler_error_hooks_take_the_arguments_the_guard_overrides() -> None:
    assert list(inspect.signature(RequestHandler.handle_error).parameters) == [
        "self",
        "request",
        "status",
        "exc",
        "message",
    ]
    assert list(inspect.signature(GuardedRequestHandler.handle_error).parameters) == list(
        inspect.signature(RequestHandler.handle_error).parameters
    )
    source = inspect.getsource(RequestHandler.start)
    assert 'self.log_exception("Unhandled exception", exc_info=exc)' in source  # the keyword the guard reads


def test_raw_request_message_can_be_rebuilt_without_a_header() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Host": "x", "Expect": "100-continue"}))
    message = RawRequestMessage(
        "POST", "/", HttpVersion11, headers, ((b"Host", b"x"), (b"Expect", b"100-continue")),
        False, None, False, False, URL("/"),
    )  # fmt: skip

    rebuilt = message._replace(headers=CIMultiDictProxy(CIMultiDict({"Host": "x"})), raw_headers=((b"Host", b"x"),))

    assert "Expect" not in rebuilt.headers
    assert rebuilt.raw_headers == ((b"Host", b"x"),)
    assert rebuilt.method == "POST"


def test_keep_alive_timer_starts_when_a_connection_opens() -> None:
    # Without this (aiohttp pull request 13681) the timer started only after a first response,
    # so a connection that never completed a request head (slow headers, a half-sent request)
    # was held for as long as the client liked.
    assert "self._process_keepalive" in inspect.getsource(RequestHandler.connection_made)
    process = inspect.getsource(RequestHandler._process_keepalive)
    assert "if self._waiter and not self._waiter.done():" in process  # closes one still waiting for a request

"""Logs are structured and never carry a password or a configured secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service import logging as service_logging
from service.app import create_app
from service.logging import bind_context, configure_logging, get_logger
from service.settings import Settings

SENTINEL = "sentinel-pw-4242"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging configured for the test into a string; everything it changes is put back afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    saved_secrets = service_logging._secrets
    configure_logging("json", secrets=[SENTINEL], stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
        service_logging._secrets = saved_secrets


def test_json_lines_carry_fields_not_interpolated_text(captured: io.StringIO) -> None:
    get_logger("t").info("job finished", job_id="j1", task="diagnostics.ping")
    line = json.loads(captured.getvalue().splitlines()[-1])
    assert line["event"] == "job finished"
    assert line["job_id"] == "j1"
    assert line["level"] == "info"
    assert "timestamp" in line


def test_passwords_are_hidden_in_every_kind_of_record(captured: io.StringIO) -> None:
    url = f"rediss://default:{SENTINEL}@fly-redis.upstash.io:6380"
    get_logger("t").warning("connecting", url=url, nested={"dsn": url}, listed=[url])
    logging.getLogger("arq.worker").error("lost connection to %s", url)
    logging.getLogger("other").info("token in text: Bearer %s", SENTINEL)
    try:
        raise ConnectionError(f"Error connecting to {url}")
    except ConnectionError:
        get_logger("t").exception("redis failed")
    get_logger("t").info("unrelated URL", url="redis://:another-password@h:1/0")
    output = captured.getvalue()
    assert SENTINEL not in output
    assert "another-password" not in output
    assert "default:***@fly-redis.upstash.io" in output


def test_api_keys_are_hidden_in_every_kind_of_record_but_their_prefix(captured: io.StringIO) -> None:
    key = "otto_" + "0123456789abcdef" * 3
    get_logger("t").warning("looked up", key=key, nested={"headers": [f"Bearer {key}"]})
    logging.getLogger("aiohttp.server").error("Invalid header value char:\n\n  %r", f"X-API-Key: {key}\x01".encode())
    try:
        raise ValueError(f"unknown key {key[:5]}{key[5:].upper()}")
    except ValueError:
        get_logger("t").exception("lookup failed")
    output = captured.getvalue()
    assert key[5:] not in output.lower()
    assert key[13:] not in output.lower()  # nothing past the prefix, in any case
    assert "otto_01234567***" in output


async def test_request_log_lines_carry_their_own_request_id_and_nothing_of_earlier_requests(
    captured: io.StringIO, aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> None:
    async def chatty(request: web.Request) -> web.Response:
        if request.query.get("tenant"):
            bind_context(tenant=request.query["tenant"])
        get_logger("t").info("handling")
        return web.json_response({})

    app = create_app(settings)
    app.router.add_get("/chatty", chatty)
    client = await aiohttp_client(app)
    first = await client.get("/chatty?tenant=acme")  # one keep-alive connection for both
    second = await client.get("/chatty")

    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    handling = [line for line in lines if line["event"] == "handling"]
    assert [line["request_id"] for line in handling] == [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert handling[0]["tenant"] == "acme"
    assert "tenant" not in handling[1]


def test_tenant_webhook_secrets_are_hidden_by_their_shape(captured: io.StringIO) -> None:
    secret = "whsec_" + "ab12" * 16
    get_logger("t").warning("rotated", note=f"new secret {secret}")
    logging.getLogger("other").info("secret in text: %s", secret)

    output = captured.getvalue()
    assert secret not in output
    assert output.count("whsec_***") == 2

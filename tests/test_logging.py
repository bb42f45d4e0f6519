"""Logs are structured and never carry a password or a configured secret; the access log's JSON lines too."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import example, given
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from service import logging as service_logging
from service.access_log import _milliseconds, access_line
from service.app import create_app
from service.logging import LineBuffer, bind_context, configure_logging, get_logger, redacted_json
from service.settings import Settings
from tests.processes import run_service
from tests.servers import redis_url
from tests.waiting import until

Client = TestClient[web.Request, web.Application]
SENTINEL = "sentinel-pw-4242"
API_KEY = "otto_" + "0123456789abcdef" * 3


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging configured for the test into a string; everything it changes is put back afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    saved_secrets, saved_access_lines = service_logging._secrets, service_logging._access_lines
    configure_logging("json", secrets=[SENTINEL], stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
        service_logging._secrets, service_logging._access_lines = saved_secrets, saved_access_lines


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


def _access_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "ottoai.access"]


async def _written(stream: io.StringIO, count: int) -> list[dict[str, object]]:
    """The access lines in ``stream`` once there are ``count`` (they are written at the end of a loop turn)."""

    async def enough() -> list[dict[str, object]]:
        lines = _access_lines(stream)
        return lines if len(lines) >= count else []

    return await until(enough, what=f"{count} access line(s)")


async def test_each_request_gets_one_json_line_with_the_fields_of_every_log_line(
    captured: io.StringIO, client: Client
) -> None:
    answer = await client.get("/health?token=hidden", headers={"X-Request-ID": "req-1"})
    [line] = await _written(captured, 1)
    assert list(line) == [
        "method", "path", "status", "duration_ms", "request_id", "remote", "event", "level", "logger", "timestamp",
    ]  # fmt: skip
    assert (line["method"], line["path"], line["status"]) == ("GET", "/health", answer.status)
    assert line["request_id"] == answer.headers["X-Request-ID"] == "req-1"
    assert (line["event"], line["level"]) == ("request", "info")
    assert isinstance(line["duration_ms"], float)
    assert str(line["timestamp"]).endswith("Z")


async def test_secrets_in_a_path_or_request_id_are_hidden(captured: io.StringIO, client: Client) -> None:
    await client.get(f"/v1/jobs/{API_KEY}", headers={"X-API-Key": API_KEY})
    await client.get(f"/nowhere/{SENTINEL}/%22quoted%22", headers={"X-Request-ID": API_KEY})
    first, second = await _written(captured, 2)

    output = captured.getvalue()
    assert API_KEY[13:] not in output
    assert SENTINEL not in output
    assert first["path"] == "/v1/jobs/otto_01234567***"
    assert second["path"] == '/nowhere/***/"quoted"'
    assert second["request_id"] == "otto_01234567***"


def test_a_line_matches_what_json_would_write() -> None:
    line = access_line("GET", '/a/"b"\\/\u00e9\x01', 404, 0.0123456, None, "::1", 1764412800.25)
    assert json.loads(line) == {
        "method": "GET",
        "path": '/a/"b"\\/\u00e9\x01',
        "status": 404,
        "duration_ms": 12.35,
        "request_id": None,
        "remote": "::1",
        "event": "request",
        "level": "info",
        "logger": "ottoai.access",
        "timestamp": "2025-11-29T10:40:00.250000Z",
    }
    assert line.endswith("}\n")
    assert line.count("\n") == 1


@given(st.floats(min_value=0, max_value=1e9))  # up to 31 years, in seconds
@example(0.0)
@example(5e-324)
@example(0.000005)  # half a hundredth of a millisecond: a tie for both
@example(0.000015)
@example(1.0)
def test_a_duration_is_written_as_round_would_write_it(duration_s: float) -> None:
    assert _milliseconds(duration_s) == repr(round(duration_s * 1000, 2))


async def test_lines_of_one_loop_turn_are_written_together_at_its_end() -> None:
    stream = io.StringIO()
    lines = LineBuffer(stream)
    lines.write("one\n")
    lines.write("two\n")
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert stream.getvalue() == "one\ntwo\n"


def test_a_line_written_outside_a_loop_is_written_at_once() -> None:
    stream = io.StringIO()
    LineBuffer(stream).write("alone\n")
    assert stream.getvalue() == "alone\n"


def test_a_line_kept_by_a_loop_that_stopped_is_written_by_the_next() -> None:
    stream = io.StringIO()
    lines = LineBuffer(stream)

    async def write(line: str) -> None:
        lines.write(line)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(write("first\n"))  # the loop stops before the turn that would flush
    finally:
        loop.close()
    asyncio.run(write("second\n"))
    assert stream.getvalue() == "first\nsecond\n"


def test_every_answered_request_has_its_line_after_a_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    ids = [f"stop-{n}" for n in range(200)]
    with run_service("serve", log=log, REDIS_URL=redis_url(), LOG_FORMAT="json") as child:
        child.wait_healthy()
        for request_id in ids:
            request = urllib.request.Request(child.base_url + "/health", headers={"X-Request-ID": request_id})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        code, _, _ = child.stop(signal.SIGTERM)
    assert code == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    logged = [r["request_id"] for r in records if r["event"] == "request" and r["request_id"] in ids]
    assert logged == ids
    assert records[-1]["event"] == "stopped"


def test_a_text_remembered_before_a_secret_was_configured_is_redacted_once_it_is(captured: io.StringIO) -> None:
    path = f"/v1/jobs/{SENTINEL}"
    configure_logging("json", secrets=[], stream=captured)
    assert SENTINEL in redacted_json(path)  # remembered as it was: no secret was known

    configure_logging("json", secrets=[SENTINEL], stream=captured)

    assert redacted_json(path) == '"/v1/jobs/***"'

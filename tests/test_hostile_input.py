"""The hostile corpus: malformed, oversized, slow and odd requests, each a 4xx problem+json that changes nothing.

Every request travels as raw bytes over a socket (a client library would refuse to send
most of them) to the app served the way ``python -m service serve`` serves it
(``ServiceRunner``, handler cancellation off). For each case the test asserts the exact
status, an RFC 9457 body that names it, that Redis holds the same keys and values after
as before (the limiter's ``rl:*`` buckets aside: the limiter runs, with room enough that
every case reaches the code it aims at), and that nothing was logged at error level and
no log line holds the API key.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from redis.asyncio import Redis

from jobs import webhook_tenants
from service.app import create_app
from service.app_keys import API_KEYS, METRICS
from service.auth import PREFIX_LEN
from service.http_server import ServiceRunner
from tests.conftest import make_settings

ROOMY_POLICIES = """
[plans.default]
"*" = [{ name = "burst", capacity = 10000, per_second = 1000 }]
[anonymous]
"*" = [{ name = "address", capacity = 10000, per_second = 1000 }]
"""
READ_DEADLINE_S = 10.0  # far above the 1 s timeouts the server runs with here, far below the 40 s of old


@dataclass(frozen=True)
class Answer:
    status_line: bytes
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def problem(self) -> dict[str, object]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), self.raw[:300]
        document: dict[str, object] = json.loads(self.body)
        assert set(document) >= {"type", "title", "status", "detail"}
        assert document["status"] == self.status
        return document


def parse_answer(raw: bytes) -> Answer:
    """The final response in ``raw`` (after any interim 1xx ones)."""
    rest = raw
    while True:
        head, _, rest = rest.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        status = int(status_line.split(b" ")[1])
        if status >= 200:
            break
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status_line, status, headers, rest, raw)


@dataclass
class Served:
    port: int
    key: str
    app: web.Application
    logs: io.StringIO

    async def exchange(self, request: bytes) -> bytes:
        """Send ``request``; everything the server sends until it closes the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            async with asyncio.timeout(READ_DEADLINE_S):
                return await reader.read()
        finally:
            writer.close()

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]


@pytest.fixture
async def served(redis: Redis, tmp_path: Path, logs: io.StringIO) -> AsyncIterator[Served]:
    policies = tmp_path / "policies.toml"
    policies.write_text(ROOMY_POLICIES)
    settings = make_settings(
        RATE_LIMITS_FILE=str(policies),
        HTTP_IDLE_TIMEOUT_S="1",
        HTTP_BODY_TIMEOUT_S="1",
        WEBHOOK_SECRET="hostile-corpus-secret",
        WEBHOOK_ALLOWED_HOSTS="hooks.example",
    )
    app = create_app(settings)
    runner = ServiceRunner(app)  # as serve runs it: a request is not cancelled when its client leaves
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        key = await app[API_KEYS].create("acme")
        await webhook_tenants.rotate_secret(redis, "acme", "hostile-corpus-secret")  # so webhook URLs are checked
        await webhook_tenants.set_receivers(redis, "acme", ("hooks.example",))
        yield Served(runner.addresses[0][1], key, app, logs)  # conftest's logs: every line, as JSON
    finally:
        await runner.cleanup()


async def redis_state(redis: Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialized value, but the limiter's buckets (every request spends those)."""
    return {key: await redis.dump(key) for key in sorted(await redis.keys()) if not key.startswith(b"rl:")}


def assert_logs_are_clean(served: Served) -> None:
    lines = served.log_lines()
    assert [line for line in lines if line["level"] in ("error", "critical")] == []
    assert served.key[PREFIX_LEN:] not in served.logs.getvalue()


# Requests, built from the API key. Each asks the server to close the connection after it.
Request = Callable[[str], bytes]


def raw(text: bytes) -> Request:
    return lambda key: text.replace(b"{key}", key.encode())


def get(target: bytes, *headers: bytes) -> Request:
    return raw(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers) + b"\r\n")


def with_key(target: bytes, *headers: bytes) -> Request:
    return get(target, b"X-API-Key: {key}\r\n", *headers)


def post_job(body: bytes, content_type: bytes = b"application/json", *headers: bytes) -> Request:
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\n"
        b"Content-Type: " + content_type + b"\r\nContent-Length: %d\r\n" % len(body) + b"".join(headers) + b"\r\n"
    )
    return raw(head + body)


def job(**fields: object) -> bytes:
    return json.dumps({"task": "diagnostics.ping", **fields}).encode()


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


PING = job()
MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    request: Request
    status: int


CASES = [
    # The 5xx: JSON nested ~1,000 deep, an integer of more than 4,300 digits, an unknown
    # charset, a gzip body that is not gzip.
    Case("json-nested-1000-deep", post_job(b"[" * 1000 + b"]" * 1000), 400),
    Case("json-objects-nested-100-deep", post_job(b'{"a":' * 100 + b"1" + b"}" * 100), 400),
    Case(
        "json-integer-of-5000-digits", post_job(b'{"task":"diagnostics.ping","args":{"n":' + b"7" * 5000 + b"}}"), 400
    ),
    Case("charset-unknown", post_job(PING, b"application/json; charset=no-such-charset"), 415),
    Case("charset-latin-1", post_job(PING, b"application/json; charset=latin-1"), 415),
    Case("gzip-that-is-not-gzip", post_job(PING, b"application/json", b"Content-Encoding: gzip\r\n"), 400),
    Case("content-coding-unknown", post_job(PING, b"application/json", b"Content-Encoding: compress\r\n"), 415),
    # Not JSON, though Python's json module reads it.
    Case("json-nan", post_job(b'{"task":"diagnostics.ping","args":{"x":NaN}}'), 400),
    Case("json-infinity", post_job(b'{"task":"diagnostics.ping","args":{"x":Infinity}}'), 400),
    Case("json-minus-infinity", post_job(b'{"task":"diagnostics.ping","args":{"x":-Infinity}}'), 400),
    Case("json-number-beyond-double", post_job(b'{"task":"diagnostics.ping","args":{"x":1e999}}'), 400),
    # The usual: truncated or not JSON at all, wrong media types, invalid UTF-8.
    Case("json-truncated", post_job(PING[:-3]), 400),
    Case("json-utf8-bom", post_job(b"\xef\xbb\xbf" + PING), 400),
    Case("utf8-invalid", post_job(b'{"task":"diagnostics.ping\xff\xfe"}'), 400),
    Case("utf8-overlong-slash", post_job(b'{"task":"\xc0\xaf"}'), 400),
    Case("body-text-plain", post_job(PING, b"text/plain"), 415),
    Case("body-form-urlencoded", post_job(b"task=diagnostics.ping", b"application/x-www-form-urlencoded"), 415),
    Case("body-multipart", post_job(b"--x\r\n\r\n--x--", b"multipart/form-data; boundary=x"), 415),
    Case("body-xml", post_job(b"<task/>", b"application/xml"), 415),
    # Strict types: a string is not a number, a boolean not a number, JSON null not an object.
    Case("defer-seconds-as-string", post_job(job(defer_seconds="5")), 422),
    Case("defer-seconds-as-boolean", post_job(job(defer_seconds=True)), 422),
    Case("defer-seconds-negative", post_job(job(defer_seconds=-1)), 422),
    Case("defer-seconds-huge", post_job(job(defer_seconds=1e308)), 422),
    Case("task-as-number", post_job(b'{"task":5}'), 422),
    Case("args-as-list", post_job(job(args=[1])), 422),
    Case("unknown-field", post_job(job(priority=1)), 422),
    Case("unknown-task", post_job(b'{"task":"no.such.task"}'), 422),
    Case(
        "webhook-url-port-99999",
        post_job(b'{"task":"webhook.deliver","args":{"url":"http://hooks.example:99999/","payload":{}}}'),
        422,
    ),
    Case("body-null", post_job(b"null"), 422),
    Case("body-array", post_job(b"[]"), 422),
    Case("body-empty", post_job(b""), 422),
    Case(
        "idempotency-key-too-long",
        post_job(PING, b"application/json", b"Idempotency-Key: " + b"k" * 300 + b"\r\n"),
        422,
    ),
    Case(
        "idempotency-key-non-ascii", post_job(PING, b"application/json", b"Idempotency-Key: \xc3\xa9t\xc3\xa9\r\n"), 422
    ),
    # Sizes: a declared length over 1 MiB is refused unread, with or without Expect; a chunked
    # body is refused once 1 MiB of it has arrived.
    Case(
        "content-length-50-mb",
        raw(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        ),
        413,
    ),
    Case(
        "content-length-50-mb-expect-100-continue",
        raw(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
        ),
        413,
    ),
    Case(
        "content-length-over-limit-on-a-route-without-body",
        raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % (MIB + 1)),
        413,
    ),
    Case(
        "chunked-body-over-limit",
        raw(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b" " * MIB, b" " * 16)
        ),
        413,
    ),
    Case("expect-unknown", post_job(PING, b"text/plain", b"Expect: the-unexpected\r\n"), 415),
    # Framing and headers aiohttp's parser refuses (answered by the guarded protocol).
    Case("header-control-byte-after-key", get(b"/v1/jobs", b"X-API-Key: {key}\x01\r\n"), 400),
    Case("header-line-over-8190-bytes-with-key", get(b"/v1/jobs", b"X-API-Key: {key}" + b"0" * 9000 + b"\r\n"), 400),
    Case("header-cr-inside-value", get(b"/health", b"X-Note: a\rb\r\n"), 400),
    Case("header-nul-inside-value", get(b"/health", b"X-Note: a\x00b\r\n"), 400),
    Case("header-lf-only-line-ends", raw(b"GET /health HTTP/1.1\nHost: x\nConnection: close\n\n"), 400),
    Case("header-obsolete-folding", get(b"/health", b"X-Note: a\r\n b\r\n"), 400),
    Case("header-without-colon", get(b"/health", b"NoColonHere\r\n"), 400),
    Case("header-space-before-colon", get(b"/health", b"X-Note : a\r\n"), 400),
    Case("headers-200-of-them", get(b"/health", *(b"X-%d: a\r\n" % n for n in range(200))), 400),
    Case("host-missing", raw(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"), 400),
    Case("content-length-not-a-number", get(b"/health", b"Content-Length: abc\r\n"), 400),
    Case(
        "content-length-twice",
        raw(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        400,
    ),
    Case(
        "content-length-and-chunked",
        raw(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "chunk-size-not-hex",
        raw(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        ),
        400,
    ),
    Case("request-line-garbage", raw(b"HELLO\r\n\r\n"), 400),
    Case("request-line-tls-handshake", raw(bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32), 400),
    Case("http-version-9-9", raw(b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"), 400),
    Case("method-not-a-token", raw(b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n"), 400),
    # Paths: traversal, encodings, doubled slashes, lengths.
    Case("path-dot-dot-to-internal", with_key(b"/v1/../internal/worker/heartbeat"), 404),
    Case("path-encoded-dot-dot", with_key(b"/v1/%2e%2e/internal/worker/heartbeat"), 404),
    Case("path-encoded-slash", with_key(b"/v1/jobs%2f..%2f..%2finternal"), 404),
    Case("path-double-slashes", with_key(b"//v1//jobs"), 404),
    Case("path-nul", with_key(b"/v1/jobs/%00"), 404),
    Case("path-8000-characters", with_key(b"/v1/jobs/" + b"a" * 8000), 404),
    Case("path-over-8190-bytes", with_key(b"/v1/jobs/" + b"a" * 9000), 400),
    Case("path-raw-non-ascii", with_key(b"/v1/jobs/\xff\xfe"), 400),
    Case("query-limit-not-a-number", with_key(b"/v1/jobs?limit=abc"), 422),
    Case("query-limit-too-large", with_key(b"/v1/jobs?limit=100000"), 422),
    Case("query-status-unknown", with_key(b"/v1/jobs?status=%00"), 422),
    Case("query-cursor-garbage", with_key(b"/v1/jobs?cursor=%ff%fe"), 422),
    Case(
        "method-not-allowed",
        raw(b"PATCH /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\n\r\n"),
        405,
    ),
    # Odd API keys.
    Case("key-empty", get(b"/v1/jobs", b"X-API-Key: \r\n"), 401),
    Case("key-bearer-without-key", get(b"/v1/jobs", b"Authorization: Bearer\r\n"), 401),
    Case("key-bearer-blank", get(b"/v1/jobs", b"Authorization: Bearer    \r\n"), 401),
    Case("key-huge", get(b"/v1/jobs", b"X-API-Key: otto_" + b"a" * 8000 + b"\r\n"), 401),
    Case("key-non-ascii", get(b"/v1/jobs", b"X-API-Key: otto_\xff\xfe" + b"0" * 46 + b"\r\n"), 401),
    Case("key-with-trailing-junk", get(b"/v1/jobs", b"X-API-Key: {key}x\r\n"), 401),
    Case("key-well-formed-but-unknown", get(b"/v1/jobs", b"X-API-Key: otto_" + b"0" * 48 + b"\r\n"), 401),
    Case(
        "key-basic-auth-beside-valid-x-api-key",
        get(b"/v1/jobs", b"Authorization: Basic eDp5\r\nX-API-Key: {key}\r\n"),
        401,
    ),
    Case("key-bearer-with-two-values", get(b"/v1/jobs", b"Authorization: Bearer {key} {key}\r\n"), 401),
    Case(
        "key-on-internal-route-from-a-proxy", get(b"/internal/worker/heartbeat", b"Fly-Client-IP: 203.0.113.9\r\n"), 403
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_hostile_request_is_a_4xx_problem_that_changes_nothing(served: Served, redis: Redis, case: Case) -> None:
    before = await redis_state(redis)

    answer = parse_answer(await served.exchange(case.request(served.key)))

    assert answer.status == case.status, answer.raw[:400]
    problem = answer.problem()
    assert served.key[PREFIX_LEN:] not in json.dumps(problem)
    assert await redis_state(redis) == before
    assert_logs_are_clean(served)


async def test_a_declared_body_over_the_limit_gets_no_100_continue(served: Served) -> None:
    request = raw(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await served.exchange(request(served.key))
    assert answer.startswith(b"HTTP/1.1 413 ")  # the first bytes are the final answer: no interim 100


async def test_a_body_within_the_limit_still_gets_100_continue(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: %b\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (served.key.encode(), len(PING))
        )
        async with asyncio.timeout(READ_DEADLINE_S):
            interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(PING)
            final = parse_answer(await reader.read())
    finally:
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.status == 202


async def test_a_gzip_body_is_read(served: Served) -> None:
    answer = parse_answer(
        await served.exchange(
            post_job(gzip.compress(PING), b"application/json", b"Content-Encoding: gzip\r\n")(served.key)
        )
    )
    assert answer.status == 202


async def closed_within_deadline(served: Served, start: bytes, trickle: bytes = b"") -> bytes:
    """Send ``start``, then ``trickle`` a byte every 0.2 s; what the server sent before it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)

    async def dribble() -> None:
        for byte in trickle:
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))

    dribbling = asyncio.create_task(dribble())
    try:
        writer.write(start)
        async with asyncio.timeout(READ_DEADLINE_S):
            return await reader.read()
    finally:
        dribbling.cancel()
        writer.close()


async def test_a_request_head_sent_slowly_is_cut_off(served: Served, redis: Redis) -> None:
    before = await redis_state(redis)
    sent = await closed_within_deadline(served, b"GET /v1/jobs HTTP/1.1\r\n", trickle=b"X-Slow: " + b"a" * 200)
    assert sent == b""  # closed while waiting for the head (HTTP_IDLE_TIMEOUT_S), bytes still trickling in
    assert await redis_state(redis) == before


async def test_a_half_sent_request_is_closed(served: Served) -> None:
    assert await closed_within_deadline(served, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n") == b""


async def test_a_slow_body_is_408_and_the_connection_closes(served: Served, redis: Redis) -> None:
    before = await redis_state(redis)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: %b\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{" % served.key.encode()
    )
    answer = parse_answer(await closed_within_deadline(served, head, trickle=b" " * 200))
    assert answer.status == 408
    assert answer.problem()["detail"] == "the request body did not arrive within 1 s"
    assert answer.headers["connection"] == "close"
    assert await redis_state(redis) == before


async def test_a_client_leaving_mid_body_is_logged_at_info_and_counted_as_499(served: Served, redis: Redis) -> None:
    before = await redis_state(redis)
    _, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: %b\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{" % served.key.encode()
    )
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is reading the body
    writer.close()

    for _ in range(100):
        if any(line["event"] == "client disconnected before its request was read" for line in served.log_lines()):
            break
        await asyncio.sleep(0.02)
    metrics = (await served.app[METRICS].scrape()).decode()
    assert 'http_requests_total{method="POST",route="/v1/jobs",status="499"} 1.0' in metrics
    assert 'status="500"' not in metrics
    [left] = [line for line in served.log_lines() if line["event"] == "client disconnected before its request was read"]
    assert left["level"] == "info"
    assert await redis_state(redis) == before
    assert_logs_are_clean(served)

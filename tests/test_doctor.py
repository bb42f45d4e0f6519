"""``python -m service doctor``: each problem of the operations guide is found and explained."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import pytest
from redis.asyncio import Redis

from jobs.heartbeat import live_workers
from jobs.running import running_worker
from service.doctor import Finding, diagnose, security
from service.settings import RedisURL, Settings
from tests.conftest import PYTHON, ROOT, make_settings, subprocess_env
from tests.jobs.test_maintenance import fill
from tests.processes import run_service
from tests.servers import new_redis_server, redis_url
from tests.waiting import until


def _by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


async def _diagnose(url: str) -> dict[str, Finding]:
    return _by_check(await diagnose(Settings.from_env({"REDIS_URL": url})))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_port(certificate: tuple[Path, Path]) -> AsyncIterator[int]:
    """A TLS server (self-signed) that speaks no Redis: enough for the TLS checks."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await reader.read(100)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def persistent_redis() -> Iterator[str]:
    """A private Redis set up the way the operations guide asks: AOF on, noeviction."""
    server = new_redis_server("--appendonly", "yes", "--maxmemory-policy", "noeviction")
    try:
        yield server.url
    finally:
        server.stop()


async def test_healthy_redis_passes_every_check_but_workers(persistent_redis: str) -> None:
    found = await _diagnose(persistent_redis)
    checks = (
        "config",
        "dns",
        "password",
        "encryption",
        "connect",
        "tls",
        "auth",
        "ping",
        "version",
        "lua",
        "memory",
        "eviction",
        "persistence",
    )
    for check in checks:
        assert found[check].status == "ok", found[check]
    assert found["version"].detail.startswith("Redis ")
    assert found["persistence"].detail == "AOF on"
    assert found["workers"].status == "problem"  # no worker runs in this test
    assert "python -m jobs" in found["workers"].advice


async def test_redis_that_keeps_nothing_on_disk_is_a_persistence_problem() -> None:
    found = await _diagnose(redis_url())  # the suite's own Redis runs without AOF or RDB
    assert found["persistence"].status == "problem"
    assert "AOF" in found["persistence"].advice


async def test_live_worker_is_reported(redis: Redis) -> None:
    settings = make_settings(RATE_LIMIT_ENABLED="false")
    async with running_worker(settings):
        await until(lambda: live_workers(redis), "the worker's first heartbeat")
        found = _by_check(await diagnose(settings))
    assert found["workers"].status == "ok"
    assert found["workers"].detail.startswith("1 live")


async def test_connection_refused_is_named_and_later_checks_skipped() -> None:
    found = await _diagnose("redis://127.0.0.1:1/0")
    assert found["connect"].status == "problem"
    assert "refused" in found["connect"].detail
    assert found["redis"].status == "skipped"


async def test_rediss_against_a_plain_port_says_use_redis() -> None:
    found = await _diagnose(redis_url().replace("redis://", "rediss://"))
    assert found["tls"].status == "problem"
    assert "use redis://" in found["tls"].advice


async def test_redis_against_a_tls_port_says_use_rediss(tls_port: int) -> None:
    found = await _diagnose(f"redis://127.0.0.1:{tls_port}/0")
    assert found["tls"].status == "problem"
    assert "use rediss://" in found["tls"].advice


async def test_untrusted_certificate_is_reported(tls_port: int) -> None:
    found = await _diagnose(f"rediss://localhost:{tls_port}/0")
    assert found["tls"].status == "problem"
    assert "certificate is not trusted" in found["tls"].detail


async def test_authentication_failure_is_reported_without_the_password() -> None:
    server = new_redis_server("--requirepass", "the-right-password")
    try:
        findings = await diagnose(Settings.from_env({"REDIS_URL": server.url.replace("//", "//:doctor-sentinel@")}))
    finally:
        server.stop()
    found = _by_check(findings)
    assert found["auth"].status == "problem"
    assert "doctor-sentinel" not in json.dumps([f.detail + f.advice for f in findings])


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m service doctor ARGS`` with ``env``."""
    return subprocess.run(
        [PYTHON, "-m", "service", "doctor", *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_exit_codes_and_json(persistent_redis: str) -> None:

    healthy = doctor("--json", REDIS_URL=persistent_redis, ENABLE_WORKER="false")
    assert healthy.returncode == 0, healthy.stdout
    document = json.loads(healthy.stdout)
    assert document["healthy"] is True
    assert {c["check"] for c in document["checks"]} >= {"dns", "connect", "tls", "ping", "lua", "eviction"}

    problems = doctor("--json", REDIS_URL=redis_url(), ENABLE_WORKER="false")
    assert problems.returncode == 1  # the suite's own Redis keeps nothing on disk
    assert json.loads(problems.stdout)["healthy"] is False

    refused = doctor(REDIS_URL="redis://:pw-sentinel@127.0.0.1:1/0")
    assert refused.returncode == 1
    assert "connection refused" in refused.stdout
    assert "pw-sentinel" not in refused.stdout + refused.stderr

    cannot = doctor()
    assert cannot.returncode == 2
    assert cannot.stderr.startswith("REDIS_URL: not set")


LONG_PASSWORD = "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("url", "addresses", "password", "encryption"),
    [
        pytest.param("unix:///run/redis.sock", [], "ok", "ok", id="unix-socket"),
        pytest.param("redis://localhost:6379", ["127.0.0.1", "::1"], "ok", "ok", id="loopback"),
        pytest.param("redis://10.0.0.5:6379", ["10.0.0.5"], "warning", "ok", id="private-no-password"),
        pytest.param("redis://:short-pw@10.0.0.5:6379", ["10.0.0.5"], "warning", "ok", id="private-short-password"),
        pytest.param(
            f"redis://default:{LONG_PASSWORD}@fly-otto.upstash.io:6379", ["fdaa:0:1::3"], "ok", "ok", id="fly-private"
        ),
        pytest.param(
            f"redis://default:{LONG_PASSWORD}@redis.example.com:6379", ["93.184.216.34"], "ok", "warning", id="public"
        ),
        pytest.param(
            f"rediss://default:{LONG_PASSWORD}@eu1.upstash.io:6380", ["93.184.216.34"], "ok", "ok", id="public-tls"
        ),
        pytest.param("redis://redis.example.com:6379", ["10.0.0.5", "93.184.216.34"], "warning", "warning", id="both"),
    ],
)
def test_security_advice_is_a_warning_and_a_local_connection_needs_none(
    url: str, addresses: list[str], password: str, encryption: str
) -> None:
    found = _by_check(security(RedisURL.parse("REDIS_URL", url), addresses))

    assert (found["password"].status, found["encryption"].status) == (password, encryption)
    for finding in found.values():
        assert (finding.advice != "") == (finding.status == "warning")
        assert LONG_PASSWORD not in finding.detail + finding.advice


def test_short_password_warning_never_shows_the_password() -> None:
    [password, _] = security(RedisURL.parse("REDIS_URL", "redis://:hunter2-pw@10.0.0.5:6379"), ["10.0.0.5"])
    assert password.status == "warning"
    assert "hunter2-pw" not in password.detail + password.advice


# Filled well past each bound (80%, 95%): used memory moves between the fill and the check (buffers
# freed), and 0.96 once read as 0.95- in CI. A batch of the fill is 1.3% of maxmemory, so 0.97
# still stops short of noeviction's refusals.
@pytest.mark.parametrize(
    ("ratio", "status", "exit_code"), [(0.85, "warning", 0), (0.97, "problem", 1)], ids=["warning", "problem"]
)
async def test_memory_warns_from_80_percent_and_is_a_problem_from_95(ratio: float, status: str, exit_code: int) -> None:
    server = new_redis_server("--appendonly", "yes", "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    try:
        await fill(server.url, until_ratio=ratio)
        result = doctor("--json", REDIS_URL=server.url, ENABLE_WORKER="false", ENABLE_CRON="false")
    finally:
        server.stop()

    document = json.loads(result.stdout)
    [memory] = [check for check in document["checks"] if check["check"] == "memory"]
    assert memory["status"] == status
    assert result.returncode == exit_code
    assert document["healthy"] is (exit_code == 0)
    assert document["warnings"] == (1 if status == "warning" else 0)


def test_doctor_is_all_green_against_make_runs_embedded_redis(tmp_path: Path) -> None:
    # `make run` is `python -m service dev` with no Redis URL: an embedded Redis on a unix
    # socket, no password, AOF on, noeviction, with the in-process worker beating.
    with run_service("dev", cwd=tmp_path, LOG_FORMAT="json") as child:
        child.wait_healthy(timeout_s=60)
        result = doctor("--json", REDIS_URL=_embedded_url(child.process.stdout))
        child.stop()

    document = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    assert {check["check"]: check["status"] for check in document["checks"] if check["status"] != "ok"} == {
        "tls": "skipped"  # a unix socket has no TLS to check
    }
    assert document["warnings"] == 0
    assert {"password", "encryption", "workers", "memory", "eviction", "persistence"} <= {
        check["check"] for check in document["checks"]
    }


def _embedded_url(output: IO[bytes] | None) -> str:
    """The embedded Redis's URL, from dev's JSON log line that announces it."""
    assert output is not None
    for line in output:
        event = json.loads(line) if line.startswith(b"{") else {}
        if event.get("event") == "embedded redis started":
            return str(event["url"])
    raise AssertionError("dev never announced its embedded redis")

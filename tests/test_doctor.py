"""``python -m service doctor``: each problem of the operations guide is found and explained."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from jobs.heartbeat import live_workers
from jobs.worker import running_worker
from service.doctor import Finding, diagnose
from service.settings import Settings
from tests.conftest import PYTHON, ROOT, make_settings, subprocess_env
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
    checks = ("config", "dns", "connect", "tls", "auth", "ping", "version", "lua", "memory", "eviction", "persistence")
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


def test_cli_exit_codes_and_json(persistent_redis: str) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "service", "doctor", *args],
            cwd=ROOT,
            env=subprocess_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    healthy = run("--json", REDIS_URL=persistent_redis, ENABLE_WORKER="false")
    assert healthy.returncode == 0, healthy.stdout
    document = json.loads(healthy.stdout)
    assert document["healthy"] is True
    assert {c["check"] for c in document["checks"]} >= {"dns", "connect", "tls", "ping", "lua", "eviction"}

    problems = run("--json", REDIS_URL=redis_url(), ENABLE_WORKER="false")
    assert problems.returncode == 1  # the suite's own Redis keeps nothing on disk
    assert json.loads(problems.stdout)["healthy"] is False

    refused = run(REDIS_URL="redis://:pw-sentinel@127.0.0.1:1/0")
    assert refused.returncode == 1
    assert "connection refused" in refused.stdout
    assert "pw-sentinel" not in refused.stdout + refused.stderr

    cannot = run()
    assert cannot.returncode == 2
    assert cannot.stderr.startswith("REDIS_URL: not set")

"""Whole processes: clean SIGTERM/SIGINT stops, `dev` with its embedded Redis, no leaked passwords, revocation."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from service.auth import REVOCATIONS_CHANNEL
from tests.processes import run_python, run_service
from tests.servers import free_port, redis_url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal_within_10_s(sig: signal.Signals) -> None:
    with run_service("serve", REDIS_URL=redis_url()) as child:
        child.wait_healthy()
        code, seconds, output = child.stop(sig)
    assert code == 0, output
    assert seconds < 10
    assert "Traceback" not in output


def _embedded_redis_of(dev_pid: int) -> int:
    """The pid of ``dev``'s embedded redis-server: its child (other processes on the machine may run one too)."""
    found = subprocess.run(["pgrep", "-P", str(dev_pid), "redis-server"], capture_output=True, text=True)
    [pid] = found.stdout.split()
    return int(pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_dev_without_redis_url_runs_an_embedded_redis(tmp_path: Path) -> None:
    with run_service("dev", cwd=tmp_path, LOG_FORMAT="console") as child:
        child.wait_healthy(timeout_s=60)
        embedded = _embedded_redis_of(child.process.pid)
        # An unknown key is looked up in Redis: 401, not 503, proves the embedded Redis answers.
        status, _ = child.get("/v1/rate-limit", headers={"X-API-Key": "otto_" + "0123456789abcdef" * 3})
        assert status == 401
        code, _, output = child.stop()
    assert code == 0, output
    assert "embedded redis started" in output
    assert not _alive(embedded), "the embedded redis-server outlived dev"


def test_embedded_redis_dies_with_a_killed_dev(tmp_path: Path) -> None:
    with run_service("dev", cwd=tmp_path, LOG_FORMAT="console") as child:
        child.wait_healthy(timeout_s=60)
        embedded = _embedded_redis_of(child.process.pid)
        child.process.kill()
        child.process.communicate()
    deadline = time.monotonic() + 5
    while _alive(embedded) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(embedded)


def test_no_output_contains_the_redis_password() -> None:
    sentinel = "s3cret-sentinel-pw"
    with run_service("serve", REDIS_URL=f"redis://:{sentinel}@127.0.0.1:1/0", REDIS_TIMEOUT_S="0.5") as child:
        child.wait_healthy()
        statuses = [
            child.get("/v1/rate-limit", headers={"X-API-Key": "otto_" + "0123456789abcdef" * 3})[0],
            child.get("/v1/rate-limit")[0],
            child.get("/metrics")[0],
        ]
        bodies = b"".join(child.get(path)[1] for path in ("/health", "/metrics", "/openapi.json", "/v1/jobs"))
        code, _, output = child.stop()
    assert 503 in statuses
    assert code == 0
    assert "redis://:***@127.0.0.1:1/0" in output
    assert sentinel not in output
    assert sentinel.encode() not in bodies


def test_dev_without_any_redis_server_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service import __main__ as cli
    from service import embedded_redis

    monkeypatch.setattr(embedded_redis, "find_redis_server", lambda: None)
    monkeypatch.setenv("PORT", str(free_port()))  # dev binds its port before it looks for a redis-server
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("UPSTASH_REDIS_URL", raising=False)
    assert cli.main(["dev"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "no redis-server found" in lines[0]
    assert "apt-get install redis-server" in lines[0]


def _keys(*args: str) -> str:
    result = run_python("-m", "service", "keys", *args, env={"REDIS_URL": redis_url()})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_revoked_key_is_refused_by_two_running_web_processes_within_1_s() -> None:
    key = _keys("create", "--tenant", "acme").strip()
    with (
        run_service("serve", REDIS_URL=redis_url()) as first,
        run_service("serve", REDIS_URL=redis_url()) as second,
        redis.Redis.from_url(redis_url()) as client,
    ):
        processes = (first, second)
        for child in processes:
            child.wait_healthy()
            assert child.get("/v1/jobs", {"X-API-Key": key})[0] == 200  # each now remembers the key for 10 s
        deadline = time.monotonic() + 10
        while client.pubsub_numsub(REVOCATIONS_CHANNEL) != [(REVOCATIONS_CHANNEL.encode(), 2)]:
            assert time.monotonic() < deadline, "the two processes did not subscribe to revocations"
            time.sleep(0.02)

        _keys("revoke", key)
        revoked_at = time.monotonic()
        refused: set[int] = set()
        while len(refused) < 2 and time.monotonic() - revoked_at < 1.0:
            refused |= {child.port for child in processes if child.get("/v1/jobs", {"X-API-Key": key})[0] == 401}
        for child in processes:
            child.stop()

    assert refused == {first.port, second.port}

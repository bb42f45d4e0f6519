"""No log line, of any process or command, holds an API key, a token, a Redis password or the webhook secret.

One ``python -m service dev`` (web, worker and cron in one process, JSON logs) against a
Redis with a password, with every secret configured (a tenant's webhook signing secret
too), is driven down the paths that log:
401s, parser errors that carry the key, internal routes with a wrong token, a signed
webhook delivery, a revocation from the command line, Redis going away under it. The
command line then runs against a wrong password. Everything every process printed is
searched for every secret; the test also checks that each path was taken.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.auth import PREFIX_LEN
from tests.processes import Child, run_python, run_service
from tests.servers import new_redis_server

REDIS_PASSWORD = "redis-pw-sentinel-7f3a"
WRONG_PASSWORD = "wrong-pw-sentinel-91c2"
METRICS_TOKEN = "metrics-token-sentinel-5d1e"
INTERNAL_TOKEN = "internal-token-sentinel-c40b"
WEBHOOK_SECRET = "webhook-secret-sentinel-a8e6"


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that records each delivery's signature header."""

    signatures: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.signatures.append(self.headers["Webhook-Signature"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def cli(*args: str, redis_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "service", *args, env={"REDIS_URL": redis_url, "LOG_FORMAT": "json", **env}, timeout_s=60)


def request(child: Child, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> int:
    sent = urllib.request.Request(child.base_url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(sent, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def raw_exchange(child: Child, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", child.port), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def wait_until(condition: Callable[[], object], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the awaited event did not happen in time"
        time.sleep(0.05)


def test_no_process_output_holds_a_key_token_password_or_webhook_secret(tmp_path: Path, receiver: int) -> None:
    server = new_redis_server("--requirepass", REDIS_PASSWORD)
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    outputs: list[str] = []
    try:
        created = cli("keys", "create", "--tenant", "acme", redis_url=url)
        key = created.stdout.strip()  # its one intended appearance: printed once, alone, on standard output
        outputs.append(created.stderr)
        other = cli("keys", "create", "--tenant", "other", redis_url=url).stdout.strip()
        webhooks = {"WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver}"}
        signing = cli("webhooks", "secret", "--tenant", "acme", redis_url=url, **webhooks)
        tenant_secret = signing.stdout.strip()  # shown once, alone, on standard output
        hosts = cli("webhooks", "hosts", "--tenant", "acme", f"127.0.0.1:{receiver}", redis_url=url, **webhooks)
        outputs += [signing.stderr, hosts.stdout, hosts.stderr]
        Receiver.signatures.clear()
        env = {"REDIS_URL": url, "LOG_FORMAT": "json", "METRICS_TOKEN": METRICS_TOKEN, "INTERNAL_TOKEN": INTERNAL_TOKEN}
        env |= webhooks
        log = tmp_path / "dev.log"
        with run_service("dev", cwd=tmp_path, log=log, **env) as child:
            child.wait_healthy(timeout_s=60)
            bearer = {"Authorization": f"Bearer {key}"}
            assert request(child, "GET", "/v1/jobs", bearer) == 200
            near_miss = key[:-1] + ("1" if key.endswith("0") else "0")
            assert request(child, "GET", "/v1/jobs", {"X-API-Key": near_miss}) == 401
            assert request(child, "GET", "/v1/jobs", {"Authorization": f"Basic {key}", "X-API-Key": key}) == 401
            proxied = {"Fly-Client-IP": "203.0.113.9"}
            assert request(child, "GET", "/metrics", {**proxied, "Authorization": f"Bearer {METRICS_TOKEN}"}) == 200
            assert request(child, "GET", "/metrics", {**proxied, "Authorization": f"Bearer {INTERNAL_TOKEN}"}) == 401
            assert (
                request(
                    child, "GET", "/internal/worker/heartbeat", {**proxied, "Authorization": f"Bearer {METRICS_TOKEN}x"}
                )
                == 401
            )
            for malformed in (f"X-API-Key: {key}\x01", f"X-API-Key: {key}{'0' * 9000}"):
                answer = raw_exchange(child, f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n{malformed}\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.0 400 ")
            delivery = {
                "task": "webhook.deliver",
                "args": {"url": f"http://127.0.0.1:{receiver}/hook", "payload": {"key": other}},
            }
            body = json.dumps(delivery).encode()
            assert request(child, "POST", "/v1/jobs", {**bearer, "Content-Type": "application/json"}, body) == 202
            wait_until(lambda: Receiver.signatures)

            revoked = cli("keys", "revoke", key, redis_url=url)
            outputs += [revoked.stdout, revoked.stderr]
            assert revoked.returncode == 0
            wait_until(lambda: request(child, "GET", "/v1/jobs", bearer) == 401, timeout_s=1.0)

            server.kill()  # Redis goes away under the web process, its listener and the worker
            wait_until(lambda: request(child, "GET", "/v1/jobs", {"X-API-Key": other}) == 503)
            server.restart()
            wait_until(lambda: "listening for key revocations again" in log.read_text())
            code, _, _ = child.stop()
        output = log.read_text()
        assert code == 0, output
        outputs.append(output)
        wrong = f"redis://:{WRONG_PASSWORD}@127.0.0.1:{server.port}/0"
        for args in (("keys", "list"), ("keys", "revoke", other), ("doctor",)):
            failed = cli(*args, redis_url=wrong)
            assert failed.returncode != 0
            outputs += [failed.stdout, failed.stderr]
    finally:
        server.stop()

    everything = "\n".join(outputs)
    assert tenant_secret.startswith("whsec_")
    for secret in (REDIS_PASSWORD, WRONG_PASSWORD, METRICS_TOKEN, INTERNAL_TOKEN, WEBHOOK_SECRET, tenant_secret):
        assert secret not in everything
    for api_key in (key, other):
        assert api_key[PREFIX_LEN:] not in everything
    # ... and the paths that log were taken.
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "malformed request refused" in events
    assert "redis unavailable" in events or "rate limiter fell back" in events
    assert "key revocations are not being received; retrying" in events
    assert revoked.stdout.startswith(f"revoked {key[:PREFIX_LEN]} ")

"""Schemathesis against a running ``python -m service dev``: the OpenAPI document is a contract the service keeps.

Every operation, every check schemathesis has (status codes, content types, bodies and
headers against the document, server errors, valid data accepted and invalid data refused,
authentication, undocumented methods, and the stateful links from ``POST /v1/jobs`` to
``GET``/``DELETE /v1/jobs/{job_id}``), with an API key and without one. Deterministic
generation and fixed example counts keep a run reproducible and short, and every request
has a deadline. The service runs a worker, so jobs really run, on the suite's Redis.

Two exceptions, each the contract's own rule rather than a bug:

- ``use_after_free`` on ``GET /v1/jobs/{job_id}``: ``DELETE`` aborts a job, and an aborted job
  stays readable (status ``aborted``), which that check takes for a failed delete.
- ``ignored_auth`` under the default rate limits: a caller without a valid key is limited by
  address before it gets its 401, so once the anonymous bucket is empty the check's probes
  get 429. The runs on a generous plan check authentication instead.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from jobs import webhook_tenants
from service.auth import ApiKeyStore
from tests.conftest import PYTHON, subprocess_env
from tests.policies import GENEROUS_POLICIES, policies_file
from tests.processes import run_service
from tests.schemathesis_hooks import RECEIVER_ENV
from tests.servers import free_port, redis_url

INTERNAL_TOKEN = "schemathesis-internal-token"
METRICS_TOKEN = "schemathesis-metrics-token"
WEBHOOK_SECRET = "schemathesis-webhook-secret"

CONFIG = """
hooks = "tests.schemathesis_hooks"
continue-on-failure = true
workers = 1
request-timeout = 10

[headers]
# Every caller comes from outside loopback, as through Fly's proxy: internal routes want their tokens.
Fly-Client-IP = "203.0.113.7"

[cache]
enabled = false

[generation]
max-examples = {examples}
deterministic = true
database = "none"

[checks]
enabled = true
{checks}

[auth.openapi.internalToken]
bearer = "{internal_token}"

[auth.openapi.metricsToken]
bearer = "{metrics_token}"
{api_key}

[[operations]]
include-operation-id = "getJob"
checks.use_after_free.enabled = false  # an aborted job stays readable: see the module's docstring
"""


def _config(*, api_key: str | None, examples: int, checks: str = "") -> str:
    key = f'\n[auth.openapi.apiKey]\napi_key = "{api_key}"\n' if api_key else ""
    return CONFIG.format(
        examples=examples, checks=checks, internal_token=INTERNAL_TOKEN, metrics_token=METRICS_TOKEN, api_key=key
    )


async def _schemathesis(redis: Redis, tmp_path: Path, *, policies: str | None, config: str) -> dict[str, Any]:
    """Run schemathesis against a fresh service; its JSON report, after asserting that it found nothing."""
    receiver = f"127.0.0.1:{free_port()}"  # allowed, and nothing listens: deliveries fail and retry
    # Tenant acme (the key's) may send webhooks there, as an operator would set it up.
    await webhook_tenants.rotate_secret(redis, "acme", WEBHOOK_SECRET)
    await webhook_tenants.set_receivers(redis, "acme", (receiver,))
    env = {
        "REDIS_URL": redis_url(),
        "WEBHOOK_ALLOWED_HOSTS": receiver,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "INTERNAL_TOKEN": INTERNAL_TOKEN,
        "METRICS_TOKEN": METRICS_TOKEN,
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
    }
    if policies is not None:
        env["RATE_LIMITS_FILE"] = policies_file(tmp_path, policies)
    (tmp_path / "schemathesis.toml").write_text(config)
    report_path = tmp_path / "report.json"
    with run_service("dev", cwd=tmp_path, log=tmp_path / "service.log", **env) as child:
        child.wait_healthy(path="/ready")  # the in-process worker has beaten once
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            f"{child.base_url}/openapi.json",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report_path),
            cwd=tmp_path,
            env=subprocess_env(**{RECEIVER_ENV: f"http://{receiver}/hook"}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stdout, _ = await process.communicate()
    output = stdout.decode(errors="replace")
    assert process.returncode == 0, output
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    assert report["operations"]["tested"] == report["operations"]["total"] > 0, output
    phases = {name: phase["status"] for name, phase in report["phases"].items() if name != "examples"}
    assert phases == {"coverage": "success", "fuzzing": "success", "stateful": "success"}, output
    return report


@pytest.mark.timeout(120)
async def test_schemathesis_finds_no_failure_with_an_api_key(tmp_path: Path, redis: Redis) -> None:
    key = await ApiKeyStore(redis).create("acme")
    await _schemathesis(redis, tmp_path, policies=GENEROUS_POLICIES, config=_config(api_key=key, examples=25))


@pytest.mark.timeout(120)
async def test_schemathesis_finds_no_failure_without_an_api_key(tmp_path: Path, redis: Redis) -> None:
    await _schemathesis(redis, tmp_path, policies=GENEROUS_POLICIES, config=_config(api_key=None, examples=25))


@pytest.mark.timeout(120)
async def test_schemathesis_finds_no_failure_under_the_default_rate_limits(tmp_path: Path, redis: Redis) -> None:
    key = await ApiKeyStore(redis).create("acme")
    config = _config(api_key=key, examples=5, checks="ignored_auth.enabled = false  # see the module's docstring")
    await _schemathesis(redis, tmp_path, policies=None, config=config)

"""A Redis that refuses the password or answers nothing: every tool and the API end in time, with one clear line.

Before ``service.redis`` left redis-py's health check off the connect path (redis-py
#3745), a URL without its password made ``keys create`` hang, ``jobs --check`` print a
2,000-line ``RecursionError`` and a ``/v1/*`` request never answer. Each case here runs the
real command with ``REDIS_TIMEOUT_S`` of 2 s in a process of its own and allows it that
plus 1 s, timed inside that process from the call of its ``main`` to its return: how long
an interpreter takes to start and import the project varies too much on a loaded machine
to be part of the bound.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.processes import run_service
from tests.servers import RedisServer, free_port, new_redis_server

REDIS_TIMEOUT_S = 2.0
ALLOWED_S = REDIS_TIMEOUT_S + 1.0
PASSWORD = "s3cret-password"


@dataclass(frozen=True)
class Sick:
    name: str
    url: str
    server: RedisServer


@pytest.fixture(scope="module")
def secured() -> Iterator[RedisServer]:
    server = new_redis_server("--requirepass", PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def paused() -> Iterator[RedisServer]:
    server = new_redis_server()
    server.pause()
    yield server
    server.resume()
    server.stop()


@pytest.fixture(params=["missing password", "wrong password", "paused server"])
def sick(request: pytest.FixtureRequest, secured: RedisServer, paused: RedisServer) -> Sick:
    if request.param == "missing password":
        return Sick(request.param, secured.url, secured)
    if request.param == "wrong password":
        return Sick(request.param, f"redis://:not-{PASSWORD}@127.0.0.1:{secured.port}/0", secured)
    return Sick(request.param, paused.url, paused)


# ``python -m <module> ARGS``, but reporting how long ``main`` took on a last line of its own.
TIMED = """
import importlib, sys, time
main = importlib.import_module(sys.argv[1] + ".__main__").main
started = time.monotonic()
try:
    code = main(sys.argv[2:])
finally:
    print(f"main took {time.monotonic() - started:.3f} s", file=sys.stderr)
sys.exit(code)
"""


def run(module: str, *args: str, url: str) -> tuple[int, float, str]:
    """Exit code, seconds ``main`` took, and what the command printed."""
    done = subprocess.run(
        [PYTHON, "-c", TIMED, module, *args],
        cwd=ROOT,
        env=subprocess_env(REDIS_URL=url, REDIS_TIMEOUT_S=str(REDIS_TIMEOUT_S), LOG_FORMAT="console"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    printed, _, took = (done.stdout + done.stderr).rstrip().rpartition("\n")
    assert took.startswith("main took "), done.stdout + done.stderr
    return done.returncode, float(took.split()[2]), printed


def expected_words(sick: Sick) -> str:
    return "did not answer in time" if sick.name == "paused server" else "refused the credentials"


@pytest.mark.parametrize(
    ("command", "code"),
    [(["service", "keys", "create", "--tenant", "acme"], 2), (["jobs", "--check"], None)],
    ids=["keys create", "jobs --check"],
)
def test_a_command_line_tool_ends_in_time_with_one_line(sick: Sick, command: list[str], code: int | None) -> None:
    exit_code, seconds, output = run(*command, url=sick.url)

    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert expected_words(sick) in lines[0]
    assert PASSWORD not in output
    assert seconds < ALLOWED_S
    # A refused password is a configuration error (2); a server that answers nothing, not (1).
    assert exit_code == (code or (1 if sick.name == "paused server" else 2))


def test_doctor_ends_in_time_naming_the_one_problem(sick: Sick) -> None:
    exit_code, seconds, output = run("service", "doctor", "--json", url=sick.url)

    report = json.loads(output)
    problems = [check for check in report["checks"] if check["status"] == "problem"]
    assert [problem["check"] for problem in problems] == (["answer"] if sick.name == "paused server" else ["auth"])
    assert exit_code == 1
    assert seconds < ALLOWED_S
    assert "RecursionError" not in output


def test_an_api_request_ends_in_time_with_a_503_and_the_logs_hold_no_recursion(sick: Sick) -> None:
    with run_service("serve", REDIS_URL=sick.url, REDIS_TIMEOUT_S=str(REDIS_TIMEOUT_S), LOG_FORMAT="console") as child:
        child.wait_healthy()
        started = time.monotonic()
        status, body = child.get("/v1/rate-limit", headers={"X-API-Key": "otto_" + "0" * 48})  # well-formed, unknown
        seconds = time.monotonic() - started
        ready_started = time.monotonic()
        ready_status, ready_body = child.get("/ready")
        ready_s = time.monotonic() - ready_started
        code, _, output = child.stop()

    assert status == 503, body
    assert json.loads(body)["type"].endswith("dependency-unavailable")
    assert seconds < ALLOWED_S
    assert ready_status == 503
    assert json.loads(ready_body)["components"]["redis"] is False
    assert ready_s < 1.5 + 1.0  # the contract's 1.5 s, and slack for a loaded machine
    assert code == 0
    assert "RecursionError" not in output
    assert "Traceback" not in output
    assert PASSWORD not in output


@pytest.mark.parametrize(
    "command", [["-m", "jobs"], ["-m", "service", "dev"]], ids=["python -m jobs", "dev's in-process worker"]
)
def test_a_worker_that_redis_refuses_stops_with_exit_2_saying_why(
    secured: RedisServer, command: list[str], tmp_path: Path
) -> None:
    url = f"redis://:not-{PASSWORD}@127.0.0.1:{secured.port}/0"
    done = subprocess.run(
        [PYTHON, *command],
        cwd=tmp_path,  # dev keeps .dev-data here
        env=subprocess_env(REDIS_URL=url, PORT=str(free_port()), LOG_FORMAT="console"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 2, output  # a configuration error, not an outage to wait out
    assert "refused the credentials" in output
    assert "Traceback" not in output
    assert PASSWORD not in output

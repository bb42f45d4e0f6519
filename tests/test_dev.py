"""``dev`` (what ``make run`` runs) as a newcomer meets it: its key, Ctrl-C mid-job, a taken port.

Each test runs ``python -m service dev`` in a temporary folder, so its embedded Redis keeps
its data (AOF) and the key in that folder's ``.dev-data``, as it would in a checkout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.auth import ApiKeyStore
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.processes import Proc
from tests.servers import free_port, redis_url


class Dev(Proc):
    """``python -m service dev`` in ``folder``, in a process group of its own (as a terminal starts it)."""

    def __init__(self, folder: Path, port: int, run: int, **env: str) -> None:
        super().__init__(
            [PYTHON, "-m", "service", "dev"],
            folder / f"dev-{run}.log",
            subprocess_env(PORT=str(port), LOG_FORMAT="console", JOB_GRACE_S="0.5", **env),
            cwd=folder,
            new_session=True,
        )
        self.port = port

    def wait_for_banner(self, timeout_s: float = 60.0) -> str:
        """The API key the banner shows, once dev says it is up."""
        self.wait_for_line("ottoai dev is up", timeout_s)
        [line] = [line for line in self.output().splitlines() if line.startswith('API key of tenant "dev"')]
        return line.rsplit(" ", 1)[1]

    def request(self, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
        return answer

    def wait_for_status(self, key: str, job_id: str, status: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (job := self.request("GET", f"/v1/jobs/{job_id}", key))["status"] != status:
            assert time.monotonic() < deadline, f"still {job['status']} after {timeout_s} s:\n{self.output()}"
            time.sleep(0.2)  # inside the default plan's 10 requests/s
        return job

    def interrupt_group(self, timeout_s: float = 20.0) -> int:
        """Ctrl-C at the terminal: SIGINT to the whole process group."""
        os.killpg(self.popen.pid, signal.SIGINT)
        return self.popen.wait(timeout=timeout_s)


def test_sigint_to_devs_group_mid_job_exits_0_and_the_job_completes_after_the_next_start(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    first = Dev(tmp_path, port, 1)
    procs.append(first)
    key = first.wait_for_banner()
    job = first.request("POST", "/v1/jobs", key, {"task": "diagnostics.sleep", "args": {"seconds": 3}})
    first.wait_for_status(key, job["id"], "in_progress", timeout_s=10)

    code = first.interrupt_group()

    output = first.output()
    assert code == 0, output
    assert "Traceback" not in output
    assert "Task exception was never retrieved" not in output
    assert "handing jobs back to the queue" in output

    second = Dev(tmp_path, port, 2)
    procs.append(second)
    assert second.wait_for_banner() == key  # the same key, read back from .dev-data
    done = second.wait_for_status(key, job["id"], "complete", timeout_s=20)
    assert done["tries"] == 1  # handed back, not spent
    assert second.interrupt_group() == 0
    assert "new, kept in" in first.output()
    assert 'API key of tenant "dev" (kept in' in second.output()
    assert stat.S_IMODE((tmp_path / ".dev-data" / "api-key").stat().st_mode) == 0o600


def test_dev_listens_on_loopback_whatever_host_says(tmp_path: Path, procs: list[Proc]) -> None:
    dev = Dev(tmp_path, free_port(), 1, HOST="0.0.0.0")
    procs.append(dev)
    dev.wait_for_banner()
    # It prints its banner while the app starts, then binds and logs the address it listens on.
    assert "host=127.0.0.1" in dev.wait_for_line("listening")
    assert dev.interrupt_group() == 0


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_a_port_in_use_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [PYTHON, "-m", "service", command],
            cwd=tmp_path,
            env=subprocess_env(REDIS_URL=redis_url(), PORT=str(port), HOST="127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"{command}: PORT {port} is already in use on 127.0.0.1")
    assert not (tmp_path / ".dev-data").exists()  # refused before anything started


async def test_the_readmes_make_targets_for_keys_and_doctor_work(redis: Redis) -> None:
    env = subprocess_env(REDIS_URL=redis_url())

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "-s", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    created = make("key", "TENANT=readme", "PLAN=pro")
    listed = make("keys")
    doctor = make("doctor")

    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    identity = await ApiKeyStore(redis).lookup(key)
    assert identity is not None
    assert (identity.tenant, identity.plan) == ("readme", "pro")
    assert key[:12] in listed.stdout
    assert "auth" in doctor.stdout  # it reached Redis (its verdict depends on the suite's Redis settings)


def test_the_make_targets_of_the_readme_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = {word.split()[1] for word in _make_commands(readme)}
    for target in targets:
        done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"make {target}: {done.stderr}"


def _make_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("make ")]

"""Real ``python -m jobs`` (and ``python -m service dev``) processes: kill, stop, check."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from jobs.heartbeat import live_workers
from service.auth import ApiKeyStore
from tests.jobs.support import Client, auth, enqueue, wait_for
from tests.jobs.test_cron import eventually
from tests.processes import Proc, run_python, wait_for_status
from tests.servers import free_port, redis_url


def worker_env(**overrides: str) -> dict[str, str]:
    """Short leases and grace keep these tests quick; production defaults are 10 s and 3 s."""
    env = {
        "REDIS_URL": redis_url(),
        "LOG_FORMAT": "console",
        "JOB_LEASE_S": "2",
        "JOB_GRACE_S": "0.5",
        "WORKER_HEARTBEAT_S": "1",
    }
    env.update(overrides)
    return env


def start_worker(procs: list[Proc], log: Path, **env: str) -> Proc:
    proc = Proc.python(["-m", "jobs"], log, worker_env(**env))
    procs.append(proc)
    return proc


def start_dev(procs: list[Proc], folder: Path, port: int) -> Proc:
    """``python -m service dev`` on ``port`` in ``folder`` (it keeps its key in ``.dev-data`` there)."""
    proc = Proc.python(
        ["-m", "service", "dev"], folder / "dev.log", worker_env(HOST="127.0.0.1", PORT=str(port)), folder
    )
    procs.append(proc)
    return proc


async def live_ids(redis: Redis, count: int, timeout_s: float = 15.0) -> list[str]:
    """Wait until ``count`` workers beat; their ids."""
    deadline = time.monotonic() + timeout_s
    while len(workers := await live_workers(redis)) < count:
        assert time.monotonic() < deadline, f"only {len(workers)} of {count} workers beat"
        await asyncio.sleep(0.05)
    return [worker["id"] for worker in workers]


async def runner_of(redis: Redis, workers: list[Proc], timeout_s: float = 5.0) -> Proc:
    """The worker whose heartbeat says it is running a job."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for beat in await live_workers(redis):
            if beat["running"]:
                [proc] = [proc for proc in workers if f"worker_id={beat['id']}" in proc.output()]
                return proc
        await asyncio.sleep(0.05)
    raise AssertionError("no worker is running the job")


def completions(job_id: str, workers: list[Proc]) -> int:
    """How many times a worker logged the job as complete."""
    return sum(
        "job complete" in line and f"job_id={job_id}" in line for proc in workers for line in proc.output().splitlines()
    )


async def logged_completions(job_id: str, workers: list[Proc]) -> int:
    """``completions`` once there is one: a worker logs it just after the result is recorded, which the API
    may show first."""

    async def logged() -> int:
        return completions(job_id, workers)

    return int(await eventually(logged, timeout_s=5.0))


async def test_job_of_a_killed_worker_completes_on_another_worker(
    client: Client, api_key: str, redis: Redis, procs: list[Proc], tmp_path: Path
) -> None:
    workers = [start_worker(procs, tmp_path / "a.log"), start_worker(procs, tmp_path / "b.log")]
    await live_ids(redis, 2)
    job_id = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 2.5})
    await wait_for(client, api_key, job_id, ("in_progress",))

    victim = await runner_of(redis, workers)
    victim.popen.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    body = await wait_for(client, api_key, job_id, timeout_s=20)
    recovered_s = time.monotonic() - killed_at

    [survivor] = [proc for proc in workers if proc is not victim]
    assert body["status"] == "complete"
    assert body["result"]["worker"] in survivor.output()
    assert body["tries"] == 2  # the killed try counts: a job that kills its worker cannot loop forever
    assert recovered_s < 20
    assert await logged_completions(job_id, workers) == 1


async def test_sigterm_hands_a_running_job_back_without_spending_a_try(
    client: Client, api_key: str, redis: Redis, procs: list[Proc], tmp_path: Path
) -> None:
    workers = [start_worker(procs, tmp_path / "a.log"), start_worker(procs, tmp_path / "b.log")]
    ids = await live_ids(redis, 2)
    job_id = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 2.5})
    await wait_for(client, api_key, job_id, ("in_progress",))

    victim = await runner_of(redis, workers)
    victim.popen.send_signal(signal.SIGTERM)
    assert await victim.exited(timeout_s=5) == 0
    body = await wait_for(client, api_key, job_id, timeout_s=10)

    [survivor] = [proc for proc in workers if proc is not victim]
    assert body["status"] == "complete"
    assert body["tries"] == 1
    assert body["result"]["worker"] in survivor.output()
    assert "handing jobs back" in victim.output()
    assert await logged_completions(job_id, workers) == 1
    still_live = {worker["id"] for worker in await live_workers(redis)}
    assert len(still_live) == 1
    assert still_live < set(ids)  # the stopped worker removed its own heartbeat, and only its own


async def test_check_exits_zero_only_while_a_worker_heartbeat_is_live(
    redis: Redis, procs: list[Proc], tmp_path: Path
) -> None:
    def check() -> int:
        return run_python("-m", "jobs", "--check", env=worker_env()).returncode

    assert check() == 1
    worker = start_worker(procs, tmp_path / "a.log")
    await live_ids(redis, 1)
    assert check() == 0
    worker.popen.send_signal(signal.SIGINT)
    assert await worker.exited(timeout_s=5) == 0
    assert check() == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL: scheme must be redis, rediss or unix, got http"),
        ({"JOB_LEASE_S": "0.1"}, "JOB_LEASE_S: must be from 1 to 300, got 0.1"),
        ({"JOB_IDLE_POLL_S": "2"}, "JOB_IDLE_POLL_S: must be from 10 to 3600, got 2"),
    ],
)
def test_worker_with_bad_settings_exits_2_with_one_line(env: dict[str, str], message: str) -> None:
    done = run_python("-m", "jobs", env=worker_env(**env))
    assert done.returncode == 2
    assert done.stderr.strip() == message


async def test_dev_runs_web_and_worker_in_one_process(redis: Redis, procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    dev = start_dev(procs, tmp_path, port)
    key = await ApiKeyStore(redis).create("acme")
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        await wait_for_status(session, f"{base}/health", 200, dev, timeout_s=15)
        async with session.post(f"{base}/v1/jobs", json={"task": "diagnostics.ping"}, headers=auth(key)) as response:
            assert response.status == 202
            location = response.headers["Location"]
        deadline = time.monotonic() + 10
        while True:
            async with session.get(f"{base}{location}", headers=auth(key)) as response:
                body = await response.json()
            if body["status"] == "complete":
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.05)
    assert body["result"]["pong"] is True
    dev.popen.send_signal(signal.SIGTERM)
    assert await dev.exited(timeout_s=10) == 0
    assert await live_workers(redis) == []

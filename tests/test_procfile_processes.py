"""Each Procfile command, started as a real process with fly.toml's [env], becomes ready and stops
cleanly on Fly's kill_signal within kill_timeout; a stopping worker hands its running job back.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from service.auth import ApiKeyStore
from tests.deploy_support import (
    argv,
    enqueue,
    fly_config,
    job,
    job_reaches,
    machine_env,
    procfile,
)
from tests.processes import Proc, wait_for_status
from tests.servers import RedisServer, free_port

# The job outlives the worker's grace (JOB_GRACE_S, 3 s by default), so it must be handed back.
SLEEP_S = 5


def start(procs: list[Proc], group: str, log: Path, env: dict[str, str]) -> Proc:
    proc = Proc(argv(procfile()[group]), log, env)
    procs.append(proc)
    return proc


async def wait_for_worker(env: dict[str, str], worker: Proc, timeout_s: float = 30.0) -> None:
    """Until ``python -m jobs --check`` exits 0: a worker heartbeat is live."""
    deadline = time.monotonic() + timeout_s
    while True:
        check = [*argv(procfile()["worker"]), "--check"]
        done = await asyncio.to_thread(subprocess.run, check, env=env, capture_output=True, timeout=timeout_s)
        if done.returncode == 0:
            return
        assert worker.popen.poll() is None, f"exited with {worker.popen.returncode}:\n{worker.output()}"
        assert time.monotonic() < deadline, f"no live worker heartbeat after {timeout_s} s:\n{worker.output()}"


async def test_web_is_ready_only_with_a_worker_and_both_stop_within_kill_timeout_handing_the_job_back(
    private_redis: RedisServer, procs: list[Proc], tmp_path: Path
) -> None:
    kill_timeout_s = fly_config()["kill_timeout"]
    ready_path = fly_config()["checks"]["ready"]["path"]
    port = free_port()
    web_env = machine_env(private_redis.url, PORT=str(port))
    worker_env = machine_env(private_redis.url)
    base = f"http://127.0.0.1:{port}"
    client = Redis.from_url(private_redis.url)
    key = await ApiKeyStore(client).create("acme")
    await client.aclose()

    web = start(procs, "web", tmp_path / "web.log", web_env)
    async with aiohttp.ClientSession() as session:
        await wait_for_status(session, f"{base}/health", 200, web)
        await wait_for_status(session, f"{base}{ready_path}", 503, web)  # no worker yet
        first = start(procs, "worker", tmp_path / "worker-1.log", worker_env)
        await wait_for_worker(worker_env, first)
        await wait_for_status(session, f"{base}{ready_path}", 200, web)

        job_url = await enqueue(session, base, key, "diagnostics.sleep", {"seconds": SLEEP_S})
        await job_reaches(session, job_url, key, "in_progress", timeout_s=10)

        code, worker_stop_s = await first.stop(timeout_s=kill_timeout_s)
        assert code == 0, first.output()
        assert "handing jobs back" in first.output()
        handed_back = await job(session, job_url, key)
        assert handed_back["status"] == "queued"

        second = start(procs, "worker", tmp_path / "worker-2.log", worker_env)
        done = await job_reaches(session, job_url, key, "complete", timeout_s=kill_timeout_s + SLEEP_S)
        assert done["tries"] == 1  # the handed-back try was not spent
        assert done["result"]["worker"] in second.output()

        web_code, web_stop_s = await web.stop(timeout_s=kill_timeout_s)
        second_code, _ = await second.stop(timeout_s=kill_timeout_s)
    assert web_code == 0, web.output()
    assert second_code == 0, second.output()
    assert worker_stop_s < kill_timeout_s
    assert web_stop_s < kill_timeout_s
    assert "Traceback" not in web.output() + first.output() + second.output()

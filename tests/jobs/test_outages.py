"""Workers wait out Redis outages: no restart, one line each way, and leases stay honest.

Each test runs its own ``redis-server`` with AOF on (``tests.servers.new_redis_server``),
stops it (SIGTERM: it writes its AOF and exits, as a managed Redis restarting would) and
starts it again on the same port and data folder.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from jobs.heartbeat import live_workers
from jobs.queue import JobQueue
from jobs.registry import Registry
from jobs.running import running_worker
from jobs.worker import Worker
from service.settings import Settings
from tests.conftest import make_settings
from tests.jobs.test_processes import worker_env
from tests.processes import Proc
from tests.servers import RedisServer, free_port, new_redis_server

AOF = ("--appendonly", "yes", "--appendfsync", "everysec")
LOST = "worker lost redis"
BACK = "worker reached redis again"


async def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout_s} s"
        await asyncio.sleep(0.05)


async def status_of(queue: JobQueue, job_id: str) -> dict[str, Any]:
    view = await queue.get("acme", job_id)
    assert view is not None
    return view.to_json()


async def completed_within(queue: JobQueue, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (body := await status_of(queue, job_id))["status"] != "complete":
        assert time.monotonic() < deadline, f"job {job_id} still {body['status']} after {timeout_s} s"
        await asyncio.sleep(0.02)
    return body


async def dev_ping(session: aiohttp.ClientSession, base: str, key: str, timeout_s: float) -> dict[str, Any]:
    """Enqueue a ping through dev's API and wait until it is complete."""
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{base}/v1/jobs", json={"task": "diagnostics.ping"}, headers=headers) as response:
        assert response.status == 202, await response.text()
        location = response.headers["Location"]
    deadline = time.monotonic() + timeout_s
    while True:
        async with session.get(f"{base}{location}", headers=headers) as response:
            body: dict[str, Any] = await response.json()
        if body["status"] == "complete":
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)


async def test_a_worker_and_devs_worker_each_run_a_new_ping_within_5_s_of_redis_returning_after_10_s_away(
    procs: list[Proc], tmp_path: Path
) -> None:
    jobs_redis, dev_redis = new_redis_server(*AOF), new_redis_server(*AOF)
    port = free_port()
    worker = Proc.python(["-m", "jobs"], tmp_path / "jobs.log", worker_env(REDIS_URL=jobs_redis.url))
    dev_env = worker_env(REDIS_URL=dev_redis.url, PORT=str(port), RATE_LIMIT_ENABLED="false")
    dev = Proc.python(["-m", "service", "dev"], tmp_path / "dev.log", dev_env, cwd=tmp_path)
    procs += [worker, dev]
    base = f"http://127.0.0.1:{port}"
    jobs_client = Redis.from_url(jobs_redis.url)
    queue = JobQueue(jobs_client, make_settings(REDIS_URL=jobs_redis.url))
    try:
        await wait_until(lambda: _live(jobs_redis), 15, "a live worker")
        await wait_until(lambda: _live(dev_redis), 15, "dev's worker live")
        await wait_until(lambda: _said(dev, "ottoai dev is up"), 15, "dev's banner")
        dev_key = (tmp_path / ".dev-data" / "api-key").read_text().strip()
        async with aiohttp.ClientSession() as session:
            await dev_ping(session, base, dev_key, timeout_s=10)  # both work before the outage
            before, _ = await queue.enqueue("acme", "diagnostics.ping", {})
            await completed_within(queue, before.id, 10)

            jobs_redis.stop()
            dev_redis.stop()
            await asyncio.sleep(10)  # the outage itself
            jobs_redis.start()
            dev_redis.start()
            returned_at = time.monotonic()

            job, _ = await queue.enqueue("acme", "diagnostics.ping", {})
            await completed_within(queue, job.id, timeout_s=10)
            worker_s = time.monotonic() - returned_at
            await dev_ping(session, base, dev_key, timeout_s=10)
            dev_s = time.monotonic() - returned_at
    finally:
        await jobs_client.aclose()

    assert worker_s < 5
    assert dev_s < 5
    for proc in (worker, dev):
        assert proc.popen.poll() is None, proc.output()  # never restarted, never exited
        output = proc.output()
        assert output.count(LOST) == 1, output
        assert output.count(BACK) == 1, output
        assert "Traceback" not in output
    for proc in (worker, dev):
        proc.popen.send_signal(signal.SIGTERM)
        assert await proc.exited(timeout_s=15) == 0


async def _live(server: RedisServer) -> bool:
    async with Redis.from_url(server.url) as client:
        workers = await live_workers(client)
    return bool(workers)


async def _said(proc: Proc, words: str) -> bool:
    return words in proc.output()


# -- leases, in process --------------------------------------------------------------------


@pytest.fixture
def own_redis() -> RedisServer:
    return new_redis_server(*AOF)


def own_settings(server: RedisServer, **env: str) -> Settings:
    """Without cron: a cron slot that falls inside a test (the canary's, every 15 minutes) would add a run to
    the worker's counts."""
    return make_settings(
        REDIS_URL=server.url, RATE_LIMIT_ENABLED="false", WORKER_HEARTBEAT_S="1", ENABLE_CRON="false", **env
    )


async def test_a_job_whose_lease_another_worker_took_is_stopped_and_not_recorded_here(
    own_redis: RedisServer, test_tasks: Registry
) -> None:
    settings = own_settings(own_redis, JOB_LEASE_S="2")
    async with Redis.from_url(own_redis.url) as redis, running_worker(settings, registry=test_tasks) as worker:
        queue = JobQueue(redis, settings, test_tasks)
        job, _ = await queue.enqueue("acme", "diagnostics.sleep", {"seconds": 1.5})
        await wait_until(lambda: _in_progress(queue, job.id), 5, "in progress")
        # As another worker's claim would, once this worker's lease had run out.
        await redis.set(f"arq:in-progress:{job.id}", "1:another-worker", px=1500)

        body = await completed_within(queue, job.id, timeout_s=15)

    assert body["tries"] == 2  # the first try was stopped and recorded nothing; the second completed
    assert worker.jobs_retried == 1
    assert worker.jobs_complete == 1


async def _job_ending_while_redis_is_away(
    server: RedisServer, tasks: Registry, *, lease_s: int, job_s: float, away_after_s: float, timeout_s: float
) -> tuple[dict[str, Any], Worker]:
    """A ``job_s`` sleep on a worker with ``lease_s`` leases; Redis stops while it runs and starts again
    ``away_after_s`` after the job ended. The job once complete (within ``timeout_s``), and the worker,
    whose main loop was still running then."""
    settings = own_settings(server, JOB_LEASE_S=str(lease_s))
    async with Redis.from_url(server.url) as redis:
        queue = JobQueue(redis, settings, tasks)
        async with running_worker(settings, registry=tasks) as worker:
            job, _ = await queue.enqueue("acme", "diagnostics.sleep", {"seconds": job_s})
            await wait_until(lambda: _in_progress(queue, job.id), 5, "in progress")
            server.stop()
            await wait_until(lambda: _ran(worker), 5, "the job ran while Redis was away")
            await asyncio.sleep(away_after_s)
            server.start()
            body = await completed_within(queue, job.id, timeout_s=timeout_s)
            assert worker.main_task is not None
            assert not worker.main_task.done()
    return body, worker


async def test_a_job_that_ends_while_redis_is_away_is_recorded_when_it_is_back(
    own_redis: RedisServer, test_tasks: Registry
) -> None:
    # Back within the lease: the finish that kept trying is recorded.
    body, worker = await _job_ending_while_redis_is_away(
        own_redis, test_tasks, lease_s=10, job_s=0.5, away_after_s=0, timeout_s=10
    )

    assert body["tries"] == 1
    assert body["result"]["worker"] == worker.worker_id


async def test_a_job_whose_lease_ran_out_while_redis_was_away_runs_again_and_completes_once(
    own_redis: RedisServer, test_tasks: Registry
) -> None:
    # Back after longer than the lease (1.5 s after the job ended): on Redis's clock it has run out.
    body, worker = await _job_ending_while_redis_is_away(
        own_redis, test_tasks, lease_s=1, job_s=0.3, away_after_s=1.5, timeout_s=15
    )

    assert body["tries"] == 2  # the first run's finish was refused; it ran again and completed once
    assert worker.jobs_complete == 2  # the function did end twice; only the second was recorded


async def _in_progress(queue: JobQueue, job_id: str) -> bool:
    body = await status_of(queue, job_id)
    return bool(body["status"] == "in_progress")


async def _ran(worker: Worker) -> bool:
    return worker.jobs_complete >= 1

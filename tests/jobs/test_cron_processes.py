"""Cron on a fleet of real worker processes (``python -m tests.jobs.cron_worker``, i.e. ``python -m jobs``)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs.cron import SCHEDULE
from jobs.cron_store import CronJobStatus, CronRun, CronStore
from jobs.heartbeat import live_workers
from service.app import create_app
from tests.jobs.cron_worker import SCHEDULES
from tests.jobs.support import jobs_settings
from tests.jobs.test_cron import eventually
from tests.jobs.test_processes import live_ids, logged_completions, runner_of, start_dev, worker_env
from tests.processes import Proc
from tests.servers import free_port

HEARTBEAT_S = 1.0


def start(procs: list[Proc], log: Path, schedule: str) -> Proc:
    proc = Proc.python(["-m", "tests.jobs.cron_worker", schedule], log, worker_env(WORKER_HEARTBEAT_S=str(HEARTBEAT_S)))
    procs.append(proc)
    return proc


async def status(store: CronStore) -> CronJobStatus:
    [found] = await store.status()
    return found


def completed_runs(name: str, procs: list[Proc]) -> Counter[str]:
    """How many times each run of ``name`` was logged complete, over every worker's log."""
    pattern = re.compile(rf"job complete .*job_id=(cron:{name}:\d+)")
    return Counter(match.group(1) for proc in procs for match in pattern.finditer(proc.output()))


async def test_three_workers_run_every_slot_of_a_job_every_second_exactly_once(
    redis: Redis, procs: list[Proc], tmp_path: Path
) -> None:
    store = CronStore(redis, SCHEDULES["tick"])
    for name in "abc":
        start(procs, tmp_path / f"{name}.log", "tick")
    await live_ids(redis, 3)
    first = await eventually(lambda: _oldest_run(store))
    await eventually(lambda: _has_run_for(store, first.slot_ms + 19_000), timeout_s=40)  # 20 slots
    await store.pause("tick")  # no run after the window, so the history (20 runs) holds it all
    for proc in procs:
        proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        assert await proc.exited(timeout_s=10) == 0

    logged = completed_runs("tick", procs)
    assert set(logged.values()) == {1}  # no run of any slot by two workers, nor twice by one
    history = list(reversed((await status(store)).runs))  # the last 20 runs, oldest first
    assert {run.job_id for run in history} <= set(logged)
    assert all(run.outcome == "complete" for run in history)
    covered = [run.slot_ms + 1000 * k for run in history for k in range(run.slots)]
    assert len(covered) >= 20
    assert covered == [covered[0] + 1000 * k for k in range(len(covered))]  # every slot, in order, each once
    assert covered[0] <= first.slot_ms + 1000  # the window (one run may have begun before the pause landed)


async def _oldest_run(store: CronStore) -> CronRun | None:
    runs = (await status(store)).runs
    return runs[-1] if runs else None


async def _has_run_for(store: CronStore, slot_ms: int) -> bool:
    return any(run.slot_ms + 1000 * (run.slots - 1) >= slot_ms for run in (await status(store)).runs)


async def test_run_of_a_killed_worker_completes_on_another_worker(
    redis: Redis, procs: list[Proc], tmp_path: Path
) -> None:
    store = CronStore(redis, SCHEDULES["slow"])
    workers = [start(procs, tmp_path / "a.log", "slow"), start(procs, tmp_path / "b.log", "slow")]
    await live_ids(redis, 2)

    async def running_run() -> str | None:
        found = await status(store)
        return found.current_run if found.running else None

    run_id = await eventually(running_run)
    victim = await runner_of(redis, workers)
    victim.popen.send_signal(signal.SIGKILL)
    [survivor] = [proc for proc in workers if proc is not victim]

    async def finished() -> CronRun | None:
        return next((run for run in (await status(store)).runs if run.job_id == run_id), None)

    run = await eventually(finished, timeout_s=20)
    assert run.outcome == "complete"
    assert run.tries == 2  # the killed try, then the survivor's
    assert f"worker_id={run.worker}" in survivor.output()
    assert await logged_completions(run_id, workers) == 1


async def test_ready_says_scheduler_false_within_the_heartbeat_window_once_no_worker_runs_cron(
    aiohttp_client: AiohttpClient, redis: Redis, procs: list[Proc], tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(jobs_settings(), schedule=SCHEDULES["tick"]))

    async def scheduler() -> dict[str, Any]:
        body: dict[str, Any] = await (await client.get("/ready")).json()
        return {"passed": body["components"]["scheduler"], **body["details"]["scheduler"]}

    worker = start(procs, tmp_path / "a.log", "tick")
    await eventually(lambda: _passed(scheduler))
    worker.popen.send_signal(signal.SIGKILL)  # no clean stop: its heartbeat key has to expire
    killed_at = time.monotonic()
    while (found := await scheduler())["passed"]:
        assert time.monotonic() - killed_at < 3 * HEARTBEAT_S + 2, found
        await asyncio.sleep(0.1)

    assert found == {"passed": False, "workers": 0}
    assert await live_workers(redis) == []


async def _passed(check: Any) -> bool:
    return bool((await check())["passed"])


async def test_dev_runs_the_cron_schedule_too(redis: Redis, procs: list[Proc], tmp_path: Path) -> None:
    port = free_port()
    start_dev(procs, tmp_path, port)

    async def ready() -> dict[str, Any] | None:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/ready") as response:
                body: dict[str, Any] = await response.json()
        except aiohttp.ClientConnectionError:
            return None
        return body if body["ready"] else None

    body = await eventually(ready, timeout_s=20)
    assert body["components"]["scheduler"] is True
    statuses = await CronStore(redis, SCHEDULE).status()
    assert [status.name for status in statuses] == [job.name for job in SCHEDULE]
    assert all(status.next_run_ms is not None for status in statuses)  # the built-in jobs are on the schedule

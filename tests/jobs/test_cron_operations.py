"""Operators and cron: ``/internal/cron``, ``python -m jobs cron``, the scheduler in ``/ready`` and ``doctor``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from jobs.cron import CronJob, RunId, Schedule
from jobs.crontab import Crontab
from jobs.redis_keys import QUEUE_KEY, SYSTEM_TENANT, ready_key
from jobs.running import running_worker
from service.app import create_app
from service.doctor import diagnose
from service.settings import Settings
from tests.jobs.support import Client, jobs_settings
from tests.jobs.test_cron import eventually
from tests.processes import run_python
from tests.servers import redis_url

HOURLY = Crontab.parse("0 * * * *")
SCHEDULE = Schedule(
    [
        CronJob("report", "diagnostics.ping", HOURLY),
        CronJob("nap", "diagnostics.sleep", HOURLY, args={"seconds": 1.0}),
    ]
)


async def _client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings, schedule=SCHEDULE))


async def _job(client: Client, name: str) -> dict[str, Any]:
    response = await client.get("/internal/cron")
    assert response.status == 200
    [job] = [job for job in (await response.json())["jobs"] if job["name"] == name]
    return dict(job)


async def test_operator_pauses_resumes_and_runs_a_job_now_over_http(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> None:
    client = await _client(aiohttp_client, settings)
    async with running_worker(settings, schedule=SCHEDULE):

        async def synced() -> dict[str, Any] | None:
            job = await _job(client, "report")
            return job if job["next_run_at"] else None

        scheduled = await eventually(synced, timeout_s=5)
        assert (scheduled["schedule"], scheduled["paused"], scheduled["runs"]) == ("0 * * * *", False, [])

        paused = await client.post("/internal/cron/report/pause")
        assert paused.status == 200
        assert (await paused.json())["paused"] is True
        assert (await paused.json())["next_run_at"] is None
        assert not any(member.startswith(b"cron:report:") for member in await redis.zrange(QUEUE_KEY, 0, -1))

        resumed = await client.post("/internal/cron/report/resume")
        assert resumed.status == 200
        assert (await resumed.json())["next_run_at"] == scheduled["next_run_at"]

        queued = await client.post("/internal/cron/report/run")
        assert queued.status == 202
        run_id = (await queued.json())["job_id"]
        assert RunId.parse(run_id).manual

        async def ran() -> dict[str, Any] | None:
            job = await _job(client, "report")
            return job if job["runs"] else None

        after = await eventually(ran)
    [run] = after["runs"]
    assert (run["job_id"], run["trigger"], run["outcome"], run["slots"]) == (run_id, "manual", "complete", 0)
    assert after["next_run_at"] == scheduled["next_run_at"]  # the schedule goes on after the run-now


async def test_run_now_of_a_running_job_is_409_and_unknown_names_are_404(
    aiohttp_client: AiohttpClient, redis: Redis, settings: Settings
) -> None:
    client = await _client(aiohttp_client, settings)
    async with running_worker(settings, schedule=SCHEDULE):
        assert (await client.post("/internal/cron/nap/run")).status == 202
        await eventually(lambda: _running(client, "nap"))
        refused = await client.post("/internal/cron/nap/run")
        assert refused.status == 409
        assert (await refused.json())["type"].endswith("cron-job-running")

    for action in ("run", "pause", "resume"):
        missing = await client.post(f"/internal/cron/nope/{action}")
        assert missing.status == 404
        assert missing.content_type == "application/problem+json"


async def _running(client: Client, name: str) -> bool:
    return bool((await _job(client, name))["running"])


async def test_cron_routes_are_closed_beyond_loopback_without_the_internal_token(client: Client) -> None:
    remote = {"Fly-Client-IP": "203.0.113.9"}
    assert (await client.get("/internal/cron", headers=remote)).status == 403
    assert (await client.post("/internal/cron/cron-canary/run", headers=remote)).status == 403


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "jobs", "cron", *args, env={"REDIS_URL": redis_url(), "LOG_FORMAT": "console"})


async def test_command_line_lists_runs_pauses_and_resumes_the_built_in_schedule(redis: Redis) -> None:
    assert _cli("pause", "cron-canary").returncode == 0
    listed = _cli("list")
    assert listed.returncode == 0
    assert "cron-canary" in listed.stdout
    assert "paused" in listed.stdout

    resumed = _cli("resume", "cron-canary")
    assert resumed.returncode == 0
    assert "next run" in resumed.stdout

    run = _cli("run", "cron-canary")
    assert run.returncode == 0
    run_id = run.stdout.strip().rpartition(" ")[2]
    assert RunId.parse(run_id) == RunId("cron-canary", RunId.parse(run_id).at_ms, manual=True)
    assert await redis.zscore(QUEUE_KEY, run_id) is not None

    unknown = _cli("pause", "nope")
    assert unknown.returncode == 1
    assert "no job named 'nope'" in unknown.stderr


async def test_scheduler_is_ready_only_while_a_worker_runs_cron(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    settings = jobs_settings()
    client = await _client(aiohttp_client, settings)

    async def ready_when(workers: bool, scheduler: bool) -> dict[str, Any] | None:
        """The scheduler's details once /ready (fresh at most once a second) says this of both components."""
        body = await (await client.get("/ready")).json()
        components = body["components"]
        wanted = components["workers"] is workers and components["scheduler"] is scheduler
        return dict(body["details"]["scheduler"]) if wanted else None

    assert await ready_when(workers=False, scheduler=False) == {"workers": 0, "unscheduled": ["report", "nap"]}
    async with running_worker(jobs_settings(ENABLE_CRON="false"), schedule=SCHEDULE):
        no_cron = await eventually(lambda: ready_when(workers=True, scheduler=False))  # a worker, none with cron
    async with running_worker(settings, schedule=SCHEDULE):
        details = await eventually(lambda: ready_when(workers=True, scheduler=True))
    stopped = await eventually(lambda: ready_when(workers=False, scheduler=False), timeout_s=3)

    assert no_cron["workers"] == 0
    assert details["workers"] == 1
    assert details["last_tick_age_s"] < 5
    assert stopped == {"workers": 0}  # a worker that stops removes its beat at once (/ready is fresh within 1 s)


async def test_scheduler_names_a_job_that_lost_its_pending_run(aiohttp_client: AiohttpClient, redis: Redis) -> None:
    settings = jobs_settings()
    client = await _client(aiohttp_client, settings)
    async with running_worker(settings, schedule=SCHEDULE):
        await eventually(lambda: redis.zcard(QUEUE_KEY))  # the worker has scheduled both jobs
        await redis.delete(QUEUE_KEY, ready_key(SYSTEM_TENANT))  # as a Redis that lost data would

        body = await (await client.get("/ready")).json()

    assert body["components"]["scheduler"] is False
    assert body["details"]["scheduler"]["stalled"] == ["report", "nap"]


async def test_doctor_reports_the_scheduler_heartbeat(redis: Redis) -> None:
    settings = jobs_settings()
    before = {f.check: f for f in await diagnose(settings)}
    assert before["scheduler"].status == "problem"
    assert "ENABLE_CRON" in before["scheduler"].advice

    async with running_worker(settings):
        deadline = time.monotonic() + 5
        while (found := {f.check: f for f in await diagnose(settings)})["scheduler"].status != "ok":
            assert time.monotonic() < deadline, found["scheduler"]
            await asyncio.sleep(0.1)
    assert found["scheduler"].detail.startswith("1 worker(s) run cron")

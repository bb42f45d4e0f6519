"""A worker counts its job runs by task and outcome, and their durations, on the process's metrics."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis

from jobs.redis_keys import RETRY_PREFIX
from jobs.registry import Registry
from jobs.running import running_worker
from service.metrics import Metrics
from tests.jobs.support import Client, auth, enqueue, jobs_settings, wait_for
from tests.prometheus import parse, value


async def scraped(metrics: Metrics, name: str, timeout_s: float = 10.0, **labels: str) -> None:
    """Wait until a scrape of ``metrics`` has the sample ``name{labels}``."""
    deadline = time.monotonic() + timeout_s
    while (name, frozenset(labels.items())) not in parse(await metrics.scrape()):
        assert time.monotonic() < deadline, f"no {name}{labels} after {timeout_s} s"
        await asyncio.sleep(0.05)


async def test_runs_are_counted_by_task_and_outcome_with_their_durations(
    client: Client, api_key: str, test_tasks: Registry
) -> None:
    metrics = Metrics()
    async with running_worker(
        jobs_settings(JOB_GRACE_S="0.2", ENABLE_CRON="false"), registry=test_tasks, metrics=metrics
    ) as worker:
        finished = [await enqueue(client, api_key, task) for task in ("diagnostics.ping", "test.fail", "test.flaky")]
        aborted = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 30})
        await wait_for(client, api_key, aborted, ("in_progress",))
        assert (await client.delete(f"/v1/jobs/{aborted}", headers=auth(api_key))).status == 202
        for job_id in finished:
            await wait_for(client, api_key, job_id)
        # The API shows "aborted" at once; the worker cancels the run at its next lease renewal
        # (or, when the abort came between claim and start, never starts it: aborted all the same).
        await scraped(metrics, "job_runs_total", task="diagnostics.sleep", outcome="aborted")
        handed_back = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 30})
        await wait_for(client, api_key, handed_back, ("in_progress",))
        while_running = parse(await metrics.scrape())
    # The worker has stopped and handed its running job back; its counts are final.
    registry = CollectorRegistry()
    registry.register(worker.job_metrics)
    runs = parse(generate_latest(registry))

    assert value(while_running, "job_runs_total", task="diagnostics.ping", outcome="complete") == 1
    expected = {
        ("diagnostics.ping", "complete"): 1,
        ("test.fail", "retried"): 2,
        ("test.fail", "failed"): 1,
        ("test.flaky", "retried"): 1,
        ("test.flaky", "complete"): 1,
        ("diagnostics.sleep", "aborted"): 1,
        ("diagnostics.sleep", "handed_back"): 1,
    }
    counted = {
        (dict(labels)["task"], dict(labels)["outcome"]): count
        for (name, labels), count in runs.items()
        if name == "job_runs_total"
    }
    assert counted == expected
    assert value(runs, "job_run_duration_seconds_count", task="test.fail") == 3
    assert value(runs, "job_run_duration_seconds_count", task="test.flaky") == 2


async def test_a_job_that_never_started_counts_as_failed_without_a_duration(
    client: Client, api_key: str, redis: Redis, test_tasks: Registry
) -> None:
    job_id = await enqueue(client, api_key, "diagnostics.ping")
    await redis.set(RETRY_PREFIX + job_id, 2)  # both tries spent, as by two workers killed while running it
    metrics = Metrics()
    async with running_worker(jobs_settings(ENABLE_CRON="false"), registry=test_tasks, metrics=metrics):
        assert (await wait_for(client, api_key, job_id))["status"] == "failed"
        samples = parse(await metrics.scrape())

    assert value(samples, "job_runs_total", task="diagnostics.ping", outcome="failed") == 1
    assert ("job_run_duration_seconds_count", frozenset({("task", "diagnostics.ping")})) not in samples

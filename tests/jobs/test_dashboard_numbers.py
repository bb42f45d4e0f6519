"""The dashboard's figures of the work are Redis's, after a known sequence of jobs run by a real worker."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from jobs.cron import SCHEDULE
from jobs.heartbeat import live_workers
from jobs.redis_keys import MINUTE_STATS_PREFIX
from jobs.worker import Worker
from tests.jobs.support import Client, auth, enqueue, wait_for
from tests.waiting import until


async def _document(client: Client) -> dict[str, Any]:
    response = await client.get("/internal/dashboard.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


async def _counted_in_redis(redis: Redis) -> dict[str, int]:
    """Every per-minute count the workers wrote, summed by outcome, read straight from Redis."""
    totals: dict[str, int] = {}
    async for key in redis.scan_iter(match=MINUTE_STATS_PREFIX + "*"):
        for outcome, count in (await redis.hgetall(key)).items():  # type: ignore[misc]  # redis-py's union type
            totals[outcome.decode()] = totals.get(outcome.decode(), 0) + int(count)
    return totals


async def test_document_matches_redis_after_complete_failed_deferred_and_running_jobs(
    client: Client, api_key: str, worker: Worker, redis: Redis
) -> None:
    completed = [await enqueue(client, api_key, "diagnostics.ping") for _ in range(3)]
    failing = [await enqueue(client, api_key, "test.fail") for _ in range(2)]  # 3 tries each
    deferred = await enqueue(client, api_key, "diagnostics.ping", defer_seconds=600)
    running = await enqueue(client, api_key, "diagnostics.sleep", {"seconds": 30})
    for job_id in completed:
        assert (await wait_for(client, api_key, job_id))["status"] == "complete"
    for job_id in failing:
        assert (await wait_for(client, api_key, job_id))["status"] == "failed"
    await wait_for(client, api_key, running, statuses=("in_progress",))

    # Each cron job's pending run waits in the queue too (deferred to its next slot).
    expected = {"queued": 0, "deferred": 1 + len(SCHEDULE), "in_progress": 1}

    async def settled() -> dict[str, Any]:
        document = await _document(client)  # shared for 2 s: wait for one built after the sequence
        return document if document["queue"] == expected else {}

    document = await until(settled, "a document with the sequence's queue", timeout_s=10.0)
    assert (await wait_for(client, api_key, deferred, statuses=("deferred",)))["status"] == "deferred"

    throughput = document["throughput"]
    shown = {outcome: sum(throughput[outcome]) for outcome in ("complete", "failed", "retried", "aborted")}
    assert shown == {"complete": 3, "failed": 2, "retried": 4, "aborted": 0}
    assert {outcome: count for outcome, count in shown.items() if count} == await _counted_in_redis(redis)
    assert len(throughput["complete"]) == 60

    # A worker's counters are its last heartbeat's (every WORKER_HEARTBEAT_S), as Redis holds it.
    [shown_worker] = document["workers"]
    [beat] = await live_workers(redis)
    assert shown_worker["id"] == beat["id"] == worker.worker_id
    counters = ("running", "complete", "failed", "retried", "beat_at")
    assert {name: shown_worker[name] for name in counters} == {name: beat[name] for name in counters}
    assert document["ready"]["components"]["workers"] is True
    assert document["unavailable"] == []
    assert (await client.delete(f"/v1/jobs/{running}", headers=auth(api_key))).status == 202  # a quick teardown

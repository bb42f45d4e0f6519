"""The maintenance jobs, each run as a job by a real worker on a private Redis set up to trigger it.

Each test asserts the finding's log line and the metric every process shows for it.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from jobs import cleanup
from jobs.cron import CronJob, Schedule
from jobs.cron_store import CronRun, CronStore
from jobs.crontab import Crontab
from jobs.fleet_metrics import FleetMetrics
from jobs.maintenance import check_memory, check_persistence, measure_keyspace_rates
from jobs.queue import JobQueue
from jobs.redis_keys import (
    JOB_PREFIX,
    MAINTENANCE_FINDINGS_KEY,
    RESULT_PREFIX,
    SYSTEM_TENANT,
    WORKERS_KEY,
    idempotency_key,
    index_key,
    worker_key,
)
from jobs.registry import JobContext
from jobs.running import running_worker
from service.metrics import Metrics
from tests.jobs.support import Client, auth, jobs_settings
from tests.prometheus import Samples, parse, value
from tests.servers import RedisServer, new_redis_server

SECRET = "slowlog-sentinel-value"
ACL_PASSWORD = "a-long-enough-password-123"


def findings_logged(logs: io.StringIO, check: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("check") == check]


@pytest.fixture
def redis_server() -> Iterator[Callable[..., str]]:
    """Start a private Redis with the given options and return its URL; all are stopped after the test."""
    servers: list[RedisServer] = []

    def start(*args: str) -> str:
        servers.append(new_redis_server(*args))
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


async def run_task(url: str, task: str, timeout_s: float = 30.0) -> CronRun:
    """Run ``task`` as an operator does (a cron run-now) on a worker of its own; the run once it has ended.

    The worker's schedule holds only this task, yearly, so nothing but the run-now runs.
    """
    schedule = Schedule([CronJob(task, task, Crontab.parse("0 0 1 1 *"))])
    async with Redis.from_url(url) as redis, running_worker(jobs_settings(REDIS_URL=url), schedule=schedule):
        store = CronStore(redis, schedule)
        deadline = time.monotonic() + timeout_s
        while (await store.status(task))[0].current_run is None:  # the worker has synced the schedule
            assert time.monotonic() < deadline, f"{task} never scheduled"
            await asyncio.sleep(0.02)
        run_id = await store.run_now(task)
        while not (runs := [run for run in (await store.status(task))[0].runs if run.job_id == run_id]):
            assert time.monotonic() < deadline, f"{task} did not finish within {timeout_s} s"
            await asyncio.sleep(0.02)
    return runs[0]


async def fleet_samples(url: str) -> Samples:
    """What any process's ``/metrics`` shows of the fleet-wide values."""
    async with Redis.from_url(url) as redis:
        metrics = Metrics()
        fleet = FleetMetrics(redis)
        fleet.register(metrics)
        try:
            return parse(await metrics.scrape())
        finally:
            await fleet.close()


async def fill(url: str, *, until_ratio: float = 0.0, until_evicted: bool = False, ttl_s: int | None = None) -> int:
    """Write 1 KiB keys 50 at a time until used memory reaches ``until_ratio`` of maxmemory or keys were evicted."""
    async with Redis.from_url(url) as redis:
        written = 0
        while True:
            memory, stats = await redis.info("memory"), await redis.info("stats")
            if memory["used_memory"] >= until_ratio * memory["maxmemory"] and (
                stats["evicted_keys"] > 0 or not until_evicted
            ):
                return written
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(written, written + 50):
                    pipe.set(f"filler:{i}", b"x" * 1024, ex=ttl_s)
                await pipe.execute()
            written += 50


async def test_memory_near_maxmemory_and_an_evicting_policy_are_warnings(
    redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    # volatile-lru evicts only keys with a TTL: the fillers, never the findings
    private_redis = redis_server("--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru")
    await fill(private_redis, until_ratio=0.85, ttl_s=3600)  # stops short of evicting the job's own keys

    job = await run_task(private_redis, "maintenance.memory")

    assert job.outcome == "complete"
    [memory] = findings_logged(logs, "memory")
    assert memory["level"] == "warning"
    assert memory["event"] == "redis memory above 80% of maxmemory"
    assert memory["ratio"] >= 0.8
    assert memory["maxmemory_bytes"] == 4 * 1024 * 1024
    [eviction] = findings_logged(logs, "eviction")
    assert eviction["level"] == "warning"
    assert eviction["policy"] == "volatile-lru"
    samples = await fleet_samples(private_redis)
    assert value(samples, "redis_memory_used_ratio") >= 0.8
    assert value(samples, "maintenance_check_ok", check="memory") == 0
    assert value(samples, "redis_eviction_policy_safe") == 0
    assert value(samples, "maintenance_check_ok", check="eviction") == 0


async def test_memory_well_below_maxmemory_under_noeviction_is_ok(
    redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    private_redis = redis_server("--maxmemory", "512mb", "--maxmemory-policy", "noeviction")
    job = await run_task(private_redis, "maintenance.memory")

    assert job.outcome == "complete"
    [memory] = findings_logged(logs, "memory")
    [eviction] = findings_logged(logs, "eviction")
    assert (memory["level"], eviction["level"]) == ("info", "info")
    assert memory["ratio"] < 0.8
    samples = await fleet_samples(private_redis)
    assert value(samples, "maintenance_check_ok", check="memory") == 1
    assert value(samples, "redis_eviction_policy_safe") == 1


# A Lua script that keeps Redis busy for 20 ms: a slow command whose argument is a secret.
SLOW_SCRIPT = """
local start = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 20000
return ARGV[1]
"""


async def test_slowlog_digest_counts_commands_by_name_never_keeps_arguments_and_empties_the_log(
    redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    private_redis = redis_server("--slowlog-log-slower-than", "10000")  # 10 ms, Redis's default
    async with Redis.from_url(private_redis) as redis:
        for _ in range(3):
            assert await redis.eval(SLOW_SCRIPT, 0, SECRET) == SECRET.encode()

        job = await run_task(private_redis, "maintenance.slowlog")
        left = await redis.slowlog_get(1000)
        findings = await redis.hgetall(MAINTENANCE_FINDINGS_KEY)

    assert job.outcome == "complete"
    [digest] = findings_logged(logs, "slowlog")
    assert digest["level"] == "warning"
    assert digest["event"] == "redis slow log has slow commands"
    assert digest["by_command"]["eval"] == 3
    assert digest["slowest_us"] > 20_000
    assert all(set(entry) == {"command", "duration_us", "at"} for entry in digest["slowest"])
    samples = await fleet_samples(private_redis)
    assert value(samples, "redis_slowlog_commands", command="eval") == 3
    assert value(samples, "redis_slowlog_entries") == digest["entries"]
    assert SECRET not in logs.getvalue()
    assert SECRET.encode() not in b"".join(findings.values())
    assert all(SECRET.encode() not in entry["command"] for entry in left)  # the digest emptied the log


async def test_keyspace_rates_are_per_minute_deltas_from_the_sample_another_worker_took(
    redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    # volatile-lru evicts only keys with a TTL: the fillers, never the previous sample
    private_redis = redis_server("--maxmemory", "2mb", "--maxmemory-policy", "volatile-lru")
    first = await run_task(private_redis, "maintenance.keyspace_rates")  # the first sample: no rate yet
    async with Redis.from_url(private_redis) as redis:
        for i in range(50):
            await redis.set(f"short-lived:{i}", "v", px=1)
        await asyncio.sleep(0.01)
        assert await redis.mget([f"short-lived:{i}" for i in range(50)]) == [None] * 50  # each read expires one
        written = await fill(private_redis, until_evicted=True, ttl_s=3600)
        await redis.delete(*(f"filler:{i}" for i in range(written)))  # room again for the next job

    second = await run_task(private_redis, "maintenance.keyspace_rates")  # another worker, the same sample

    assert (first.outcome, second.outcome) == ("complete", "complete")
    before, after = findings_logged(logs, "keyspace_rates")
    assert before["event"] == "redis keyspace rates known from the next sample"
    assert after["level"] == "warning"
    assert after["event"] == "redis is evicting keys"
    assert round(after["expired_per_minute"] * after["window_s"] / 60) == 50
    assert after["evicted_per_minute"] > 0
    samples = await fleet_samples(private_redis)
    assert value(samples, "redis_expired_keys_per_minute") == after["expired_per_minute"]
    assert value(samples, "redis_evicted_keys_per_minute") == after["evicted_per_minute"]


async def test_persistence_with_aof_on_reports_both_writes_ok_and_the_snapshot_age(
    redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    private_redis = redis_server("--appendonly", "yes")
    job = await run_task(private_redis, "maintenance.persistence")

    assert job.outcome == "complete"
    [finding] = findings_logged(logs, "persistence")
    assert finding["level"] == "info"
    assert (finding["aof_enabled"], finding["aof_last_write_ok"], finding["rdb_last_write_ok"]) == (True, True, True)
    assert finding["rdb_enabled"] is False
    samples = await fleet_samples(private_redis)
    assert value(samples, "redis_persistence_last_write_ok", kind="aof") == 1
    assert value(samples, "redis_persistence_last_write_ok", kind="rdb") == 1
    assert value(samples, "redis_rdb_last_save_age_seconds") >= 0
    assert value(samples, "maintenance_check_ok", check="persistence") == 1


async def test_persistence_with_nothing_on_disk_is_a_warning(
    redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    private_redis = redis_server()
    job = await run_task(private_redis, "maintenance.persistence")  # new_redis_server: no AOF, no RDB

    assert job.outcome == "complete"
    [finding] = findings_logged(logs, "persistence")
    assert finding["level"] == "warning"
    assert finding["problems"] == ["neither AOF nor RDB is on: a restart loses every queued job"]
    assert value(await fleet_samples(private_redis), "maintenance_check_ok", check="persistence") == 0


def _acl_user(*denied: str) -> tuple[str, ...]:
    """redis-server options for a user ``app`` who may run everything but ``denied`` (an Upstash-like ACL)."""
    return ("--user", "app", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all", *denied)


def _acl_user_url(url: str) -> str:
    return url.replace("redis://", f"redis://app:{ACL_PASSWORD}@")


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(("--rename-command", "CONFIG", "", "--rename-command", "SLOWLOG", ""), id="renamed-commands"),
        pytest.param(_acl_user("-slowlog", "-config"), id="acl-denied"),
    ],
)
async def test_refused_commands_are_findings_and_the_jobs_still_complete(
    refusal: tuple[str, ...], redis_server: Callable[..., str], logs: io.StringIO
) -> None:
    url = redis_server(*refusal)
    if "--user" in refusal:
        url = _acl_user_url(url)
    slowlog = await run_task(url, "maintenance.slowlog")
    persistence = await run_task(url, "maintenance.persistence")
    samples = await fleet_samples(url)

    assert (slowlog.outcome, slowlog.tries, slowlog.error) == ("complete", 1, None)
    assert persistence.outcome == "complete"
    [finding] = findings_logged(logs, "slowlog")
    assert finding["event"] == "not available on this Redis"
    assert finding["level"] == "info"
    assert "rdb_enabled" not in findings_logged(logs, "persistence")[0]  # CONFIG GET save refused: unknown
    assert value(samples, "maintenance_check_available", check="slowlog") == 0
    assert value(samples, "maintenance_check_available", check="persistence") == 1


async def test_a_refused_info_makes_its_checks_unavailable_not_failed(redis_server: Callable[..., str]) -> None:
    # A worker itself needs INFO at start, so these checks are called as its task runner calls them.
    url = _acl_user_url(redis_server(*_acl_user("-info")))
    async with Redis.from_url(url) as redis:
        job = JobContext("j1", "maintenance", SYSTEM_TENANT, 1, 1, "w1", jobs_settings(), redis)
        results = [await check(job) for check in (check_memory, measure_keyspace_rates, check_persistence)]

    statuses = {check: finding["status"] for result in results for check, finding in result.items()}
    assert statuses == dict.fromkeys(("memory", "eviction", "keyspace_rates", "persistence"), "unavailable")
    assert all("no permissions" in finding["values"]["reason"] for result in results for finding in result.values())


async def test_cleanup_removes_exactly_the_stale_entries_and_nothing_live(redis: Redis, logs: io.StringIO) -> None:
    settings = jobs_settings()
    queue = JobQueue(redis, settings)
    queued, _ = await queue.enqueue("acme", "diagnostics.ping", {}, defer_s=3600, idempotency="kept")
    await redis.zadd(index_key("acme"), {"finished-job": 1, "gone-1": 2, "gone-2": 3})
    await redis.set(RESULT_PREFIX + "finished-job", b"{}")
    await redis.zadd(index_key("globex"), {"gone-3": 1})
    gone_with_ttl = idempotency_key("acme", "expiring")
    await redis.set(gone_with_ttl, json.dumps({"job_id": "gone-1", "fingerprint": ""}), ex=600)
    gone_forever = idempotency_key("acme", "persisted")
    await redis.set(gone_forever, json.dumps({"job_id": "gone-2", "fingerprint": ""}))
    live_forever = idempotency_key("acme", "persisted-live")
    await redis.set(live_forever, json.dumps({"job_id": queued.id, "fingerprint": ""}))
    unreadable = idempotency_key("globex", "garbage")
    await redis.set(unreadable, b"not json")
    await redis.sadd(WORKERS_KEY, "alive", "dead")  # type: ignore[misc]
    await redis.set(worker_key("alive"), b"{}", ex=600)

    job = await run_task(settings.require_redis().url, "maintenance.cleanup")

    assert job.outcome == "complete"
    assert await redis.zrange(index_key("acme"), 0, -1) == [b"finished-job", queued.id.encode()]
    assert await redis.exists(index_key("globex")) == 0
    assert await redis.exists(gone_forever, unreadable) == 0
    assert await redis.ttl(gone_with_ttl) > 0  # its TTL still runs: a retry within it must not run the job again
    assert 0 < await redis.ttl(live_forever) <= 86_400
    assert await redis.ttl(idempotency_key("acme", "kept")) > 0
    assert await redis.exists(JOB_PREFIX + queued.id) == 1
    assert await redis.smembers(WORKERS_KEY) == {b"alive"}  # type: ignore[misc]
    [finding] = findings_logged(logs, "cleanup")
    assert finding["level"] == "info"
    removed = {key: finding[key] for key in finding if key.endswith(("_removed", "_given_ttl"))}
    assert removed == {
        "index_entries_removed": 3,
        "idempotency_records_removed": 2,
        "idempotency_records_given_ttl": 1,
        "worker_ids_removed": 1,
    }
    samples = await fleet_samples(settings.require_redis().url)
    assert value(samples, "maintenance_cleanup_removed", kind="index_entries") == 3
    assert value(samples, "maintenance_cleanup_removed", kind="worker_ids") == 1


async def test_cleanup_does_a_bounded_amount_per_run_and_the_next_run_goes_on(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "SCAN_CALLS_MAX", 1)
    monkeypatch.setattr(cleanup, "SCAN_COUNT", 10)
    monkeypatch.setattr(cleanup, "INDEX_ENTRIES_MAX", 50)
    for tenant in range(60):
        await redis.zadd(index_key(f"t{tenant}"), {f"gone-{tenant}": 1})
    await redis.zadd(index_key("big"), {f"gone-big-{i}": i for i in range(120)})

    runs: list[cleanup.CleanupReport] = []
    while await redis.keys("jobs:index:*") and len(runs) < 100:
        runs.append(await cleanup.clean_up(redis))

    assert await redis.keys("jobs:index:*") == []
    assert sum(run.index_entries_removed for run in runs) == 180
    assert max(run.index_entries_removed for run in runs) <= 50
    assert len(runs) > 4  # each run stopped at its bounds; the saved cursor carried the next one on


async def test_tenants_cannot_enqueue_maintenance_tasks(client: Client, api_key: str) -> None:
    response = await client.post("/v1/jobs", json={"task": "maintenance.slowlog", "args": {}}, headers=auth(api_key))

    assert response.status == 422
    assert (await response.json())["errors"] == {"task": ["unknown task"]}

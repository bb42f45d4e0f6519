"""Real processes serve their metrics on METRICS_PORT without a token, as Fly's scraper reads them."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

from redis.asyncio import Redis

from jobs.cron_store import CronStore
from jobs.queue import JobQueue
from tests.conftest import make_settings
from tests.jobs.cron_worker import SCHEDULES
from tests.jobs.test_processes import live_ids, start_worker, worker_env
from tests.processes import Proc, run_service
from tests.prometheus import Samples, names, parse, value
from tests.servers import RedisServer, free_port

TOKEN = "metrics-token-for-tests"
FLY_SCRAPER = {"Fly-Client-IP": "203.0.113.9"}  # a caller outside loopback, as Fly's proxy names it


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def scrape_port(port: int, timeout_s: float = 30.0) -> Samples:
    """``GET /metrics`` on the metrics port with no token, waiting for the port to open."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = get(f"http://127.0.0.1:{port}/metrics", FLY_SCRAPER)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on the metrics port {port}"
            time.sleep(0.1)
            continue
        assert status == 200, body
        return parse(body)


async def info_calls(url: str) -> int:
    async with Redis.from_url(url) as redis:
        stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_info", {}).get("calls", 0))


async def test_web_process_serves_metrics_on_both_ports_and_reads_info_once_per_interval(
    private_redis: RedisServer,
) -> None:
    metrics_port = free_port()
    with run_service(
        "serve",
        REDIS_URL=private_redis.url,
        METRICS_PORT=str(metrics_port),
        METRICS_TOKEN=TOKEN,
        TRUST_PROXY_HEADERS="true",
        ENABLE_WORKER="false",
    ) as child:
        child.wait_healthy()
        before = await info_calls(private_redis.url)
        unlocked = scrape_port(metrics_port)
        public_status, public_body = child.get("/metrics")  # loopback: open
        refused, _ = child.get("/metrics", FLY_SCRAPER)  # from outside, no token: the public port's rule
        with_token, _ = child.get("/metrics", {**FLY_SCRAPER, "Authorization": f"Bearer {TOKEN}"})
        for _ in range(3):
            scrape_port(metrics_port)
            child.get("/metrics")
        reads = await info_calls(private_redis.url) - before - 1  # minus the first info_calls itself
        other_path, _ = get(f"http://127.0.0.1:{metrics_port}/health")
        code, _, output = child.stop()

    assert (public_status, refused, with_token) == (200, 401, 200)
    public = parse(public_body)
    assert names(unlocked) == names(public)
    for samples in (unlocked, public):
        assert value(samples, "fleet_metrics_up") == 1
        assert value(samples, "jobs_queue_depth", state="queued") == 0
        assert value(samples, "connection_pool_max_connections", pool="web") == 50
        assert value(samples, "redis_maxmemory_bytes") == 0
        assert "redis_commands_processed_total" in names(samples)
    assert reads == 1  # 8 scrapes of two ports within the cache's TTL: one INFO
    assert other_path == 404
    assert code == 0, output
    assert "metrics port listening" in output


async def test_worker_process_serves_its_job_runs_and_the_fleet_on_the_metrics_port(
    private_redis: RedisServer, procs: list[Proc], tmp_path: Path
) -> None:
    metrics_port = free_port()
    worker = start_worker(
        procs, tmp_path / "worker.log", REDIS_URL=private_redis.url, METRICS_PORT=str(metrics_port), ENABLE_CRON="false"
    )
    async with Redis.from_url(private_redis.url) as redis:
        await live_ids(redis, 1)  # its first heartbeat, before the first scrape caches the fleet
        scrape_port(metrics_port)
        queue = JobQueue(redis, make_settings(REDIS_URL=private_redis.url))
        queued, _ = await queue.enqueue("acme", "diagnostics.ping", {})
        deadline = time.monotonic() + 15
        while (view := await queue.get("acme", queued.id)) is None or view.status != "complete":
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.05)
    samples = scrape_port(metrics_port)
    code, _ = await worker.stop(timeout_s=10)
    assert code == 0, worker.output()

    assert value(samples, "job_runs_total", task="diagnostics.ping", outcome="complete") == 1
    assert value(samples, "job_run_duration_seconds_count", task="diagnostics.ping") == 1
    assert value(samples, "jobs_workers_live") == 1
    assert value(samples, "connection_pool_max_connections", pool="worker") == 15  # concurrency 10 + 5
    assert value(samples, "connection_pool_max_connections", pool="worker-wake") == 1
    assert value(samples, "fleet_metrics_up") == 1


async def test_worker_process_shows_cron_runs_as_jobs_and_by_cron_outcome(
    private_redis: RedisServer, procs: list[Proc], tmp_path: Path
) -> None:
    metrics_port = free_port()
    worker = Proc.python(
        ["-m", "tests.jobs.cron_worker", "tick"],  # diagnostics.ping every second
        tmp_path / "worker.log",
        worker_env(REDIS_URL=private_redis.url, METRICS_PORT=str(metrics_port)),
    )
    procs.append(worker)
    async with Redis.from_url(private_redis.url) as redis:
        store = CronStore(redis, SCHEDULES["tick"])
        deadline = time.monotonic() + 20
        while (await store.status(history=False))[0].runs_by_outcome["complete"] < 2:
            assert time.monotonic() < deadline, worker.output()
            await asyncio.sleep(0.1)
    samples = scrape_port(metrics_port)

    assert value(samples, "cron_runs_total", job="tick", outcome="complete") >= 2
    assert value(samples, "cron_runs_total", job="tick", outcome="failed") == 0
    assert value(samples, "cron_last_success_timestamp_seconds", job="tick") > 0
    assert value(samples, "job_runs_total", task="diagnostics.ping", outcome="complete") >= 2  # a cron run is a job

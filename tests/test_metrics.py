"""The process's metrics: connection pools, the fleet-wide values read from Redis, and the metrics port."""

from __future__ import annotations

import asyncio
import io
import json
import socket

import aiohttp
from redis.asyncio import Redis

from jobs.fleet_metrics import FleetMetrics
from jobs.queue import JobQueue
from service.metrics import Metrics, metrics_listener
from tests.conftest import make_settings
from tests.prometheus import parse, value
from tests.servers import free_port, new_redis_server, redis_url


async def command_calls(redis: Redis) -> dict[str, int]:
    """Calls of each command so far (a call of this is counted only by the next one)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def more(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The commands called between two ``command_calls``, without the first ``command_calls`` itself."""
    added = {name: count - before.get(name, 0) for name, count in after.items() if count > before.get(name, 0)}
    added["info"] -= 1
    return {name: count for name, count in added.items() if count}


async def test_pool_metrics_count_connections_in_use_and_idle() -> None:
    # redis-py keeps these counts in private attributes (_in_use_connections, _available_connections):
    # this test fails by name if an upgrade moves them.
    metrics = Metrics()
    client = Redis.from_url(redis_url(), max_connections=7)
    metrics.pools.track("web", client.connection_pool)
    try:
        await client.ping()
        held = await client.connection_pool.get_connection()
        try:
            while_held = parse(await metrics.scrape())
        finally:
            await client.connection_pool.release(held)
        released = parse(await metrics.scrape())
    finally:
        await client.aclose()

    assert value(while_held, "connection_pool_connections", pool="web", state="in_use") == 1
    assert value(while_held, "connection_pool_connections", pool="web", state="idle") == 0
    assert value(released, "connection_pool_connections", pool="web", state="in_use") == 0
    assert value(released, "connection_pool_connections", pool="web", state="idle") == 1
    assert value(released, "connection_pool_max_connections", pool="web") == 7


async def test_a_fleet_read_is_two_commands_shared_by_concurrent_scrapes_and_cached_for_its_ttl() -> None:
    server = new_redis_server()
    try:
        async with Redis.from_url(server.url) as redis:
            await JobQueue(redis, make_settings(REDIS_URL=server.url)).enqueue("acme", "diagnostics.ping", {})
            uncached, cached = Metrics(), Metrics()
            FleetMetrics(redis, cache_ttl_s=0).register(uncached)
            FleetMetrics(redis).register(cached)
            await uncached.scrape()  # loads the script
            before = await command_calls(redis)
            await uncached.scrape()
            one_read = more(await command_calls(redis), before)
            before = await command_calls(redis)
            scrapes = await asyncio.gather(*(uncached.scrape() for _ in range(5)))
            concurrent = more(await command_calls(redis), before)
            before = await command_calls(redis)
            scrapes += [await cached.scrape() for _ in range(4)]
            within_ttl = more(await command_calls(redis), before)
    finally:
        server.stop()

    # EVALSHA of fleet_metrics.lua and INFO; what the script itself reads is not a command of its own
    assert {name: count for name, count in one_read.items() if name in ("evalsha", "info")} == {"evalsha": 1, "info": 1}
    assert set(one_read) <= {"evalsha", "info", "zcount", "zrangebyscore", "exists", "smembers", "hgetall"}
    assert concurrent == one_read  # five scrapes at once wait for the same read
    assert within_ttl == one_read  # the first scrape reads; its read serves the next ones until the TTL runs out
    for text in scrapes:
        samples = parse(text)
        assert value(samples, "jobs_queue_depth", state="queued") == 1
        assert value(samples, "fleet_metrics_up") == 1
        assert value(samples, "redis_maxmemory_bytes") == 0


async def test_a_scrape_on_a_hung_redis_answers_with_the_last_values_and_up_0() -> None:
    server = new_redis_server()
    redis = Redis.from_url(server.url, socket_timeout=30)
    metrics = Metrics()
    fleet = FleetMetrics(redis, cache_ttl_s=0)
    fleet.register(metrics)
    try:
        healthy = parse(await metrics.scrape())
        server.pause()
        try:
            hung = parse(await asyncio.wait_for(metrics.scrape(), timeout=10))
            await fleet.close()
        finally:
            server.resume()
    finally:
        await redis.aclose()
        server.stop()

    assert value(healthy, "fleet_metrics_up") == 1
    assert value(hung, "fleet_metrics_up") == 0
    assert value(hung, "jobs_workers_live") == value(healthy, "jobs_workers_live") == 0  # the last known value
    assert value(hung, "redis_used_memory_bytes") == value(healthy, "redis_used_memory_bytes")


async def test_metrics_port_serves_only_get_metrics_without_a_token() -> None:
    metrics = Metrics()
    metrics.record_request("GET", "/health", 200, 0.001)
    port = free_port()
    async with metrics_listener(metrics, port, host="127.0.0.1"), aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = parse(await response.text())
        async with session.get(f"http://127.0.0.1:{port}/health") as other:
            assert other.status == 404
        async with session.post(f"http://127.0.0.1:{port}/metrics") as post:
            assert post.status == 405
    assert value(samples, "http_requests_total", method="GET", route="/health", status="200") == 1


async def test_a_taken_metrics_port_is_logged_and_the_process_runs_on(logs: io.StringIO) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with metrics_listener(Metrics(), port, host="127.0.0.1"):
            entered = True
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    [error] = [line for line in lines if line["event"].startswith("metrics port unavailable")]
    assert entered
    assert error["level"] == "error"
    assert error["port"] == port

"""Two web processes hammer two tenants: exactly ``capacity`` requests of each get through, no more.

On the main Redis, and on a three-primary Redis Cluster as ``RATE_LIMIT_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from service.auth import ApiKeyStore
from service.ratelimit.script import bucket_key
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.processes import Child
from tests.servers import free_port, redis_url, shared_cluster

CAPACITY = 60
REQUESTS_PER_PROCESS = 150
POLICIES = f"""
[plans.default]   # refills one token in 1,000 s: nothing during the test
"*" = [{{ name = "burst", capacity = {CAPACITY}, per_second = 0.001 }}]
[anonymous]
"*" = [{{ name = "address", capacity = 10, per_second = 1 }}]
"""


def _start_serve(port: int, policy_file: Path, limiter_redis: str | None) -> subprocess.Popen[bytes]:
    env = subprocess_env(
        REDIS_URL=redis_url(),
        **({"RATE_LIMIT_REDIS_URL": limiter_redis} if limiter_redis else {}),
        RATE_LIMITS_FILE=str(policy_file),
        PORT=str(port),
        HOST="127.0.0.1",
        # A deadline no busy test machine can miss: this test is about exactness, not fail-open.
        RATE_LIMIT_DEADLINE_MS="5000",
    )
    return subprocess.Popen(
        [PYTHON, "-m", "service", "serve"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


def neighbour_of(tenant: str, cluster_url: str | None) -> str:
    """Another tenant: on a cluster, one of another slot on the same primary (so both share its one call per turn)."""
    if cluster_url is None:
        return f"{tenant}-2"
    cluster = shared_cluster()
    owner = cluster.owner(key_slot(bucket_key(tenant, "burst").encode()))
    own_slot = key_slot(bucket_key(tenant, "burst").encode())
    n = 0
    while True:
        name = f"{tenant}-{n}"
        slot = key_slot(bucket_key(name, "burst").encode())
        if slot != own_slot and any(server is owner and slot in slots for server, slots in cluster.slot_map()):
            return name
        n += 1


@pytest.mark.parametrize("limiter_redis", ["main", "cluster"])
async def test_two_processes_admit_exactly_capacity_per_tenant(
    redis: Redis, tmp_path: Path, limiter_redis: str
) -> None:
    cluster_url = shared_cluster().url if limiter_redis == "cluster" else None
    tenants = ["hammered", neighbour_of("hammered", cluster_url)]
    keys = {tenant: await ApiKeyStore(redis).create(tenant) for tenant in tenants}
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    first, second = free_port(), free_port()
    while second == first:  # free_port closes its socket, so the same port can come back at once
        second = free_port()
    ports = [first, second]
    processes = [_start_serve(port, policy_file, cluster_url) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            await asyncio.to_thread(Child(process, port).wait_healthy, 15)
        connector = aiohttp.TCPConnector(limit=40)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def hit(port: int, tenant: str) -> tuple[str, int]:
                headers = {"X-API-Key": keys[tenant]}
                async with session.get(f"http://127.0.0.1:{port}/v1/anything", headers=headers) as r:
                    await r.read()
                    return tenant, r.status

            answers = await asyncio.gather(
                *(hit(port, tenant) for _ in range(REQUESTS_PER_PROCESS) for port in ports for tenant in tenants)
            )
            metrics = [await (await session.get(f"http://127.0.0.1:{port}/metrics")).text() for port in ports]
    finally:
        _stop(processes)

    assert all('outcome="fail_open"' not in text for text in metrics)
    for tenant in tenants:
        counted = Counter(status for who, status in answers if who == tenant)
        assert counted[404] == CAPACITY, tenant  # admitted by the limiter, then no such route
        assert counted[429] == 2 * REQUESTS_PER_PROCESS - CAPACITY
        assert set(counted) == {404, 429}
    bucket = bucket_key("hammered", "burst")
    if cluster_url is not None:  # the buckets live in the cluster, not in the main Redis
        cluster = shared_cluster()
        with cluster.client(cluster.owner(key_slot(bucket.encode()))) as node:
            assert node.exists(bucket)
    assert await redis.exists(bucket) == (cluster_url is None)

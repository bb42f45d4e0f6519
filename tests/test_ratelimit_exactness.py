"""Two web processes hammer one tenant: exactly ``capacity`` requests get through, no more."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from service.auth import ApiKeyStore
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.processes import Child
from tests.servers import free_port, redis_url

CAPACITY = 60
REQUESTS_PER_PROCESS = 150
POLICIES = f"""
[plans.default]   # refills one token in 1,000 s: nothing during the test
"*" = [{{ name = "burst", capacity = {CAPACITY}, per_second = 0.001 }}]
[anonymous]
"*" = [{{ name = "address", capacity = 10, per_second = 1 }}]
"""


def _start_serve(port: int, policy_file: Path) -> subprocess.Popen[bytes]:
    env = subprocess_env(
        REDIS_URL=redis_url(),
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


async def test_two_processes_admit_exactly_capacity_for_one_tenant(redis: Redis, tmp_path: Path) -> None:
    key = await ApiKeyStore(redis).create("hammered")
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    first, second = free_port(), free_port()
    while second == first:  # free_port closes its socket, so the same port can come back at once
        second = free_port()
    ports = [first, second]
    processes = [_start_serve(port, policy_file) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            await asyncio.to_thread(Child(process, port).wait_healthy, 15)
        connector = aiohttp.TCPConnector(limit=40)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def hit(port: int) -> int:
                async with session.get(f"http://127.0.0.1:{port}/v1/anything", headers={"X-API-Key": key}) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(hit(port) for _ in range(REQUESTS_PER_PROCESS) for port in ports))
            metrics = [await (await session.get(f"http://127.0.0.1:{port}/metrics")).text() for port in ports]
    finally:
        _stop(processes)

    assert all('outcome="fail_open"' not in text for text in metrics)
    counted = Counter(statuses)
    assert counted[404] == CAPACITY  # admitted by the limiter, then no such route
    assert counted[429] == 2 * REQUESTS_PER_PROCESS - CAPACITY
    assert set(counted) == {404, 429}

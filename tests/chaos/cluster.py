"""Two ``python -m service serve`` and two ``python -m jobs`` processes on one private Redis.

Every process logs JSON to a file of its own (a killed worker's file stays), so a scenario
can read what each said afterwards. Rate-limit policies are generous (the load must not be
limited) and come in two flavours: plan ``default`` fails open, plan ``strict`` fails closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from jobs.heartbeat import live_workers
from tests.conftest import PYTHON, subprocess_env
from tests.processes import Proc
from tests.servers import free_port

__all__ = ["Cluster", "Process"]

POLICIES = """
[plans.default]
"*" = [{ name = "burst", capacity = 1000000, per_second = 100000 }]
"POST /v1/jobs" = [{ name = "enqueue", capacity = 1000000, per_second = 100000 }]

[plans.strict]
"*" = [{ name = "burst", capacity = 1000000, per_second = 100000, on_redis_error = "closed" }]
"GET /v1/rate-limit" = [{ name = "status", capacity = 1000000, per_second = 100000, on_redis_error = "closed" }]

[anonymous]
"*" = [{ name = "address", capacity = 1000000, per_second = 100000 }]
"""

# Short leases and beats, so that a killed worker's jobs come back within seconds.
ENV = {
    "LOG_FORMAT": "json",
    "JOB_LEASE_S": "2",
    "JOB_GRACE_S": "0.5",
    "WORKER_HEARTBEAT_S": "1",
    "REDIS_TIMEOUT_S": "2",
    "RATE_LIMIT_DEADLINE_MS": "50",
    "METRICS_PORT": "0",
}


class Process(Proc):
    """One ``python ARGS`` of the cluster, named, its output in ``log``."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        super().__init__([PYTHON, *args], log, subprocess_env(**env))
        self.name = name
        self.port = int(env.get("PORT", 0))

    def events(self) -> Iterator[dict[str, Any]]:
        """The JSON log lines (other lines, such as a banner, are skipped)."""
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


class Cluster:
    """``webs`` and ``workers`` on ``redis_url``; ``admin_url`` reaches the same Redis directly."""

    def __init__(self, folder: Path, redis_url: str, admin_url: str | None = None, **env: str) -> None:
        self.folder = folder
        self.redis_url = redis_url
        self.admin_url = admin_url or redis_url
        policies = folder / "policies.toml"
        policies.write_text(POLICIES)
        self.env = {**ENV, "REDIS_URL": redis_url, "RATE_LIMITS_FILE": str(policies), **env}
        self.webs: list[Process] = []
        self.workers: list[Process] = []
        self.retired: list[Process] = []  # killed workers, kept for their logs
        self._started = 0

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{web.port}" for web in self.webs]

    def _start(self, name: str, args: list[str], **env: str) -> Process:
        self._started += 1
        return Process(name, args, self.folder / f"{self._started:03d}-{name}.log", {**self.env, **env})

    def start_worker(self) -> Process:
        worker = self._start("worker", ["-m", "jobs"])
        self.workers.append(worker)
        return worker

    async def start(self, webs: int = 2, workers: int = 2) -> None:
        for _ in range(webs):
            self.webs.append(self._start("web", ["-m", "service", "serve"], PORT=str(free_port()), HOST="127.0.0.1"))
        for _ in range(workers):
            self.start_worker()
        await self._healthy(webs, workers)

    async def _healthy(self, webs: int, workers: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session, Redis.from_url(self.admin_url) as admin:
            for base in self.bases:
                while True:
                    assert all(p.alive for p in self.webs), self.outputs()
                    try:
                        async with session.get(f"{base}/health") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    assert time.monotonic() < deadline, self.outputs()
                    await asyncio.sleep(0.1)
            while len(await live_workers(admin)) < workers:
                assert time.monotonic() < deadline, self.outputs()
                await asyncio.sleep(0.1)

    def kill_worker(self, index: int) -> Process:
        """SIGKILL one worker and start another in its place; the killed one's log is kept."""
        victim = self.workers[index]
        victim.kill()
        self.retired.append(victim)
        self.workers[index] = replacement = self._start("worker", ["-m", "jobs"])
        return replacement

    @property
    def processes(self) -> list[Process]:
        return [*self.webs, *self.workers]

    def all_workers(self) -> list[Process]:
        return [*self.retired, *self.workers]

    def stop(self) -> dict[str, int]:
        """SIGTERM every live process; their exit codes."""
        return {process.log.name: process.terminate() for process in self.processes}

    def kill_all(self) -> None:
        for process in self.processes:
            process.kill()

    def outputs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in [*self.processes, *self.retired])

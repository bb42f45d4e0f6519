"""Rotating the Redis password without downtime, the README's sequence against a local Redis.

Two web processes serve steady traffic on the old password; the new password is added with ACL,
the processes restart one at a time on the new URL (as `fly secrets set` rolls the machines), and
the old password is removed. Requests go only to processes in rotation, as Fly's proxy sends them:
a process leaves the rotation, finishes what it has, gets SIGTERM, and rejoins once healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from service.auth import ApiKeyStore
from tests.deploy_support import argv, fly_config, machine_env, procfile
from tests.policies import GENEROUS_POLICIES, policies_file
from tests.processes import Proc, wait_for_status
from tests.servers import RedisServer, free_port, new_redis_server

OLD = "old-password-2025"
NEW = "new-password-2026"
# /v1/rate-limit answers 503 when the limiter's 50 ms deadline passes, which a busy shared test
# machine causes now and then whatever the password; a password Redis refuses is a 503 all the same.
DEADLINE_MS = "1000"
LOADERS = 4
PAUSE_S = 0.02  # each loader: at most ~50 requests/s, ~200/s in all


def url(server: RedisServer, password: str) -> str:
    return server.url.replace("redis://", f"redis://default:{password}@")


@dataclass
class Web:
    proc: Proc
    port: int
    served: int = 0
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Router:
    """Fly's proxy, as far as this test needs it: requests go round-robin to the web processes in rotation."""

    key: str
    rotation: list[Web] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    _turn: Iterator[int] = field(default_factory=itertools.count)

    async def send(self, session: aiohttp.ClientSession) -> None:
        web = self.rotation[next(self._turn) % len(self.rotation)]
        web.in_flight += 1
        web.idle.clear()
        self.sent += 1
        try:
            async with session.get(
                f"http://127.0.0.1:{web.port}/v1/rate-limit", headers={"Authorization": f"Bearer {self.key}"}
            ) as response:
                if response.status == 200:
                    web.served += 1
                else:
                    self.failures.append(f"{web.port}: {response.status} {await response.text()}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(f"{web.port}: {exc!r}")
        finally:
            web.in_flight -= 1
            if not web.in_flight:
                web.idle.set()

    async def load(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.send(session)
            await asyncio.sleep(PAUSE_S)

    async def take_out(self, web: Web) -> None:
        """Route no new request to ``web`` and wait until it has answered the ones it has."""
        self.rotation.remove(web)
        if web.in_flight:
            await web.idle.wait()


async def accepts(server: RedisServer, password: str) -> bool:
    """Whether a new connection authenticates with ``password``."""
    client = Redis.from_url(url(server, password))
    try:
        return bool(await client.ping())
    except AuthenticationError:
        return False
    finally:
        await client.aclose()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    started = new_redis_server("--requirepass", OLD)
    yield started
    started.stop()


@contextlib.asynccontextmanager
async def steady_load(router: Router) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        loaders = [asyncio.create_task(router.load(session)) for _ in range(LOADERS)]
        try:
            yield
        finally:
            for loader in loaders:
                loader.cancel()
            for outcome in await asyncio.gather(*loaders, return_exceptions=True):
                if not isinstance(outcome, asyncio.CancelledError):
                    raise AssertionError("a loader stopped early") from outcome


async def serves(router: Router, web: Web, requests: int, timeout_s: float = 20.0) -> None:
    """Wait until ``web`` has answered ``requests`` more requests; stop at the first failed one."""
    target, deadline = web.served + requests, time.monotonic() + timeout_s
    while web.served < target:
        assert router.failures == []
        assert time.monotonic() < deadline, f"served {web.served} of {target}:\n{web.proc.output()}"
        await asyncio.sleep(0.01)


async def test_rotating_the_redis_password_fails_no_request(server: RedisServer, tmp_path: Path) -> None:
    kill_timeout_s = fly_config()["kill_timeout"]
    admin = Redis.from_url(url(server, OLD))
    router = Router(await ApiKeyStore(admin).create("acme"))
    # The load would empty the built-in plans' buckets; this test is about the password, not limits.
    policies = policies_file(tmp_path, GENEROUS_POLICIES)
    started: list[Proc] = []

    async def start_web(password: str, name: str) -> Web:
        port = free_port()
        env = machine_env(
            url(server, password), PORT=str(port), RATE_LIMIT_DEADLINE_MS=DEADLINE_MS, RATE_LIMITS_FILE=policies
        )
        web = Web(Proc(argv(procfile()["web"]), tmp_path / f"{name}.log", env), port)
        started.append(web.proc)
        async with aiohttp.ClientSession() as session:
            await wait_for_status(session, f"http://127.0.0.1:{port}/health", 200, web.proc)
        return web

    try:
        router.rotation = [await start_web(OLD, "web-0-old"), await start_web(OLD, "web-1-old")]
        async with steady_load(router):
            for web in router.rotation:
                await serves(router, web, 50)

            # 1. Both passwords work, for new connections too.
            await admin.execute_command("ACL", "SETUSER", "default", f">{NEW}")
            assert await accepts(server, OLD)
            assert await accepts(server, NEW)
            # 2. The secret changes: each machine restarts on the new URL, one at a time.
            for i, old in enumerate(list(router.rotation)):
                await router.take_out(old)
                code, _ = await old.proc.stop(timeout_s=kill_timeout_s)
                assert code == 0, old.proc.output()
                new = await start_web(NEW, f"web-{i}-new")
                router.rotation.append(new)
                await serves(router, new, 50)
            # 3. The old password goes.
            await admin.execute_command("ACL", "SETUSER", "default", f"<{OLD}")
            for web in router.rotation:
                await serves(router, web, 50)

        assert router.failures == []
        assert router.sent >= 400
        for web in router.rotation:
            code, _ = await web.proc.stop(timeout_s=kill_timeout_s)
            assert code == 0, web.proc.output()
    finally:
        await admin.aclose()
        for proc in started:
            proc.kill()

    assert not await accepts(server, OLD)
    assert await accepts(server, NEW)
    for proc in started:
        assert "Traceback" not in proc.output()
        assert OLD not in proc.output()
        assert NEW not in proc.output()

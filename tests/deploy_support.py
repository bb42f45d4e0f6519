"""What the deploy tests share: the deploy files as Fly reads them, and child processes to run them."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import ROOT
from tests.servers import free_port

FLY_TOML = ROOT / "fly.toml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"
REDIS_APP = ROOT / "deploy" / "redis"


def fly_config(path: Path = FLY_TOML) -> dict[str, Any]:
    """A fly.toml, parsed."""
    with path.open("rb") as handle:
        return tomllib.load(handle)


def procfile() -> dict[str, str]:
    """The Procfile's process types and their commands."""
    processes: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


def fly_env() -> dict[str, str]:
    """fly.toml's ``[env]``: what every machine gets besides its secrets."""
    return {name: str(value) for name, value in fly_config().get("env", {}).items()}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, list[str]]]:
    """A Dockerfile's instructions and their arguments, continuation lines joined."""
    text = path.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split()[0].upper(), shlex.split(line)[1:]) for line in lines]


def dockerfile_copy_sources(path: Path = DOCKERFILE) -> list[str]:
    """What a Dockerfile's COPY instructions take from the build context."""
    sources: list[str] = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "COPY":
            sources.extend(arg for arg in args[:-1] if not arg.startswith("--"))
    return sources


def argv(command: str) -> list[str]:
    """A Procfile command as the image runs it, with this interpreter as ``python``."""
    words = shlex.split(command)
    assert words[0] == "python", f"{command!r} does not start with python"
    return [sys.executable, *words[1:]]


class Proc:
    """A child process whose output goes to a file (no pipe to fill up); killed by ``kill`` if left running."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(list(args), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def exited(self, timeout_s: float) -> int:
        """Wait for the exit code; fail with the output if it takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s} s:\n{self.output()}")
            await asyncio.sleep(0.02)
        return self.popen.returncode

    async def stop(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM, as Fly's kill_signal; the exit code and the seconds it took."""
        started = time.monotonic()
        self.popen.terminate()
        code = await self.exited(timeout_s)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a deployed process: this one minus service settings and ``PYTHONPATH``, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "UPSTASH_REDIS_URL", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def machine_env(redis_url: str, **extra: str) -> dict[str, str]:
    """A Fly machine's environment: fly.toml's [env] and a REDIS_URL secret, on loopback ports of its own."""
    env = {**fly_env(), "REDIS_URL": redis_url, "HOST": "127.0.0.1", "METRICS_PORT": str(free_port())}
    return child_env(**{**env, **extra})


async def wait_for_status(
    session: aiohttp.ClientSession, url: str, status: int, proc: Proc, timeout_s: float = 30.0
) -> None:
    """Poll ``url`` until it answers ``status``; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        assert proc.popen.poll() is None, f"exited with {proc.popen.returncode}:\n{proc.output()}"
        try:
            async with session.get(url) as response:
                last = response.status
                if response.status == status:
                    return
        except aiohttp.ClientConnectionError as exc:
            last = exc
        assert time.monotonic() < deadline, f"{url} answered {last!r}, not {status}, for {timeout_s} s"
        await asyncio.sleep(0.05)


async def enqueue(
    session: aiohttp.ClientSession, base: str, key: str, task: str, args: dict[str, Any] | None = None
) -> str:
    """``POST /v1/jobs``; the job's URL."""
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{base}/v1/jobs", json={"task": task, "args": args or {}}, headers=headers) as response:
        assert response.status == 202, await response.text()
        return base + response.headers["Location"]


async def job(session: aiohttp.ClientSession, url: str, key: str) -> dict[str, Any]:
    """``GET /v1/jobs/{id}``."""
    async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def job_reaches(
    session: aiohttp.ClientSession, url: str, key: str, status: str, timeout_s: float
) -> dict[str, Any]:
    """Poll the job as a client would, within the default plan's limits (10 requests/s)."""
    deadline = time.monotonic() + timeout_s
    while (body := await job(session, url, key))["status"] != status:
        assert time.monotonic() < deadline, f"job still {body['status']} after {timeout_s} s, not {status}: {body}"
        await asyncio.sleep(0.2)
    return body

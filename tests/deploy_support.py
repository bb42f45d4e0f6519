"""What the deploy tests share: the deploy files as Fly reads them, and the environment of their processes."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import tomllib
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

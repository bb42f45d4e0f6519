"""A steady mixed load on the web processes, and a probe of ``/ready``, from the test's event loop.

Requests go out on a fixed schedule (not as fast as answers come back), round robin over
the web processes, so a slow answer does not slow the load down. Kinds:

- ``anon``: ``GET /v1/rate-limit`` without a key: only the limiter decides it (by client
  address, failing open), then 401. Its latency is the limiter's path.
- ``strict``: ``GET /v1/rate-limit`` as a tenant whose plan fails closed: 503 while the
  limiter cannot reach Redis.
- ``read``: ``GET /v1/jobs/{id}`` of a recent job: the limiter, then a Redis read.
- ``enqueue``: ``POST /v1/jobs`` of ``diagnostics.sleep``; a 202 acknowledges the job.
- ``health``: ``GET /health``, which touches no dependency: the control, what any request
  waits at that moment on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["Load", "ReadyProbe", "Sample"]

CLIENT_TIMEOUT_S = 30.0  # a request still unanswered by then counts as hung
# An odd number of entries over the two web processes, so that each gets every kind.
MIX = ("anon", "read", "enqueue", "health", "anon", "read", "enqueue", "health", "anon", "strict", "health")
UNKNOWN_JOB = "0" * 32


@dataclass(frozen=True)
class Sample:
    kind: str
    base: str  # the web process it went to
    sent_at: float  # monotonic
    latency_s: float
    status: int  # 0: no answer (connection refused or reset, or hung past CLIENT_TIMEOUT_S)
    retry_after: str | None = None
    problem: str | None = None  # the problem type's last segment
    job_id: str | None = None


@dataclass
class Load:
    """``rate_per_s`` requests a second for ``run``'s duration, as the tenants of ``open_key`` and ``strict_key``."""

    bases: list[str]
    open_key: str
    strict_key: str
    rate_per_s: float = 100.0
    job_s: float = 0.05
    samples: list[Sample] = field(default_factory=list)

    @property
    def acknowledged(self) -> list[str]:
        return [s.job_id for s in self.samples if s.kind == "enqueue" and s.status == 202 and s.job_id]

    async def run(self, duration_s: float) -> None:
        connector = aiohttp.TCPConnector(limit=300)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            kinds = itertools.cycle(MIX)
            bases = itertools.cycle(self.bases)
            for n in range(int(duration_s * self.rate_per_s)):
                await asyncio.sleep(max(0.0, started + n / self.rate_per_s - time.monotonic()))
                task = asyncio.ensure_future(self._one(session, next(bases), next(kinds)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending)

    async def _one(self, session: aiohttp.ClientSession, base: str, kind: str) -> None:
        method, path, key, body = self._request(kind)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        sent_at = time.monotonic()
        try:
            async with session.request(method, base + path, json=body, headers=headers) as response:
                answer = await _json(response)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            self.samples.append(Sample(kind, base, sent_at, time.monotonic() - sent_at, 0))
            return
        problem = (str(answer.get("type", "")).rsplit("/", 1)[-1] or None) if status >= 400 else None
        job_id = answer.get("id") if kind == "enqueue" and status == 202 else None
        latency_s = time.monotonic() - sent_at
        self.samples.append(Sample(kind, base, sent_at, latency_s, status, retry_after, problem, job_id))

    def _request(self, kind: str) -> tuple[str, str, str | None, dict[str, Any] | None]:
        if kind == "anon":
            return "GET", "/v1/rate-limit", None, None
        if kind == "health":
            return "GET", "/health", None, None
        if kind == "strict":
            return "GET", "/v1/rate-limit", self.strict_key, None
        if kind == "read":
            recent = self.acknowledged[-20:]
            job_id = recent[len(self.samples) % len(recent)] if recent else UNKNOWN_JOB
            return "GET", f"/v1/jobs/{job_id}", self.open_key, None
        return "POST", "/v1/jobs", self.open_key, {"task": "diagnostics.sleep", "args": {"seconds": self.job_s}}


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True)
class ReadyAnswer:
    sent_at: float
    base: str
    latency_s: float
    status: int
    redis: bool | None
    workers: bool | None


@dataclass
class ReadyProbe:
    """``GET /ready`` on every web process every ``every_s`` until ``stop``."""

    bases: list[str]
    every_s: float = 0.25
    answers: list[ReadyAnswer] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as session:
            while not self._stopped.is_set():
                await asyncio.gather(*(self._ask(session, base) for base in self.bases))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self.every_s)

    def stop(self) -> None:
        self._stopped.set()

    async def _ask(self, session: aiohttp.ClientSession, base: str) -> None:
        sent_at = time.monotonic()
        try:
            async with session.get(f"{base}/ready") as response:
                body = await _json(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            self.answers.append(ReadyAnswer(sent_at, base, time.monotonic() - sent_at, 0, None, None))
            return
        components = body.get("components", {})
        self.answers.append(
            ReadyAnswer(
                sent_at, base, time.monotonic() - sent_at, status, components.get("redis"), components.get("workers")
            )
        )


def between(samples: Iterable[Sample], start: float, end: float) -> list[Sample]:
    """The samples sent within ``[start, end]``."""
    return [s for s in samples if start <= s.sent_at <= end]

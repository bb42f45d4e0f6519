"""Enqueue, look up, abort and list jobs: what the web API does with the queue.

Jobs are arq jobs (``arq:job:<id>`` in the queue ``arq:queue``), written in arq's format
with JSON. A job's state is read from arq's own keys (``jobs.views``), and every request
reads it in one script call: ``read_job.lua`` for one job, ``job_page.lua`` for a page of
the list, and the enqueue (idempotent replay) and abort scripts answer it with their
outcome. A script call is one reply for redis-py to parse and one command for a metered
Redis to bill.

Each tenant has an index, ``jobs:index:<tenant>``, of its job ids by enqueue time (µs); it
proves ownership (another tenant's job is simply not found) and is how jobs are listed.
Its unfinished jobs are also in ``jobs:ready:<tenant>`` (``jobs.redis_keys``), the claim
order of its jobs, whose size is the tenant's count of unfinished jobs.

Quotas that protect the shared Redis: a job's arguments are at most ``JOB_ARGS_MAX_BYTES``
serialized (``ArgumentsTooLarge``), and a tenant has at most ``JOB_UNFINISHED_MAX``
unfinished jobs (queued, deferred or running; ``TooManyUnfinishedJobs``), checked inside
the enqueue script. Arguments are strict JSON: ``NaN`` and ``Infinity`` are refused.

Retention: a result is kept ``JOB_RETENTION_S`` (default 24 h) after the job ends; a job
that no worker starts within 24 h of its due time expires (arq's rule); index entries
are dropped once their job can no longer exist, and the index itself expires when its
tenant stops enqueueing. Idempotency keys live 24 h.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from arq.constants import expires_extra_ms
from arq.utils import timestamp_ms
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobs.redis_keys import (
    ABORT_KEY,
    IDEMPOTENCY_TTL_S,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    QUEUE_KEY,
    RESULT_PREFIX,
    RETRY_PREFIX,
    TENANTS_KEY,
    WAKE_KEY,
    WAKE_TOKENS_MAX,
    idempotency_key,
    index_key,
    ready_key,
)
from jobs.registry import EnqueueContext, InvalidArguments, Registry
from jobs.scripts import script_text
from jobs.serialization import iso_from_ms, job_payload, to_json
from jobs.tasks import TASKS
from jobs.views import STATE_KEY_PREFIXES, STATE_SIZE, STATUSES, JobView, Status, decode_cursor, encode_cursor, view_of
from service.script_calls import Framed, Script, ScriptCalls
from service.settings import Settings

__all__ = [
    "MAX_DEFER_S",
    "STATUSES",
    "ArgumentsTooLarge",
    "IdempotencyConflict",
    "JobQueue",
    "JobView",
    "TooManyUnfinishedJobs",
]

AbortOutcome = Literal["aborted", "running", "finished", "missing"]

MAX_DEFER_S = 86_400
# A filtered list examines at most _LIST_SCAN_MAX index entries per request, _LIST_BATCH per
# script call (each answers the states of the live ones among them).
_LIST_BATCH = 100
_LIST_SCAN_MAX = 1_000


class IdempotencyConflict(Exception):
    """The idempotency key was used for another request body."""


class ArgumentsTooLarge(Exception):
    """The job's arguments serialize to more than ``JOB_ARGS_MAX_BYTES``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the job's arguments are {size:,} bytes as JSON; the limit is {limit:,}")
        self.size = size
        self.limit = limit


class TooManyUnfinishedJobs(Exception):
    """The tenant already has ``JOB_UNFINISHED_MAX`` jobs queued, deferred or running."""

    def __init__(self, unfinished: int, limit: int) -> None:
        super().__init__(
            f"this tenant has {unfinished:,} unfinished jobs (queued, deferred or running); the limit is {limit:,}"
        )
        self.limit = limit


_ENQUEUE = Script(script_text("enqueue", include=["job_state", "wake"]))
_ENQUEUE_SHARED_KEYS = Framed(QUEUE_KEY, WAKE_KEY, TENANTS_KEY)
_ABORT = Script(script_text("abort", include=["job_state", "leave_queue"]))
_READ_JOB = Script(script_text("read_job", include=["job_state"]))
_PAGE = Script(script_text("job_page", include=["job_state"]))


class _JobIds:
    """Job ids: 128 random bits each, as 32 hex digits (a uuid4's ``.hex``, without the UUID object).

    From ``os.urandom`` 256 ids at a time: one ``getrandom`` system call per id was a
    measurable part of an enqueue. A child process forked with ids left in the parent's
    batch starts a batch of its own, so two processes never hand out the same id.
    """

    _BATCH = 256
    _WIDTH = 32  # hex digits per id

    def __init__(self) -> None:
        self._digits = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._digits, self._at = "", 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._digits):
            self._digits, at = os.urandom(self._BATCH * self._WIDTH // 2).hex(), 0
        self._at = at + self._WIDTH
        return self._digits[at : at + self._WIDTH]


_job_ids = _JobIds()


def _read_job_call(tenant: str, job_id: str) -> tuple[list[str], list[str]]:
    """``read_job.lua``'s keys and arguments for one job of ``tenant``."""
    keys = [
        index_key(tenant),
        RESULT_PREFIX + job_id,
        JOB_PREFIX + job_id,
        IN_PROGRESS_PREFIX + job_id,
        RETRY_PREFIX + job_id,
        QUEUE_KEY,
    ]
    return keys, [job_id]


def _fingerprint(task: str, args: Mapping[str, Any], defer_s: float) -> str:
    canonical = json.dumps({"task": task, "args": args, "defer_seconds": defer_s}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _state_of(reply: Sequence[Any], at: int) -> Sequence[bytes | None] | None:
    """The state (``jobs.views``) that starts at ``reply[at]``, or ``None`` when the reply ends before it."""
    return reply[at : at + STATE_SIZE] if len(reply) >= at + STATE_SIZE else None


class JobQueue:
    """The web process's handle on the jobs of every tenant.

    ``redis`` sends what must run at most once (enqueue, abort): a client without retries.
    ``reads`` (default ``redis``) sends the reads, which are safe to send again; on a pool
    of their own they never wait behind, or crowd out, the calls that must not be.
    The scripts go through ``ScriptCalls`` on those clients' pools: the calls of one loop
    turn share one round trip. ``close()`` waits for the calls in flight.
    """

    def __init__(
        self, redis: Redis, settings: Settings, registry: Registry = TASKS, *, reads: Redis | None = None
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._registry = registry
        self._calls = ScriptCalls(redis.connection_pool, timeout_s=settings.redis_timeout_s)
        # An index entry outlives every state its job can be in: deferred, then pending for
        # arq's expiry window, then its result's retention.
        self._index_horizon_ms = MAX_DEFER_S * 1000 + expires_extra_ms + self._retention_ms
        self._enqueue_constants = Framed(
            self._index_horizon_ms // 1000,
            settings.job_unfinished_max,
            IDEMPOTENCY_TTL_S,
            WAKE_TOKENS_MAX,
            *STATE_KEY_PREFIXES,
        )
        self._reads = (
            self._calls if reads is None else ScriptCalls(reads.connection_pool, timeout_s=settings.redis_timeout_s)
        )

    async def close(self) -> None:
        await self._calls.close()
        await self._reads.close()

    @property
    def _retention_ms(self) -> int:
        return self._settings.job_retention_s * 1000

    async def enqueue(
        self,
        tenant: str,
        task: str,
        args: Mapping[str, Any],
        *,
        defer_s: float = 0.0,
        idempotency: str | None = None,
    ) -> tuple[JobView, bool]:
        """Validate and enqueue; return the job and whether it is new (False: an idempotent replay).

        Raises ``UnknownTask``, ``InvalidArguments``, ``ArgumentsTooLarge``, ``IdempotencyConflict``
        or ``TooManyUnfinishedJobs``.
        """
        args_json = self._args_json(args)
        await self._registry.validate(task, args, EnqueueContext(tenant, self._settings, self._redis))
        job_id = _job_ids.next()
        now_us = time.time_ns() // 1000
        now_ms = now_us // 1000
        due_ms = now_ms + round(defer_s * 1000)
        payload = job_payload(task, args_json, now_ms)
        fingerprint = _fingerprint(task, args, defer_s) if idempotency else ""
        record = json.dumps({"job_id": job_id, "fingerprint": fingerprint}) if idempotency else ""
        reply = await self._calls.call(
            _ENQUEUE,
            [
                JOB_PREFIX + job_id,
                index_key(tenant),
                idempotency_key(tenant, idempotency) if idempotency else index_key(tenant),
                ready_key(tenant),
                _ENQUEUE_SHARED_KEYS,
            ],
            [
                job_id,
                payload,
                due_ms,
                due_ms - now_ms + expires_extra_ms,
                now_us,
                now_us - self._index_horizon_ms * 1000,
                record,
                tenant,
                self._enqueue_constants,
            ],
        )
        if int(reply[0]) == 2:
            raise TooManyUnfinishedJobs(int(reply[1]), self._settings.job_unfinished_max)
        if int(reply[0]) == 0:
            existing = json.loads(reply[1])
            if existing["fingerprint"] != fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
            state = _state_of(reply, 2)
            view = view_of(existing["job_id"], state, timestamp_ms()) if state is not None else None
            if view is None:
                raise IdempotencyConflict("the job of this Idempotency-Key no longer exists")
            return view, False
        status: Status = "deferred" if due_ms > now_ms else "queued"
        return JobView(job_id, task, status, 0, iso_from_ms(now_ms)), True

    def _args_json(self, args: Mapping[str, Any]) -> bytes:
        """``args`` as the job stores them; refused when not strict JSON or larger than ``JOB_ARGS_MAX_BYTES``."""
        try:
            encoded = to_json(args)
        except (TypeError, ValueError, RecursionError):
            # ValueError: NaN or Infinity; RecursionError: nested deeper than any real payload.
            raise InvalidArguments(
                {"_schema": ["arguments must be strict JSON: no NaN or Infinity, not nested hundreds of levels deep"]}
            ) from None
        if len(encoded) > self._settings.job_args_max_bytes:
            raise ArgumentsTooLarge(len(encoded), self._settings.job_args_max_bytes)
        return encoded

    async def unfinished(self, tenant: str) -> int:
        """How many of the tenant's jobs are queued, deferred or running (what its cap counts)."""
        return int(await self._redis.zcard(ready_key(tenant)))

    async def get(self, tenant: str, job_id: str, *, ahead: asyncio.Future[Any] | None = None) -> JobView | None:
        """The job, or ``None`` when it is not this tenant's or no longer exists.

        ``ahead``: the reply of ``read_command`` sent already (with the rate limiter's
        decision); when that is an error (it did not come back, ``NOSCRIPT``, ...), the job
        is read here.
        """
        state = None if ahead is None else await ahead
        if state is None or isinstance(state, RedisError):
            state = await self._reads.call(_READ_JOB, *_read_job_call(tenant, job_id), idempotent=True)
        return view_of(job_id, state, timestamp_ms()) if state else None

    def read_command(self, tenant: str, job_id: str) -> bytes:
        """What ``get`` sends, framed, for a caller that sends it (``get(..., ahead=...)`` takes its reply)."""
        return _READ_JOB.frame(*_read_job_call(tenant, job_id))

    async def abort(self, tenant: str, job_id: str) -> tuple[AbortOutcome, JobView | None]:
        """Abort the job: ``aborted`` (it had not started), ``running`` (its worker will
        cancel it), ``finished`` (too late) or ``missing``; with the job as it is now after
        ``aborted`` and ``running``."""
        reply = await self._calls.call(
            _ABORT,
            [
                index_key(tenant),
                JOB_PREFIX + job_id,
                QUEUE_KEY,
                IN_PROGRESS_PREFIX + job_id,
                RESULT_PREFIX + job_id,
                ABORT_KEY,
                RETRY_PREFIX + job_id,
                ready_key(tenant),
                TENANTS_KEY,
            ],
            [job_id, timestamp_ms(), self._retention_ms, QUEUE_KEY, tenant],
        )
        outcome = reply[0].decode()
        assert outcome in ("aborted", "running", "finished", "missing"), outcome
        state = _state_of(reply, 1)
        return outcome, view_of(job_id, state, timestamp_ms()) if state is not None else None

    async def list_jobs(
        self, tenant: str, *, status: Status | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[JobView], str | None]:
        """The tenant's jobs, newest first, and the cursor of the next page (``None`` at the end).

        One script call without ``status``. With it, at most ``_LIST_SCAN_MAX`` index entries
        are examined per call, ``_LIST_BATCH`` per script call; the cursor then continues from
        the last one examined. ``ValueError`` for a bad cursor.
        """
        after = decode_cursor(cursor) if cursor is not None else None
        found: list[JobView] = []
        scanned = 0
        while True:
            # Without a status every live job is shown: one call asks for the page itself.
            want, scan = (limit, _LIST_SCAN_MAX) if status is None else (_LIST_BATCH, _LIST_BATCH)
            more, last, jobs = await self._read_page(tenant, after, want, scan)
            for i, (score, view) in enumerate(jobs):
                if status is None or view.status == status:
                    found.append(view)
                    if len(found) == limit:
                        return found, encode_cursor(score, view.id) if more or i + 1 < len(jobs) else None
            scanned += scan  # a page short of `scan` examined is the index's last
            if not more or last is None:
                return found, None
            if scanned >= _LIST_SCAN_MAX:
                return found, encode_cursor(*last)
            after = last

    async def _read_page(
        self, tenant: str, after: tuple[int, str] | None, want: int, scan: int
    ) -> tuple[bool, tuple[int, str] | None, list[tuple[int, JobView]]]:
        """``job_page.lua`` from ``after`` (a cursor's score and id): whether entries follow the
        last one examined, that entry, and the live jobs among those examined."""
        newest, after_id = after if after is not None else ("+inf", "")
        reply = await self._reads.call(
            _PAGE,
            [index_key(tenant), QUEUE_KEY],
            [newest, after_id, want, scan, *STATE_KEY_PREFIXES],
            idempotent=True,
        )
        now_ms = timestamp_ms()
        jobs: list[tuple[int, JobView]] = []
        for at in range(3, len(reply), 2 + STATE_SIZE):
            view = view_of(reply[at].decode(), reply[at + 2 : at + 2 + STATE_SIZE], now_ms)
            if view is not None:
                jobs.append((int(float(reply[at + 1])), view))
        last = (int(float(reply[1])), reply[2].decode()) if reply[2] else None
        return bool(int(reply[0])), last, jobs

"""Enqueue, look up, abort and list jobs: what the web API does with the queue.

Jobs are arq jobs (``arq:job:<id>`` in the queue ``arq:queue``), written in arq's format
with JSON. A job's state is read from arq's own keys, so it is never a copy that could
disagree with what the workers do:

- ``arq:result:<id>`` exists: ``complete``, ``failed`` or ``aborted``;
- ``arq:in-progress:<id>`` exists (a worker's lease): ``in_progress``;
- otherwise the job's due time in ``arq:queue``: ``deferred`` if it is in the future,
  else ``queued``.

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

import base64
import binascii
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from arq.constants import expires_extra_ms
from arq.jobs import deserialize_job, deserialize_result, serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import Redis

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
from jobs.scripts import load_script
from jobs.serialization import ABORTED, deserialize, iso, iso_from_ms, serialize, stored_error, to_json
from jobs.tasks import TASKS
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

Status = Literal["queued", "deferred", "in_progress", "complete", "failed", "aborted"]
STATUSES: tuple[Status, ...] = ("queued", "deferred", "in_progress", "complete", "failed", "aborted")
AbortOutcome = Literal["aborted", "running", "finished", "missing"]

MAX_DEFER_S = 86_400
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


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it."""

    id: str
    task: str
    status: Status
    tries: int
    enqueued_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: Any = None
    error: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "status": self.status,
            "tries": self.tries,
            "enqueued_at": self.enqueued_at,
        }
        if self.started_at is not None:
            body["started_at"] = self.started_at
        if self.finished_at is not None:
            body["finished_at"] = self.finished_at
        if self.status == "complete":
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body


def _fingerprint(task: str, args: Mapping[str, Any], defer_s: float) -> str:
    canonical = json.dumps({"task": task, "args": args, "defer_seconds": defer_s}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _int(raw: bytes | None) -> int:
    return int(raw) if raw else 0


def _deserialize_result(raw: bytes) -> dict[str, Any]:
    """Our deserializer for arq's ``deserialize_result``: a job aborted before it started
    (``abort.lua``) has no start time, which arq's result records as 0 (the epoch)."""
    data = deserialize(raw)
    data["st"] = data.get("st") or 0
    return data


def _finished_view(job_id: str, result: bytes) -> JobView:
    outcome = deserialize_result(result, deserializer=_deserialize_result)
    common: dict[str, Any] = {
        "id": job_id,
        "task": outcome.function,
        "tries": int(outcome.job_try or 0),
        "enqueued_at": iso(outcome.enqueue_time),
        "started_at": iso(outcome.start_time) if outcome.start_time.timestamp() > 0 else None,
        "finished_at": iso(outcome.finish_time),
    }
    if outcome.success:
        return JobView(status="complete", result=outcome.result, **common)
    error = stored_error(outcome.result)
    return JobView(status="aborted" if error["type"] == ABORTED else "failed", error=error, **common)


def _view(
    job_id: str,
    result: bytes | None,
    job: bytes | None,
    in_progress: bytes | None,
    score: float | None,
    retry: bytes | None,
    now_ms: int,
) -> JobView | None:
    if result is not None:
        return _finished_view(job_id, result)
    if job is None:
        return None
    queued = deserialize_job(job, deserializer=deserialize)
    common: dict[str, Any] = {
        "id": job_id,
        "task": queued.function,
        "tries": _int(retry),
        "enqueued_at": iso(queued.enqueue_time),
    }
    if in_progress is not None:
        started = in_progress.split(b":", 1)[0]  # "<started ms>:<worker id>" (claim.lua)
        started_ms = int(started) if started.isdigit() and int(started) > 1 else None
        return JobView(status="in_progress", started_at=iso_from_ms(started_ms) if started_ms else None, **common)
    if score is not None and score > now_ms:
        return JobView(status="deferred", **common)
    return JobView(status="queued", **common)


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{int(score)}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``ValueError`` for a cursor this API did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, job_id = text.partition(":")
        if not job_id:
            raise ValueError
        return int(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor from this API") from None


class JobQueue:
    """The web process's handle on the jobs of every tenant."""

    def __init__(self, redis: Redis, settings: Settings, registry: Registry = TASKS) -> None:
        self._redis = redis
        self._settings = settings
        self._registry = registry
        self._enqueue = load_script(redis, "enqueue")
        self._abort = load_script(redis, "abort")

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
        self._check_size(args)
        await self._registry.validate(task, args, EnqueueContext(tenant, self._settings, self._redis))
        job_id = uuid.uuid4().hex
        now_us = time.time_ns() // 1000
        now_ms = now_us // 1000
        due_ms = now_ms + round(defer_s * 1000)
        payload = serialize_job(task, (), dict(args), None, now_ms, serializer=serialize)
        fingerprint = _fingerprint(task, args, defer_s) if idempotency else ""
        record = json.dumps({"job_id": job_id, "fingerprint": fingerprint}) if idempotency else ""
        # An index entry outlives every state its job can be in: deferred, then pending for
        # arq's expiry window, then its result's retention.
        horizon_ms = MAX_DEFER_S * 1000 + expires_extra_ms + self._retention_ms
        reply = await self._enqueue(
            keys=[
                JOB_PREFIX + job_id,
                QUEUE_KEY,
                index_key(tenant),
                idempotency_key(tenant, idempotency) if idempotency else index_key(tenant),
                WAKE_KEY,
                ready_key(tenant),
                TENANTS_KEY,
            ],
            args=[
                job_id,
                payload,
                due_ms,
                due_ms - now_ms + expires_extra_ms,
                now_us,
                now_us - horizon_ms * 1000,
                horizon_ms // 1000,
                record,
                IDEMPOTENCY_TTL_S,
                WAKE_TOKENS_MAX,
                tenant,
                self._settings.job_unfinished_max,
            ],
        )
        if int(reply[0]) == 2:
            raise TooManyUnfinishedJobs(int(reply[1]), self._settings.job_unfinished_max)
        if int(reply[0]) == 0:
            existing = json.loads(reply[1])
            if existing["fingerprint"] != fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
            view = await self.get(tenant, existing["job_id"])
            if view is None:
                raise IdempotencyConflict("the job of this Idempotency-Key no longer exists")
            return view, False
        status: Status = "deferred" if due_ms > now_ms else "queued"
        return JobView(job_id, task, status, 0, iso_from_ms(now_ms)), True

    def _check_size(self, args: Mapping[str, Any]) -> None:
        """Refuse arguments that are not strict JSON or are larger than ``JOB_ARGS_MAX_BYTES`` serialized."""
        try:
            size = len(to_json(args))
        except (TypeError, ValueError, RecursionError):
            # ValueError: NaN or Infinity; RecursionError: nested deeper than any real payload.
            raise InvalidArguments(
                {"_schema": ["arguments must be strict JSON: no NaN or Infinity, not nested hundreds of levels deep"]}
            ) from None
        if size > self._settings.job_args_max_bytes:
            raise ArgumentsTooLarge(size, self._settings.job_args_max_bytes)

    async def unfinished(self, tenant: str) -> int:
        """How many of the tenant's jobs are queued, deferred or running (what its cap counts)."""
        return int(await self._redis.zcard(ready_key(tenant)))

    async def get(self, tenant: str, job_id: str) -> JobView | None:
        """The job, or ``None`` when it is not this tenant's or no longer exists."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(index_key(tenant), job_id)
            self._read(pipe, job_id)
            owned, result, job, in_progress, score, retry = await pipe.execute()
        if owned is None:
            return None
        return _view(job_id, result, job, in_progress, score, retry, timestamp_ms())

    @staticmethod
    def _read(pipe: Any, job_id: str) -> None:
        pipe.get(RESULT_PREFIX + job_id)
        pipe.get(JOB_PREFIX + job_id)
        pipe.get(IN_PROGRESS_PREFIX + job_id)
        pipe.zscore(QUEUE_KEY, job_id)
        pipe.get(RETRY_PREFIX + job_id)

    async def abort(self, tenant: str, job_id: str) -> AbortOutcome:
        """Abort the job: ``aborted`` (it had not started), ``running`` (its worker will
        cancel it), ``finished`` (too late) or ``missing``."""
        outcome = await self._abort(
            keys=[
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
            args=[job_id, timestamp_ms(), self._retention_ms, QUEUE_KEY, tenant],
        )
        value = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        assert value in ("aborted", "running", "finished", "missing"), value
        return value  # type: ignore[return-value]

    async def list_jobs(
        self, tenant: str, *, status: Status | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[JobView], str | None]:
        """The tenant's jobs, newest first, and the cursor of the next page (``None`` at the end).

        With ``status``, at most ``_LIST_SCAN_MAX`` index entries are examined per call; the
        cursor then continues from the last one examined. ``ValueError`` for a bad cursor.
        """
        index = index_key(tenant)
        after = decode_cursor(cursor) if cursor is not None else None
        found: list[JobView] = []
        last: tuple[float, str] | None = None
        scanned = 0
        offset = 0
        more = False
        while True:
            max_score: float | str = after[0] if after is not None else "+inf"
            rows: list[tuple[bytes, float]] = await self._redis.zrevrangebyscore(
                index, max_score, "-inf", start=offset, num=_LIST_BATCH, withscores=True
            )
            end_of_index = len(rows) < _LIST_BATCH
            # Entries sharing the cursor's score come in descending id order: skip those
            # at or before the cursor.
            fresh = [
                (member.decode(), score)
                for member, score in rows
                if after is None or score < after[0] or member.decode() < after[1]
            ]
            if not fresh:
                if end_of_index:
                    break
                offset += len(rows)  # a run of entries with the cursor's very score
                continue
            offset = 0
            views = await self._views([job_id for job_id, _ in fresh])
            stale = []
            for (job_id, score), view in zip(fresh, views, strict=True):
                scanned += 1
                last = (score, job_id)
                if view is None:
                    stale.append(job_id)
                elif status is None or view.status == status:
                    found.append(view)
                    if len(found) == limit:
                        break
            if stale:
                await self._redis.zrem(index, *stale)
            if len(found) == limit or scanned >= _LIST_SCAN_MAX:
                more = not (end_of_index and last == (fresh[-1][1], fresh[-1][0]))
                break
            if end_of_index:
                break
            after = (int(fresh[-1][1]), fresh[-1][0])
        return found, encode_cursor(*last) if more and last is not None else None

    async def _views(self, job_ids: list[str]) -> list[JobView | None]:
        if not job_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._read(pipe, job_id)
            replies = await pipe.execute()
        now_ms = timestamp_ms()
        views = []
        for i, job_id in enumerate(job_ids):
            result, job, in_progress, score, retry = replies[i * 5 : i * 5 + 5]
            views.append(_view(job_id, result, job, in_progress, score, retry, now_ms))
        return views

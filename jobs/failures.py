"""The latest failed tries of tenants' jobs, and jobs finished per minute: what the dashboard shows of the work.

Both are written by ``finish.lua`` in the call that records each end, so they cost the
worker no round trip (keys in ``jobs.redis_keys``):

- ``jobs:minute:<Unix minute>``, a hash: jobs ``complete``, ``failed``, ``retried`` (a try
  failed, another will come) and ``aborted`` that minute, fleet-wide; each expires
  ``MINUTE_STATS_TTL_S`` after its last write.
- ``jobs:failures``, a list, newest first, of the last ``FAILURES_KEPT`` failed tries: the
  record the worker builds (``failed_try``) with the job's stored payload added (its
  arguments, so that an operator can enqueue it again; they are never shown).

A job that fails several tries has several records; ``recent`` keeps each job's latest.
Cron runs are not listed: their history is cron's own (``jobs.cron_store``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from jobs.redis_keys import FAILURES_KEY
from jobs.serialization import iso_from_ms

__all__ = ["ERROR_MESSAGE_MAX", "FailedTry", "failed_try", "latest", "recent"]

ERROR_MESSAGE_MAX = 500  # characters of an error message kept


@dataclass(frozen=True)
class FailedTry:
    """One failed try of a job, as recorded at its end."""

    job_id: str
    task: str
    tenant: str
    error: dict[str, str]
    try_number: int
    max_tries: int
    will_retry: bool  # another try is scheduled (False: the job has failed for good)
    at_ms: int
    args: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """What the dashboard shows: everything but the arguments."""
        return {
            "job_id": self.job_id,
            "task": self.task,
            "tenant": self.tenant,
            "error": self.error,
            "tries": self.try_number,
            "max_tries": self.max_tries,
            "will_retry": self.will_retry,
            "failed_at": iso_from_ms(self.at_ms),
        }


def failed_try(
    *,
    job_id: str,
    task: str,
    tenant: str,
    error: dict[str, str],
    try_number: int,
    max_tries: int,
    will_retry: bool,
    at_ms: int,
) -> str:
    """The record of a failed try as the worker hands it to ``finish.lua`` (which adds ``job``, the payload)."""
    message = error.get("message", "")
    return json.dumps(
        {
            "id": job_id,
            "task": task,
            "tenant": tenant,
            "error": {"type": error.get("type", "Error"), "message": message[:ERROR_MESSAGE_MAX]},
            "try": try_number,
            "max_tries": max_tries,
            "will_retry": will_retry,
            "at_ms": at_ms,
        },
        separators=(",", ":"),
    )


def _parsed(raw: bytes | str) -> FailedTry | None:
    try:
        record = json.loads(raw)
        payload = json.loads(record["job"]) if isinstance(record.get("job"), str) else {}
        return FailedTry(
            job_id=str(record["id"]),
            task=str(record["task"]),
            tenant=str(record["tenant"]),
            error={"type": str(record["error"]["type"]), "message": str(record["error"]["message"])},
            try_number=int(record["try"]),
            max_tries=int(record["max_tries"]),
            will_retry=bool(record["will_retry"]),
            at_ms=int(record["at_ms"]),
            args=dict(payload.get("k") or {}),
        )
    except (ValueError, KeyError, TypeError):  # written by another version of the code
        return None


def recent(records: list[bytes]) -> list[FailedTry]:
    """The latest failed try of each job in ``records`` (``jobs:failures``, newest first), newest first."""
    seen: set[str] = set()
    tries = []
    for raw in records:
        parsed = _parsed(raw)
        if parsed is not None and parsed.job_id not in seen:
            seen.add(parsed.job_id)
            tries.append(parsed)
    return tries


async def latest(redis: Redis, job_id: str) -> FailedTry | None:
    """The latest failed try of ``job_id`` still listed, or None."""
    records: list[bytes] = await redis.lrange(FAILURES_KEY, 0, -1)  # type: ignore[misc]  # redis-py's union type
    return next((failed for failed in recent(records) if failed.job_id == job_id), None)

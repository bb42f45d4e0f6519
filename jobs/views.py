"""A job as the jobs API shows it, made from the state the read scripts answer (``job_state.lua``).

A job's status is derived from arq's own keys, so it is never a copy that could disagree
with what the workers do:

- ``arq:result:<id>`` exists: ``complete``, ``failed`` or ``aborted``;
- ``arq:in-progress:<id>`` exists (a worker's lease): ``in_progress``;
- otherwise the job's due time in ``arq:queue``: ``deferred`` if it is in the future,
  else ``queued``.

The scripts answer a state as five values, ``None`` for each key that is absent:
``[result, job, lease, due ms, tries]``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from arq.jobs import DeserializationError

from jobs.redis_keys import IN_PROGRESS_PREFIX, JOB_PREFIX, RESULT_PREFIX, RETRY_PREFIX
from jobs.serialization import ABORTED, deserialize, iso_from_ms, stored_error

__all__ = [
    "STATE_KEY_PREFIXES",
    "STATE_SIZE",
    "STATUSES",
    "JobView",
    "Status",
    "decode_cursor",
    "encode_cursor",
    "view_of",
]

Status = Literal["queued", "deferred", "in_progress", "complete", "failed", "aborted"]
STATUSES: tuple[Status, ...] = ("queued", "deferred", "in_progress", "complete", "failed", "aborted")

# How many values a state is, and the key prefixes of job_state.lua's keys, in the order the
# scripts that build those keys from a job id take them (result, job, lease, tries).
STATE_SIZE = 5
STATE_KEY_PREFIXES = (RESULT_PREFIX, JOB_PREFIX, IN_PROGRESS_PREFIX, RETRY_PREFIX)


class JobView(NamedTuple):
    """A job as the API shows it.

    A named tuple, not a frozen dataclass: one is made per job a request shows (up to 100 a
    page), and a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (1.5 µs against 0.3 µs).
    """

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


_JOB_FIELDS = ("f", "et")
_RESULT_FIELDS = ("f", "et", "s", "ft")


def _record(raw: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """A job or result record as arq writes it with our serializer (``jobs.serialization``).

    Read here field by field rather than through arq's ``deserialize_job`` and
    ``deserialize_result``, which build datetimes that the view only formats again.
    ``fields`` must be there. The names are arq's (``tests/jobs/arq_contract.py`` pins
    them): ``f`` the task, ``t`` the try, ``et`` enqueued (ms), and for a result ``s``
    success, ``r`` the result or error, ``st`` started and ``ft`` finished (ms).
    """
    try:
        record = deserialize(raw)
    except ValueError as exc:
        raise DeserializationError("unable to deserialize job") from exc
    missing = [field for field in fields if field not in record]
    if missing:
        raise DeserializationError(f"unable to deserialize job: no {', '.join(missing)}")
    return record


def _finished_view(job_id: str, result: bytes) -> JobView:
    record = _record(result, _RESULT_FIELDS)
    started_ms = record.get("st") or 0  # a job aborted before it started (abort.lua) has none
    common: dict[str, Any] = {
        "id": job_id,
        "task": record["f"],
        "tries": int(record.get("t") or 0),
        "enqueued_at": iso_from_ms(record["et"]),
        "started_at": iso_from_ms(started_ms) if started_ms > 0 else None,
        "finished_at": iso_from_ms(record["ft"]),
    }
    if record["s"]:
        return JobView(status="complete", result=record.get("r"), **common)
    error = stored_error(record.get("r"))
    return JobView(status="aborted" if error["type"] == ABORTED else "failed", error=error, **common)


def view_of(job_id: str, state: Sequence[bytes | None], now_ms: int) -> JobView | None:
    """The job of a script's ``state`` (``STATE_SIZE`` values), or ``None`` when it is gone."""
    result, job, lease, due_ms, tries = state
    if result is not None:
        return _finished_view(job_id, result)
    if job is None:
        return None
    record = _record(job, _JOB_FIELDS)
    task: str = record["f"]
    enqueued_at = iso_from_ms(record["et"])
    tries_so_far = int(tries) if tries else 0
    if lease is not None:
        started = lease.split(b":", 1)[0]  # "<started ms>:<worker id>" (claim.lua)
        started_ms = int(started) if started.isdigit() and int(started) > 1 else None
        started_at = iso_from_ms(started_ms) if started_ms else None
        return JobView(job_id, task, "in_progress", tries_so_far, enqueued_at, started_at=started_at)
    status: Status = "deferred" if due_ms is not None and float(due_ms) > now_ms else "queued"
    return JobView(job_id, task, status, tries_so_far, enqueued_at)


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

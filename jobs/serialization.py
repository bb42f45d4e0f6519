"""JSON in and out for arq (never pickle): jobs, results, and errors as ``{type, message}``.

The same two functions are given to the web process's pool and to the worker, so a job
written by one is read by the other. A failure is stored as the error's type name and
message, which is what the jobs API shows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "ABORTED",
    "NOT_READ",
    "compact_json",
    "deserialize",
    "error_of",
    "from_json",
    "iso",
    "iso_from_ms",
    "job_payload",
    "read_fast",
    "serialize",
    "stored_error",
    "to_json",
]

# The error type of a job that was aborted (arq records it as a cancellation).
ABORTED = "JobAborted"

_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def error_of(exc: BaseException) -> dict[str, str]:
    """The stored form of a failure."""
    if isinstance(exc, asyncio.CancelledError):
        return {"type": ABORTED, "message": "the job was aborted"}
    return {"type": type(exc).__name__, "message": str(exc)}


def stored_error(value: Any) -> dict[str, str]:
    """A failure as a result holds it (``error_of``'s form), whatever an older writer left there."""
    if isinstance(value, dict) and "type" in value:
        return {"type": str(value["type"]), "message": str(value.get("message", ""))}
    return {"type": "JobError", "message": str(value)}


def _encode(value: Any) -> Any:
    if isinstance(value, BaseException):
        return error_of(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One encoder for every call: ``json.dumps`` with options builds a new one each time (half its cost
# on a small value). An encoder keeps no state between calls.
_ENCODER = json.JSONEncoder(default=_encode, separators=(",", ":"), allow_nan=False)
# Its C core, made once: ``JSONEncoder.iterencode`` makes one per call, which was two thirds of the
# cost of encoding a job's arguments. Without the circular-reference markers (a dict that an error
# midway would leave dirty for the next call), a value that contains itself ends in RecursionError.
_C_MAKE_ENCODER: Callable[..., Callable[[Any, int], list[str]]] | None = getattr(json.encoder, "c_make_encoder", None)
_ITERENCODE = (  # None on a Python without the _json accelerator
    None
    if _C_MAKE_ENCODER is None
    else _C_MAKE_ENCODER(None, _encode, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
)


def to_json(value: Any) -> bytes:
    """``value`` as compact, strict JSON: ``ValueError`` for NaN or Infinity, which no JSON reader accepts;
    ``RecursionError`` for a value that contains itself or is nested about a thousand levels deep."""
    if _ITERENCODE is None:
        return _ENCODER.encode(value).encode()
    return "".join(_ITERENCODE(value, 0)).encode()


# What ``read_fast`` returns for text it leaves to the standard library.
NOT_READ: Any = object()


def read_fast(raw: bytes) -> Any:
    """The value of JSON text as ``json.loads`` reads it, in a fifth of the time (orjson); ``NOT_READ`` when
    orjson could read it otherwise or not at all.

    orjson reads an integer past 64 bits as a float, losing digits, so text with a run of 19
    digits (the shortest that can be one) is not read here. Nor is text orjson refuses: what
    is not strict JSON (``NaN``, ``1e999``, a trailing comma), a lone surrogate, invalid UTF-8,
    nesting past 1,024 levels; the standard library reads it or says why not.
    """
    if _LONG_DIGITS.search(raw) is not None:
        return NOT_READ
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NOT_READ


def from_json(raw: bytes) -> Any:
    """The value of JSON text exactly as ``json.loads`` reads it, through ``read_fast`` when it can."""
    value = read_fast(raw)
    return json.loads(raw) if value is NOT_READ else value


def compact_json(value: Any) -> bytes:
    """A value made of JSON's types (one ``from_json`` gave) as compact JSON, in a tenth of ``json.dumps``'s time
    (orjson); integers past 64 bits, which orjson refuses, through the standard library."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def job_payload(task: str, args_json: bytes, enqueued_ms: int) -> bytes:
    """The job record arq's ``serialize_job`` writes with ``serialize`` (no try yet, keyword arguments only),
    around arguments already encoded by ``to_json``: the enqueue path encodes them once, to measure and to store."""
    name = json.encoder.encode_basestring_ascii(task).encode()  # what json.dumps writes for a string
    return b'{"t":null,"f":%b,"a":[],"k":%b,"et":%d}' % (name, args_json, enqueued_ms)


def serialize(data: dict[str, Any]) -> bytes:
    """arq's ``job_serializer``: a job or result as ``to_json`` writes it.

    A result (arq's record of a finished job: it has ``s`` and ``r``) keeps no copy of the
    job's arguments: the job record that held them is deleted when the result is written,
    and a second copy would double each job's memory for the result's whole retention.
    """
    if "s" in data and "r" in data:
        data = {**data, "a": [], "k": {}}
    return to_json(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq's ``job_deserializer``."""
    value = from_json(raw)
    if not isinstance(value, dict):
        raise ValueError("a job or result must be a JSON object")
    return value


def iso(moment: datetime) -> str:
    """An aware datetime as ISO 8601 UTC with milliseconds, e.g. ``2026-11-29T15:16:31.123Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_ms(ms: float) -> str:
    """An epoch time in ms as ``iso`` writes it (read per job by the jobs API: no datetime on the way)."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    """``iso_from_ms``'s date and time to the second: the jobs one tenant reads, and those enqueued in one second,
    share it, and ``strftime`` costs more than the rest of the conversion."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))

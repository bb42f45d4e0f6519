"""Pieces of the jobs system on their own: serialization, webhook rules, heartbeats."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, post_load, validates_schema
from redis.asyncio import Redis

from jobs import heartbeat
from jobs.queue import _job_ids
from jobs.redis_keys import WORKERS_KEY, worker_key
from jobs.registry import InvalidArguments, Task
from jobs.serialization import compact_json, deserialize, error_of, from_json, iso_from_ms, serialize, to_json
from jobs.webhook import _retry_after_s
from service.backoff import Backoff
from tests.conftest import ROOT


def test_failures_are_stored_as_type_and_message() -> None:
    assert error_of(ValueError("boom")) == {"type": "ValueError", "message": "boom"}
    assert error_of(asyncio.CancelledError()) == {"type": "JobAborted", "message": "the job was aborted"}
    raw = serialize({"r": KeyError("x"), "s": False})
    assert deserialize(raw) == {"r": {"type": "KeyError", "message": "'x'"}, "s": False, "a": [], "k": {}}


def test_a_stored_result_keeps_no_copy_of_the_jobs_arguments() -> None:
    raw = serialize({"f": "t.x", "a": [1], "k": {"payload": "x" * 1000}, "s": True, "r": {"ok": 1}})
    assert deserialize(raw) == {"f": "t.x", "a": [], "k": {}, "s": True, "r": {"ok": 1}}
    job = serialize({"f": "t.x", "a": [], "k": {"n": 1}, "t": None, "et": 1})
    assert deserialize(job)["k"] == {"n": 1}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_by_the_serializer(number: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        serialize({"k": {"x": number}})


def test_non_json_results_are_refused_by_the_serializer() -> None:
    with pytest.raises(TypeError):
        serialize({"r": object()})


# What a job's arguments or result can hold: JSON's types, integers of any size (Python's are unbounded).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_to_json_writes_what_the_standard_library_writes(value: object) -> None:
    assert to_json(value) == json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def test_to_json_refuses_a_value_that_contains_itself_and_then_writes_the_next_as_ever() -> None:
    inner: list[object] = [1]
    looped: list[object] = [inner, {"x": float("nan")}]
    with pytest.raises(ValueError, match="JSON compliant"):  # refused midway, after ``inner`` was written
        to_json(looped)
    assert to_json([inner, inner]) == b"[[1],[1]]"  # no memory of the refused call: nothing seen "twice"
    looped.append(looped)
    del looped[1]
    with pytest.raises(RecursionError):
        to_json(looped)
    assert to_json({"inner": inner}) == b'{"inner":[1]}'


@given(JSON_VALUES)
def test_the_fast_json_reader_and_writer_agree_with_the_standard_library(value: object) -> None:
    text = json.dumps(value).encode()
    read = from_json(text)
    assert read == json.loads(text)
    assert repr(read) == repr(json.loads(text))  # the same types too: 2**64 stays an int, never a float
    assert json.loads(compact_json(read)) == read


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30, -(10**19)])
def test_integers_past_64_bits_are_read_and_written_exactly(number: int) -> None:
    text = json.dumps({"n": number, "list": [number]}).encode()
    assert from_json(text) == {"n": number, "list": [number]}
    assert compact_json(from_json(text)) == json.dumps({"n": number, "list": [number]}, separators=(",", ":")).encode()


def test_text_the_fast_reader_refuses_is_read_or_refused_as_the_standard_library_does() -> None:
    assert from_json(b'"\\ud800"') == "\ud800"  # a lone surrogate, which orjson refuses
    with pytest.raises(json.JSONDecodeError):
        from_json(b'{"a": ')


def test_timestamps_are_iso_8601_utc() -> None:
    assert iso_from_ms(1764412800123) == "2025-11-29T10:40:00.123Z"


def test_no_pickle_in_service_or_jobs() -> None:
    for path in [*ROOT.glob("service/**/*.py"), *ROOT.glob("jobs/**/*.py")]:
        source = Path(path).read_text()
        assert "import pickle" not in source, path
        assert "from pickle" not in source, path


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert _retry_after_s("7") == 7.0
    assert _retry_after_s(None) is None
    assert _retry_after_s("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=30)
    parsed = _retry_after_s(format_datetime(later, usegmt=True))
    assert parsed is not None
    assert 25 <= parsed <= 31


async def test_live_workers_skips_and_forgets_workers_whose_heartbeat_expired(redis: Redis) -> None:
    now = time.time()
    for worker_id in ("w-alive", "w-dead"):
        beat = heartbeat.Beat(worker_id, "host", 1, now, now, 1.0, 0, 3, 1, 0)
        await heartbeat.write(redis, beat)
    await redis.delete(worker_key("w-dead"))  # what its TTL does to a killed worker

    [alive] = await heartbeat.live_workers(redis)
    assert alive["id"] == "w-alive"
    assert alive["complete"] == 3
    assert alive["beat_age_s"] >= 0
    assert await redis.smembers(WORKERS_KEY) == {b"w-alive"}  # type: ignore[misc]
    assert 0 < await redis.ttl(worker_key("w-alive")) <= 3


async def test_worker_whose_heartbeat_expired_comes_back_with_its_next_beat(redis: Redis) -> None:
    now = time.time()
    beat = heartbeat.Beat("w-stalled", "host", 1, now, now, 1.0, 0, 0, 0, 0)
    await heartbeat.write(redis, beat)
    await redis.delete(worker_key("w-stalled"))  # stalled past its TTL
    assert await heartbeat.live_workers(redis) == []  # and forgotten by a reader

    await heartbeat.write(redis, beat)
    assert [worker["id"] for worker in await heartbeat.live_workers(redis)] == ["w-stalled"]


class _Nothing(Schema):
    pass


class _NothingButAHook(Schema):
    @validates_schema
    def refuse(self, data: dict[str, Any], **kwargs: Any) -> None:
        raise ValidationError("never")


class _NothingButADefault(Schema):
    @post_load
    def stamp(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {**data, "stamped": True}


def _task(schema: Schema) -> Task:
    async def run(job: object) -> None:
        return None

    return Task("t", run, schema, timeout_s=1.0, max_tries=1, backoff=Backoff())


def test_a_schema_without_fields_or_hooks_loads_nothing_without_marshmallow() -> None:
    task = _task(_Nothing())
    assert task.takes_nothing
    assert task.load({}) == {}
    with pytest.raises(InvalidArguments) as refused:  # anything else still goes to the schema, which words it
        task.load({"x": 1})
    assert refused.value.errors == {"x": ["Unknown field."]}


@pytest.mark.parametrize("schema", [_NothingButAHook(), _NothingButADefault(), _Nothing(many=True)])
def test_a_schema_with_a_hook_or_many_loads_through_marshmallow(schema: Schema) -> None:
    task = _task(schema)
    assert not task.takes_nothing
    try:
        loaded: object = task.load({})
    except InvalidArguments as exc:
        loaded = exc.errors
    try:
        expected: object = schema.load({})
    except ValidationError as exc:
        expected = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    assert loaded == expected


def test_job_ids_are_32_hex_digits_and_a_forked_child_hands_out_its_own() -> None:
    ids = [_job_ids.next() for _ in range(1000)]  # several batches
    assert len(set(ids)) == len(ids)
    assert all(len(job_id) == 32 and int(job_id, 16) >= 0 for job_id in ids)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: the ids it would hand out next
        os.write(write, "".join(_job_ids.next() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        childs = pipe.read()
    parents = "".join(_job_ids.next() for _ in range(3))
    assert len(childs) == 96
    assert childs != parents

"""What ``/v1/jobs`` takes and answers: the schemas of its bodies, queries and jobs, and the quick
checks that load a plain request the way its schema would, without marshmallow (``operation``'s
``quick_check``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields, validate
from multidict import MultiMapping

from jobs.queue import MAX_DEFER_S, STATUSES
from jobs.registry import Registry, Task
from service.api.job_error import ErrorSchema
from service.app_keys import PLAIN_ENQUEUE, PLAIN_LIST
from service.openapi import TaggedUnion
from service.request_body import read_json

__all__ = [
    "CURSOR_MAX",
    "EnqueueHeadersSchema",
    "EnqueueSchema",
    "JobListSchema",
    "JobSchema",
    "ListQuerySchema",
    "enqueue_body",
    "enqueue_is_plain",
    "list_is_plain",
    "plain_enqueue",
    "plain_list_query",
]

# 1 to 255 printable ASCII characters. HTTP drops spaces at either end of a header value,
# so a key cannot begin or end with one: the server would see another key.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
CURSOR_MAX = 200


class JsonNumber(fields.Float):
    """A number as JSON writes it: marshmallow's ``Float`` would also take ``"5"`` and ``true``."""

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class EnqueueSchema(Schema):
    task = fields.String(required=True, metadata={"example": "diagnostics.ping"})
    args = fields.Dict(keys=fields.String(), load_default=dict, metadata={"example": {}})
    defer_seconds = JsonNumber(load_default=0.0, validate=validate.Range(min=0, max=MAX_DEFER_S))


class EnqueueHeadersSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # every header but this one is someone else's business

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=validate.Regexp(
            IDEMPOTENCY_KEY_PATTERN, error="must be 1 to 255 printable ASCII characters, without spaces at either end"
        ),
        metadata={"description": "A retry with the same key and body returns the same job for 24 h."},
    )


class JobSchema(Schema):
    id = fields.String(required=True)
    task = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    tries = fields.Integer(required=True)
    enqueued_at = fields.String(required=True, metadata={"format": "date-time"})
    started_at = fields.String(metadata={"format": "date-time"})
    finished_at = fields.String(metadata={"format": "date-time"})
    result = fields.Raw(allow_none=True)  # what the task returned: any JSON, null included
    error = fields.Nested(ErrorSchema)


LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX = 20, 100
_CURSOR_CHARACTERS = "[A-Za-z0-9_-]"  # what jobs.views.encode_cursor writes
_CURSOR = re.compile(rf"{_CURSOR_CHARACTERS}{{1,{CURSOR_MAX}}}")  # the schema's two checks at once


class ListQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    limit = fields.Integer(load_default=LIST_LIMIT_DEFAULT, validate=validate.Range(min=1, max=LIST_LIMIT_MAX))
    cursor = fields.String(
        validate=[validate.Length(min=1, max=CURSOR_MAX), validate.Regexp(rf"^{_CURSOR_CHARACTERS}+$")],
        metadata={"description": "The `next_cursor` of the previous page: opaque, only one this API handed out."},
    )


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next_cursor = fields.String(
        allow_none=True, required=True, metadata={"description": "null on the last page; else the next page's cursor"}
    )


def _enqueue_variant(task: Task) -> type[Schema]:
    """``EnqueueSchema`` narrowed to one task, for the document: its name and its arguments' schema."""
    words = re.split(r"[^A-Za-z0-9]+", task.name)
    name = "Enqueue" + "".join(word[:1].upper() + word[1:] for word in words) + "Schema"
    args_required = any(field.required for field in task.schema.fields.values())
    narrowed = {
        "task": fields.String(required=True, validate=validate.OneOf([task.name])),
        "args": fields.Nested(task.schema, required=args_required),
        "Meta": type("Meta", (), {"register": False}),  # one per app: not for marshmallow's registry by name
    }
    return cast(type[Schema], type(name, (EnqueueSchema,), narrowed))


def enqueue_body(registry: Registry) -> TaggedUnion:
    """The body of ``POST /v1/jobs`` for the tasks of ``registry`` a tenant may enqueue: the arguments' shape
    depends on the task."""
    return TaggedUnion("task", {task.name: _enqueue_variant(task) for task in registry if not task.internal})


_ENQUEUE_FIELDS = frozenset(EnqueueSchema._declared_fields)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


async def enqueue_is_plain(request: web.Request) -> bool:
    """``POST /v1/jobs``'s quick check (``operation``): ``plain_enqueue`` of its body and header,
    into ``request[PLAIN_ENQUEUE]``."""
    if not request.body_exists:
        return False
    body = await read_json(request)  # its 4xx (not JSON, too slow, ...) are the schemas' too
    plain = plain_enqueue(body, request.headers.get("Idempotency-Key"))
    if plain is None:
        return False
    request[PLAIN_ENQUEUE] = plain
    return True


def plain_enqueue(body: Any, key: str | None) -> tuple[dict[str, Any], str | None] | None:
    """The body and ``Idempotency-Key`` as the schemas would load them, when that is plain to see; else ``None``.

    ``{"task": <string>, "args": <object>, "defer_seconds": <number in range>}``, the last two
    optional, and no key or a well-formed one. Anything else goes to the schemas, which
    refuse it in their own words (or accept it).
    """
    if type(body) is not dict or not body.keys() <= _ENQUEUE_FIELDS:
        return None
    task = body.get("task")
    args = body.get("args", {})
    defer_s = body.get("defer_seconds", 0.0)
    if type(task) is not str or type(args) is not dict or type(defer_s) not in (int, float):
        return None  # JSON object keys are strings: a dict is what Dict(keys=String()) loads
    if not 0 <= defer_s <= MAX_DEFER_S:
        return None
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        return None
    return {"task": task, "args": args, "defer_seconds": float(defer_s)}, key


_LIST_FIELDS = frozenset(ListQuerySchema._declared_fields)


async def list_is_plain(request: web.Request) -> bool:
    """``GET /v1/jobs``'s quick check (``operation``): ``plain_list_query`` of its query, into
    ``request[PLAIN_LIST]``."""
    plain = plain_list_query(request.query)
    if plain is None:
        return False
    request[PLAIN_LIST] = plain
    return True


def plain_list_query(query: MultiMapping[str]) -> dict[str, Any] | None:
    """The query as ``ListQuerySchema`` would load it, when that is plain to see; else ``None``.

    Each of ``status``, ``limit`` and ``cursor`` at most once, with nothing else: a known
    status, a limit of 1 to 3 ASCII digits in range, a cursor of the characters one is made
    of. Anything else goes to the schema, which refuses it in its own words (or accepts it).
    """
    if len(query) > len(_LIST_FIELDS) or not query.keys() <= _LIST_FIELDS or len(set(query)) != len(query):
        return None
    plain: dict[str, Any] = {"limit": LIST_LIMIT_DEFAULT}
    limit = query.get("limit")
    if limit is not None:
        if not (0 < len(limit) <= 3 and limit.isascii() and limit.isdigit() and 1 <= int(limit) <= LIST_LIMIT_MAX):
            return None
        plain["limit"] = int(limit)
    status = query.get("status")
    if status is not None:
        if status not in STATUSES:
            return None
        plain["status"] = status
    cursor = query.get("cursor")
    if cursor is not None:
        if not _CURSOR.fullmatch(cursor):
            return None
        plain["cursor"] = cursor
    return plain

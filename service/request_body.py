"""Request bodies: within the size limit and a deadline, of a JSON media type, parsed as strict JSON.

Every JSON body of the API is read by ``read_json`` (the request parser of the OpenAPI layer,
``JsonBodyParser``, calls it), once, so that whatever a client sends ends as a 4xx problem:

- a media type that is not JSON, a charset other than UTF-8 or a content coding aiohttp
  cannot undo: 415 (an unknown charset once raised ``LookupError``, a 500);
- a body that has not arrived ``HTTP_BODY_TIMEOUT_S`` after it is asked for: 408;
- a body that does not decode (``Content-Encoding: gzip`` over bytes that are not gzip) or
  is not UTF-8: 400; a client that leaves mid-body: ``ClientDisconnected`` (logged, not an error);
- text that is not strict JSON: 400. Python's ``json`` accepts ``NaN`` and ``Infinity`` (not
  JSON: they could be stored and later sent on as invalid JSON), reads ``1e999`` as infinity,
  raises ``ValueError`` for an integer of more than 4,300 digits and ``RecursionError`` for
  arrays nested ~1,000 deep; each is refused here, and nesting beyond ``MAX_JSON_DEPTH``
  with them, so later code (validation, storage) never meets such a value.

The declared ``Content-Length`` is checked against ``MAX_BODY_BYTES`` before any of this, by
the request middleware; aiohttp enforces the same limit on a chunked body as it is read.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema
from webargs import core
from webargs.aiohttpparser import AIOHTTPParser

from jobs.serialization import NOT_READ, read_fast
from service.app_keys import SETTINGS
from service.errors import ClientDisconnected, Problem

__all__ = ["MAX_BODY_BYTES", "MAX_JSON_DEPTH", "JsonBodyParser", "parse_json", "read_json"]

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64  # objects and arrays inside each other; far below Python's recursion limit
_CONTENT_CODINGS = frozenset({"identity", "gzip", "deflate"})  # aiohttp undoes these as it reads
_UTF8 = frozenset({"utf-8", "utf8"})


class _NotJson(ValueError):
    """Text that Python's ``json`` would read but that is not JSON, or not a value this API keeps."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"{text} is beyond the range of a number")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` deep in ``value`` (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _not_json(reason: str) -> Problem:
    return Problem(400, f"the request body is not valid JSON: {reason}", errors={"json": [reason]})


def parse_json(body: bytes) -> Any:
    """``body`` as strict JSON; a 400 ``Problem`` that says why not.

    orjson reads most bodies (``read_fast``), and refuses everything refused here: a body it
    reads is strict JSON. What it leaves, ``_read_strictly`` reads or refuses with the reason.
    """
    value = read_fast(body)
    if value is NOT_READ:
        value = _read_strictly(body)
    # Counting brackets is cheap and bounds the depth from above (a string may hold some),
    # so only a body with many of them pays for the exact walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise _not_json(f"it nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _read_strictly(body: bytes) -> Any:
    """``body`` read by the standard library, held to strict JSON; a 400 ``Problem`` that says why not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_json(f"it is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _not_json(f"it nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise _not_json(f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except _NotJson as exc:
        raise _not_json(str(exc)) from None
    except ValueError:  # int() of a number longer than sys.get_int_max_str_digits()
        raise _not_json("a number has too many digits") from None


def _require_json_media_type(request: web.Request) -> None:
    media_type = request.content_type
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise Problem(415, f"the body must be application/json, not {media_type}")
    charset = request.charset
    if charset is not None and charset.lower() not in _UTF8:
        raise Problem(415, "a JSON body must be UTF-8 (charset=utf-8, or no charset)")
    coding = request.headers.get("Content-Encoding")
    if coding is not None and coding.strip().lower() not in _CONTENT_CODINGS:
        raise Problem(
            415,
            "the body's Content-Encoding must be gzip, deflate or none",
            headers={"Accept-Encoding": "gzip, deflate"},
        )


async def _read(request: web.Request) -> bytes:
    timeout_s = request.app[SETTINGS].http_body_timeout_s
    try:
        if request.content.is_eof():  # all of it has arrived (a small body comes with the head): no timer
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise Problem(408, f"the request body did not arrive within {timeout_s:g} s") from None
    except RequestPayloadError:  # aiohttp could not undo the Content-Encoding, or the chunked framing broke
        raise Problem(400, "the request body cannot be decoded as its headers declare", close_connection=True) from None
    except ConnectionError as exc:
        raise ClientDisconnected() from exc


async def read_json(request: web.Request) -> Any:
    """The request's body as strict JSON, or a 4xx ``Problem`` (see the module's description)."""
    _require_json_media_type(request)
    return parse_json(await _read(request))


class JsonBodyParser(AIOHTTPParser):
    """webargs's aiohttp parser (behind aiohttp-apigami's ``@request_schema``), reading JSON with ``read_json``."""

    async def load_json(self, req: web.Request, schema: Schema) -> Any:
        if not req.body_exists:
            return core.missing  # no body at all: the schema says what is missing
        return await read_json(req)

"""Schemathesis hooks for ``tests/test_schemathesis.py``: valid values that no schema can describe.

A list cursor is opaque (only one this API handed out is one), and a webhook may only go to
a receiver the deployment allows. The document says so in words; these hooks give the
cases that schemathesis means to be valid such values. Schemathesis loads this module
itself (``hooks`` in its configuration).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import schemathesis

from jobs.views import encode_cursor

RECEIVER_ENV = "SCHEMATHESIS_WEBHOOK_RECEIVER"


def _cursor_like(value: str) -> str:
    """A cursor of the shape this API hands out, derived from ``value`` so that a run stays reproducible."""
    digest = hashlib.sha256(value.encode()).digest()
    return encode_cursor(int.from_bytes(digest[:5], "big"), digest[5:21].hex())


@schemathesis.hook
def map_case(context: Any, case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
    """In a case meant to be valid, a cursor is one of this API's and a webhook goes to the allowed receiver."""
    meta = case.meta
    if meta is None or meta.generation.mode is not schemathesis.GenerationMode.POSITIVE:
        return case
    query = case.query
    if isinstance(query, dict) and isinstance(query.get("cursor"), str):
        case.query = {**query, "cursor": _cursor_like(query["cursor"])}
    body = case.body
    if isinstance(body, dict) and body.get("task") == "webhook.deliver":
        args = body.get("args")
        if isinstance(args, dict):
            case.body = {**body, "args": {**args, "url": os.environ[RECEIVER_ENV]}}
    return case

"""The OpenAPI declarations each kind of route shares, written once per kind.

``/v1`` routes take an API key (``v1_gate`` checks it for the whole prefix); the
operators' routes (``/internal/*``, the dashboard's actions) are ``Access.INTERNAL`` and
read Redis; the dashboard's pages for a browser are public. A new route of a kind cannot
forget part of its kind's document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from marshmallow import Schema

from service.openapi import REDIS_DOWN, Access, Answer, operation
from service.request_validation import Handler

__all__ = ["browser_operation", "operator_operation", "query_parameter", "v1_operation"]

v1_operation = functools.partial(operation, access=Access.API_KEY)
browser_operation = functools.partial(operation, tags=["dashboard"], access=Access.PUBLIC)
_operator = functools.partial(operation, access=Access.INTERNAL)


def query_parameter(name: str, description: str) -> dict[str, Any]:
    """An optional string parameter of the query, as ``operation(parameters=...)`` takes it."""
    return {"in": "query", "name": name, "schema": {"type": "string"}, "description": description}


def operator_operation(
    *,
    operation_id: str,
    summary: str,
    answers: Sequence[Answer],
    tags: Sequence[str] = ("operations",),
    problems: Mapping[int, str] = MappingProxyType({}),
    reads_redis: bool = True,
    description: str | None = None,
    parameters: Sequence[Mapping[str, Any]] = (),
    form: type[Schema] | None = None,
) -> Callable[[Handler], Handler]:
    """``service.openapi.operation`` for a route of operators only.

    ``reads_redis``: it answers 503 (``REDIS_DOWN`` unless ``problems`` words it otherwise)
    when Redis cannot answer.
    """
    return _operator(
        operation_id=operation_id,
        summary=summary,
        answers=answers,
        tags=tags,
        problems={503: REDIS_DOWN, **problems} if reads_redis else problems,
        description=description,
        parameters=parameters,
        form=form,
    )

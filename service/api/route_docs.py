"""The OpenAPI declarations each kind of route shares, written once per kind.

``/v1`` routes take an API key (``v1_middleware`` checks it for the whole prefix); the
operators' routes (``/internal/*``, the dashboard's actions) are ``Access.INTERNAL`` and
read Redis; the dashboard's pages for a browser are public. A new route of a kind cannot
forget part of its kind's document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from service.openapi import REDIS_DOWN, Access, Answer, operation

__all__ = ["browser_operation", "operator_operation", "query_parameter", "v1_operation"]

Handler = TypeVar("Handler", bound=Callable[..., Any])

v1_operation = functools.partial(operation, access=Access.API_KEY)
browser_operation = functools.partial(operation, tags=["dashboard"], access=Access.PUBLIC)


def query_parameter(name: str, description: str) -> dict[str, Any]:
    """An optional string parameter of the query, as ``operation(parameters=...)`` takes it."""
    return {"in": "query", "name": name, "schema": {"type": "string"}, "description": description}


def operator_operation(
    *,
    operation_id: str,
    summary: str,
    answers: Sequence[Answer],
    problems: Mapping[int, str] = MappingProxyType({}),
    description: str | None = None,
    parameters: Sequence[Mapping[str, Any]] = (),
    tags: Sequence[str] = ("operations",),
    reads_redis: bool = True,
) -> Callable[[Handler], Handler]:
    """``service.openapi.operation`` for a route of operators only.

    ``reads_redis``: it answers 503 (``REDIS_DOWN`` unless ``problems`` words it otherwise)
    when Redis cannot answer.
    """
    return operation(
        operation_id=operation_id,
        tags=tags,
        summary=summary,
        description=description,
        access=Access.INTERNAL,
        parameters=parameters,
        answers=answers,
        problems={503: REDIS_DOWN, **problems} if reads_redis else problems,
    )

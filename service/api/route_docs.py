"""The OpenAPI declarations each kind of route shares, written once per kind.

``/v1`` routes take an API key (``v1_middleware`` checks it for the whole prefix); the
operators' routes (``/internal/*``, the dashboard's actions) are ``Access.INTERNAL`` and
read Redis; the dashboard's pages for a browser are public. A new route of a kind cannot
forget part of its kind's document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from service.openapi import REDIS_DOWN, Access, operation

__all__ = ["browser_operation", "operator_operation", "query_parameter", "v1_operation"]

Handler = TypeVar("Handler", bound=Callable[..., Any])

v1_operation = functools.partial(operation, access=Access.API_KEY)
browser_operation = functools.partial(operation, tags=["dashboard"], access=Access.PUBLIC)
_operator = functools.partial(operation, tags=["operations"], access=Access.INTERNAL)


def query_parameter(name: str, description: str) -> dict[str, Any]:
    """An optional string parameter of the query, as ``operation(parameters=...)`` takes it."""
    return {"in": "query", "name": name, "schema": {"type": "string"}, "description": description}


def operator_operation(
    *, problems: Mapping[int, str] = MappingProxyType({}), reads_redis: bool = True, **declaration: Any
) -> Callable[[Handler], Handler]:
    """``service.openapi.operation`` for a route of operators only (``declaration``: its other arguments).

    ``reads_redis``: it answers 503 (``REDIS_DOWN`` unless ``problems`` words it otherwise)
    when Redis cannot answer. A wrong argument fails when the handler's module is imported.
    """
    return _operator(problems={503: REDIS_DOWN, **problems} if reads_redis else problems, **declaration)

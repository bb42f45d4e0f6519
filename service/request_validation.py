"""Validation of a request against its route's ``@request_schema``s, for those routes alone.

apigami's ``validation_middleware`` is called from a wrapper on each handler that has a
schema (``service.openapi.operation`` puts it there), so requests to every other route
pay nothing for it. A busy route may add a quick check of its common request, in plain
code: webargs and marshmallow cost more than the rest of such a request's own work.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp_apigami import validation_middleware

__all__ = ["Handler", "QuickCheck", "validating"]

# A request handler (or a decorator's argument) whose type the decorators keep.
Handler = TypeVar("Handler", bound=Callable[..., Any])
# A route's quick test of its common request: True when it has filled in what the schemas would.
QuickCheck = Callable[[web.Request], Awaitable[bool]]


def validating(handler: Handler, quick_check: QuickCheck | None = None) -> Handler:
    """``handler`` behind apigami's validation of its ``@request_schema``s (the wrapper keeps its documentation).

    When ``quick_check`` passes, the schemas are skipped; when it does not, they validate
    and word any error.
    """

    @functools.wraps(handler)
    async def validated(request: web.Request) -> web.StreamResponse:
        if quick_check is not None and await quick_check(request):
            return cast(web.StreamResponse, await handler(request))
        # apigami's middleware, called for this route alone: it reads the schemas from the route's
        # handler (this wrapper, which carries them), validates, and calls ``handler``.
        return await validation_middleware(request, handler)

    return cast(Handler, validated)

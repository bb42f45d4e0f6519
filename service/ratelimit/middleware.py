"""The limiter on ``/v1/*``: who is calling, which buckets the route spends, and the answer.

It runs after ``identity_middleware`` and before ``require_key_middleware``, so that
requests without a valid key are limited by client address before they get their 401
(guessing keys is throttled). ``GET /v1/rate-limit`` only reads the caller's buckets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis

from service.auth import client_address
from service.errors import Problem
from service.keys import IDENTITY, LIMITER, METRICS, POLICIES, RATE_LIMIT, SETTINGS
from service.ratelimit.limiter import Limiter, Outcome
from service.redis import connection_pool

__all__ = ["READ_ONLY_ROUTE", "limiter_ctx", "rate_limit_middleware"]

READ_ONLY_ROUTE = "GET /v1/rate-limit"


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Decide the request, refuse it (429, or 503 when fail-closed), else add the headers to its answer."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    app = request.app
    policies = app[POLICIES]
    identity = request[IDENTITY]
    if identity is not None:
        caller = identity.tenant
        plan = policies.plan(identity.plan)
    else:
        caller = "ip:" + client_address(request, app[SETTINGS].trust_proxy_headers)
        plan = policies.anonymous
    resource = request.match_info.route.resource
    route_key = f"{request.method} {resource.canonical}" if resource is not None else None
    route = plan.for_route(route_key)
    spend = identity is None or route_key != READ_ONLY_ROUTE
    decision = await app[LIMITER].decide(caller, route, spend=spend)
    headers = decision.headers()
    if decision.outcome == Outcome.LIMITED:
        violated = [s.name for s in decision.violated]
        raise Problem(
            429,
            f"rate limit exceeded ({', '.join(violated)}); retry after {headers['Retry-After']} s",
            type_="quota-exceeded",
            title="Too Many Requests",
            headers=headers,
            **{"violated-policies": violated},
        )
    if decision.outcome == Outcome.FAIL_CLOSED:
        raise Problem(
            503,
            "the rate limiter cannot reach Redis and this policy refuses requests until it can",
            type_="rate-limiter-unavailable",
            headers={**headers, "Retry-After": "1"},
        )
    request[RATE_LIMIT] = decision
    try:
        response = await handler(request)
    except Problem as problem:
        problem.headers.update(headers)
        raise
    except web.HTTPException as exc:
        exc.headers.update(headers)
        raise
    response.headers.update(headers)
    return response


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """The limiter with its own pool: no retries, because a script call may already have run."""
    settings = app[SETTINGS]
    deadline_s = settings.rate_limit_deadline_ms / 1000
    pool = connection_pool(
        settings.require_redis(),
        max_connections=settings.redis_max_connections,
        timeout_s=settings.redis_timeout_s,
        retries=0,
        client_name="ottoai-ratelimit",
    )
    redis = Redis.from_pool(pool)
    limiter = Limiter(redis, deadline_s=deadline_s)
    limiter.metrics.register(app[METRICS].registry)
    app[LIMITER] = limiter
    try:
        yield
    finally:
        await limiter.close()
        await redis.aclose()

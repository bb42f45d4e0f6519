"""The gate of ``/v1/*``: who is calling, whether the limiter admits them, then the key check.

One step rather than three (key look-up, limiter, key required), called by the request
middleware for that prefix (``service.middleware``) rather than as a middleware of its own:
each aiohttp middleware layer costs every request a coroutine and a call. The order is
the contract's: a request without a valid key is limited by client address before it gets its 401, so
guessing keys is throttled; with ``RATE_LIMIT_ENABLED=false`` it gets its 401 at once.
Which buckets a request spends, and which it only reads (``GET /v1/rate-limit``), is the
policy's to say (``service/ratelimit/policy.py``). A route's read that the limiter may carry
(``READS_AHEAD``) goes to Redis with the decision, in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from service.app_keys import (
    API_KEYS,
    IDENTITY,
    LIMIT_USAGE,
    LIMITER,
    METRICS,
    POLICIES,
    RATE_LIMIT,
    READ_AHEAD,
    READS_AHEAD,
    REDIS_ONCE,
    SETTINGS,
)
from service.callers import address_caller, client_address, key_required, presented_key
from service.errors import PROBLEM_CONTENT_TYPE, Problem, problem_body
from service.ratelimit.decision import Decision, Outcome
from service.ratelimit.limiter import Limiter
from service.ratelimit.limiter_redis import limiter_redis
from service.ratelimit.usage import LimitUsage
from service.redis import cancel_until_done

__all__ = ["limiter_ctx", "v1_gate"]


async def v1_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For a ``/v1/`` request: resolve the key into ``request[IDENTITY]``, decide the request, refuse
    it or add the headers."""
    app = request.app
    key = presented_key(request)
    identity = None
    if key is not None:
        keys = app[API_KEYS]
        try:
            identity = keys.cached(key)
        except KeyError:
            identity = await keys.lookup(key)
    request[IDENTITY] = identity
    limiter = app.get(LIMITER)
    if limiter is None:  # RATE_LIMIT_ENABLED=false
        if identity is None:
            raise key_required(request)
        return await handler(request)

    policies = app[POLICIES]
    if identity is not None:
        caller = identity.tenant
        plan = policies.plan(identity.plan)
    else:
        caller = address_caller(client_address(request, app[SETTINGS].trust_proxy_headers))
        plan = policies.anonymous
    resource = request.match_info.route.resource
    name = f"{request.method} {resource.canonical}" if resource is not None else None
    route = plan.for_route(name)
    decision = limiter.refuse_locally(caller, route)
    if decision is None:
        deciding = limiter.submit(caller, route)
        if identity is not None and limiter.carries_reads:
            read = app[READS_AHEAD].get(name or "")
            if read is not None:  # the handler's read, sent with the decision (thrown away on a refusal)
                request[READ_AHEAD] = limiter.ride(read(request, identity.tenant))
        decision = await deciding

    outcome = decision.outcome
    if outcome is Outcome.LIMITED:
        app[LIMIT_USAGE].refused(identity.tenant if identity is not None else None)
        return _quota_exceeded(decision)
    if outcome is Outcome.FAIL_CLOSED:
        raise Problem(
            503,
            "the rate limiter cannot reach Redis and this policy refuses requests until it can",
            type_="rate-limiter-unavailable",
            headers={**decision.headers(), "Retry-After": "1"},
        )
    if identity is None:
        problem = key_required(request)
        problem.headers.update(decision.headers())
        raise problem
    request[RATE_LIMIT] = decision
    app[LIMIT_USAGE].admitted(identity.tenant, decision)
    try:
        response = await handler(request)
    except Problem as problem:
        problem.headers.update(decision.headers())
        raise
    except web.HTTPException as exc:
        exc.headers.update(decision.headers())
        raise
    headers = response.headers
    if route.policy_header:
        headers["RateLimit-Policy"] = route.policy_header
    state = decision.state_header()
    if state is not None:
        headers["RateLimit"] = state
    return response


def _quota_exceeded(decision: Decision) -> web.Response:
    """The 429: its body depends only on the violated buckets and the wait, so it is rendered once per pair."""
    violated, headers = decision.refusal()
    headers["Content-Type"] = PROBLEM_CONTENT_TYPE
    return web.Response(status=429, body=_quota_exceeded_body(violated, headers["Retry-After"]), headers=headers)


@lru_cache(maxsize=1024)
def _quota_exceeded_body(violated: tuple[str, ...], retry_after: str) -> bytes:
    members: dict[str, Any] = {"violated-policies": list(violated)}
    return problem_body(
        Problem(
            429,
            f"rate limit exceeded ({', '.join(violated)}); retry after {retry_after} s",
            type_="quota-exceeded",
            title="Too Many Requests",
            headers=None,  # they vary with each request; the caller adds them
            **members,
        )
    )


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """The limiter on a no-retry client (a script call may already have run), and its usage counts.

    The limiter's Redis is ``RATE_LIMIT_REDIS_URL`` when set (a single server or a Redis
    Cluster: ``service/ratelimit/limiter_redis.py`` tells which), else the process's own.
    The usage is flushed every few seconds and once more on the way out, within the Redis timeout.
    The limiter warms up in the background: the process starts while Redis is away.
    """
    settings = app[SETTINGS]
    async with limiter_redis(app, settings) as (client, clusters):
        limiter = Limiter(
            client,
            deadline_s=settings.rate_limit_deadline_ms / 1000,
            cluster=clusters.cluster,
            carries_reads=not settings.separate_limiter_redis,
        )
        limiter.metrics.register(app[METRICS].registry)
        app[LIMITER] = limiter
        usage = app[LIMIT_USAGE] = LimitUsage(app[REDIS_ONCE])  # a counted increment must not be sent twice
        loop = asyncio.get_running_loop()
        warming = loop.create_task(limiter.warm_up(settings.redis_timeout_s))
        flushing = loop.create_task(usage.run())
        following = loop.create_task(clusters.follow(limiter))
        try:
            yield
        finally:
            await cancel_until_done(warming)
            await cancel_until_done(following)
            await cancel_until_done(flushing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(usage.flush(), settings.redis_timeout_s)
            await limiter.close()

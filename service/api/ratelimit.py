"""``GET /v1/rate-limit``: the caller's buckets, read without spending a token."""

from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, fields

from service.api.route_docs import v1_operation
from service.app_keys import IDENTITY, POLICIES, RATE_LIMIT
from service.errors import Problem
from service.openapi import Answer
from service.ratelimit.decision import Outcome


class BucketSchema(Schema):
    name = fields.String(required=True, metadata={"example": "burst"})
    capacity = fields.Integer(required=True, metadata={"example": 20})
    per_second = fields.Float(required=True, metadata={"example": 10})
    remaining = fields.Integer(required=True, metadata={"description": "whole tokens left", "example": 19})
    reset_s = fields.Float(required=True, metadata={"description": "seconds until the bucket is full again"})
    shadow = fields.Boolean(required=True, metadata={"description": "counted and reported, never enforced"})


class RateLimitSchema(Schema):
    identity = fields.String(required=True, metadata={"description": "the tenant of the API key"})
    plan = fields.String(
        required=True, metadata={"description": "the policy applied (default when the key's has none)"}
    )
    buckets = fields.List(fields.Nested(BucketSchema), required=True)


@v1_operation(
    operation_id="getRateLimit",
    tags=["rate limits"],
    summary="The caller's rate-limit buckets, read without spending a token",
    answers=[Answer(200, "The buckets of the caller's plan (none when rate limiting is off).", RateLimitSchema)],
    problems={503: "Redis did not answer within the limiter's deadline, or cannot answer now."},
)
async def get_rate_limit(request: web.Request) -> web.Response:
    identity = request[IDENTITY]
    assert identity is not None  # v1_gate let the request through
    plan = request.app[POLICIES].plan(identity.plan).name
    decision = request.get(RATE_LIMIT)
    if decision is None:  # the limiter is switched off (RATE_LIMIT_ENABLED=false)
        return web.json_response({"identity": identity.tenant, "plan": plan, "buckets": []})
    if decision.outcome == Outcome.FAIL_OPEN:
        raise Problem(503, "Redis did not answer in time; the buckets cannot be read now", headers={"Retry-After": "1"})
    buckets = [
        {
            "name": state.name,
            "capacity": state.bucket.capacity,
            "per_second": float(state.bucket.per_second),
            "remaining": state.remaining,
            "reset_s": round(state.full_in_s, 3),
            "shadow": state.bucket.shadow,
        }
        for state in decision.states
    ]
    return web.json_response({"identity": identity.tenant, "plan": plan, "buckets": buckets})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/rate-limit", get_rate_limit, allow_head=False)

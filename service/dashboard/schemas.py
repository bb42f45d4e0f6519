"""The OpenAPI schemas of the dashboard's answers: its document, its actions, its login form."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.api.cron import CronJobSchema
from service.api.internal import WorkerSchema
from service.api.job_error import ErrorSchema
from service.api.readiness import ReadySchema

__all__ = [
    "AbortedSchema",
    "DashboardSchema",
    "LoginFormSchema",
    "RetriedSchema",
    "SignedOutSchema",
]


class QueueSchema(Schema):
    queued = fields.Integer(required=True)
    deferred = fields.Integer(required=True)
    in_progress = fields.Integer(required=True)


class ThroughputSchema(Schema):
    first_minute_at = fields.String(
        required=True, metadata={"format": "date-time", "description": "start of the oldest minute"}
    )
    complete = fields.List(fields.Integer(), required=True, metadata={"description": "per minute, oldest first"})
    failed = fields.List(fields.Integer(), required=True, metadata={"description": "tries spent, job failed"})
    retried = fields.List(fields.Integer(), required=True, metadata={"description": "a try failed, another will run"})
    aborted = fields.List(fields.Integer(), required=True)


class DashboardCronSchema(Schema):
    enabled = fields.Boolean(required=True, metadata={"description": "ENABLE_CRON"})
    jobs = fields.List(
        fields.Nested(CronJobSchema), required=True, metadata={"description": "each with its last 5 runs"}
    )


class FailureErrorSchema(ErrorSchema):
    """A failed try's error: its own component of the document, under its own name."""


class FailureSchema(Schema):
    job_id = fields.String(required=True)
    task = fields.String(required=True)
    tenant = fields.String(required=True)
    error = fields.Nested(FailureErrorSchema, required=True)
    tries = fields.Integer(required=True, metadata={"description": "the try that failed"})
    max_tries = fields.Integer(required=True)
    will_retry = fields.Boolean(required=True, metadata={"description": "another try is scheduled"})
    failed_at = fields.String(required=True, metadata={"format": "date-time"})


class TenantUsageSchema(Schema):
    tenant = fields.String(required=True, metadata={"description": "`@anonymous`: every caller without a valid key"})
    lowest_remaining = fields.Float(
        required=True, allow_none=True, metadata={"description": "least share left in any of its buckets, 0 to 1"}
    )
    refused = fields.Integer(required=True, metadata={"description": "429s from the rate limiter"})


class LimitsSchema(Schema):
    enabled = fields.Boolean(required=True, metadata={"description": "RATE_LIMIT_ENABLED"})
    refused_per_minute = fields.List(fields.Integer(), required=True, metadata={"description": "oldest first"})
    tenants = fields.List(
        fields.Nested(TenantUsageSchema),
        required=True,
        metadata={"description": "over the last two minutes: nearest their limits first"},
    )


class RedisSchema(Schema):
    version = fields.String(required=True)
    used_memory_bytes = fields.Integer(required=True)
    maxmemory_bytes = fields.Integer(required=True, metadata={"description": "0: no limit"})
    eviction_policy = fields.String(required=True)
    connected_clients = fields.Integer(required=True)
    ops_per_s = fields.Integer(required=True)


class DashboardSchema(Schema):
    generated_at = fields.String(required=True, metadata={"format": "date-time"})
    refresh_s = fields.Float(required=True, metadata={"description": "how long this document is shared"})
    ready = fields.Nested(ReadySchema, allow_none=True, required=True)
    queue = fields.Nested(QueueSchema, allow_none=True, required=True)
    throughput = fields.Nested(ThroughputSchema, allow_none=True, required=True)
    workers = fields.List(fields.Nested(WorkerSchema), allow_none=True, required=True)
    cron = fields.Nested(DashboardCronSchema, allow_none=True, required=True)
    failures = fields.List(
        fields.Nested(FailureSchema),
        allow_none=True,
        required=True,
        metadata={"description": "the latest failed try of each job, newest first"},
    )
    limits = fields.Nested(LimitsSchema, allow_none=True, required=True)
    redis = fields.Nested(RedisSchema, allow_none=True, required=True)
    unavailable = fields.List(
        fields.String(), required=True, metadata={"description": "sections that could not be read now (null above)"}
    )


class RetriedSchema(Schema):
    job_id = fields.String(required=True, metadata={"description": "the new job"})
    tenant = fields.String(required=True)
    task = fields.String(required=True)
    retry_of = fields.String(required=True, metadata={"description": "the failed job"})


class AbortedSchema(Schema):
    job_id = fields.String(required=True)
    tenant = fields.String(required=True)
    outcome = fields.String(
        required=True,
        validate=validate.OneOf(["aborted", "running"]),
        metadata={"description": "aborted at once, or running (its worker cancels it shortly)"},
    )


class LoginFormSchema(Schema):
    token = fields.String(required=True, metadata={"description": "`INTERNAL_TOKEN`"})


class SignedOutSchema(Schema):
    signed_out = fields.Boolean(required=True)

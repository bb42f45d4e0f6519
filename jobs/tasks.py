"""The tasks this deployment runs. Applications add theirs here the same way.

Each task is an ``async def`` taking a ``JobContext`` and its arguments as keywords,
registered on ``TASKS`` with a marshmallow schema (unknown fields are refused), a
timeout, a number of tries and a backoff. Its return value must be JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any

from marshmallow import Schema, fields, validate

from jobs import maintenance, webhook
from jobs.registry import JobContext, Registry
from service.backoff import Backoff

__all__ = ["TASKS"]

TASKS = Registry()
maintenance.register(TASKS)  # the operations guide's maintenance jobs (jobs/maintenance.py)


class PingArgs(Schema):
    pass


# Two tries: a ping killed with its worker is sent again (the cron canary, jobs/cron.py, relies on it).
@TASKS.task("diagnostics.ping", schema=PingArgs(), timeout_s=5.0, max_tries=2)
async def ping(job: JobContext) -> dict[str, Any]:
    """Prove the path API → Redis → worker end to end."""
    return {"pong": True, "worker": job.worker_id}


class SleepArgs(Schema):
    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=300))


@TASKS.task("diagnostics.sleep", schema=SleepArgs(), timeout_s=310.0, max_tries=3)
async def sleep(job: JobContext, seconds: float) -> dict[str, Any]:
    """Sleep, for trying shutdown, abort and recovery."""
    await asyncio.sleep(seconds)
    return {"slept_s": seconds, "worker": job.worker_id}


class DeliverArgs(Schema):
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    payload = fields.Raw(required=True)


@TASKS.task(
    "webhook.deliver",
    schema=DeliverArgs(),
    timeout_s=30.0,
    max_tries=5,
    backoff=Backoff(base_s=2.0, cap_s=300.0),
    check=webhook.check_args,
)
async def deliver(job: JobContext, url: str, payload: Any) -> dict[str, Any]:
    """POST ``payload`` to ``url``, signed with the job's tenant's secret (see ``jobs.webhook``)."""
    return await webhook.deliver(
        url, payload, job_id=job.job_id, tenant=job.tenant, settings=job.settings, redis=job.redis
    )

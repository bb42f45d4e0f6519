"""Every Redis key of the jobs system, in one place.

arq's own keys (``arq:queue``, ``arq:job:<id>``, ``arq:in-progress:<id>``, ``arq:result:<id>``,
``arq:retry:<id>``, ``arq:abort``) keep arq's names so that arq's worker runs the jobs
unchanged. Ours sit beside them under ``jobs:``.

Fairness: ``arq:queue`` keeps every unfinished job by due time, as arq knows it, but the
claim order is ours: each tenant's unfinished jobs are also in ``jobs:ready:<tenant>``
(by due time), and ``jobs:tenants`` holds the tenants that have any, scored by when each
was last looked at by a claim, so claims serve tenants in turn (``claim.lua``).
"""

from __future__ import annotations

import hashlib

from arq.constants import (
    abort_jobs_ss,
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

__all__ = [
    "ABORT_KEY",
    "IN_PROGRESS_PREFIX",
    "JOB_PREFIX",
    "QUEUE_KEY",
    "READY_PREFIX",
    "RESULT_PREFIX",
    "RETRY_PREFIX",
    "SYSTEM_TENANT",
    "TENANTS_KEY",
    "WAKE_KEY",
    "WAKE_TOKENS_MAX",
    "WORKERS_KEY",
    "idempotency_key",
    "index_key",
    "ready_key",
    "webhooks_key",
    "worker_key",
]

QUEUE_KEY = default_queue_name
JOB_PREFIX = job_key_prefix
IN_PROGRESS_PREFIX = in_progress_key_prefix
RESULT_PREFIX = result_key_prefix
RETRY_PREFIX = retry_key_prefix
ABORT_KEY = abort_jobs_ss

# A list that idle workers block on (BLPOP); an enqueue pushes one token. Tokens pile up
# only while no worker is blocked, so a few are enough to cover the race between a
# worker's last look at the queue and its next BLPOP.
WAKE_KEY = "jobs:wake"
WAKE_TOKENS_MAX = 8

# Tenants with unfinished jobs, scored by the order in which claims last looked at them.
TENANTS_KEY = "jobs:tenants"
READY_PREFIX = "jobs:ready:"
# The tenant of jobs that no API caller enqueued (cron runs): a name no API key can have.
SYSTEM_TENANT = "@system"

# The set of worker ids; each worker's heartbeat is its own key with a TTL.
WORKERS_KEY = "jobs:workers"


def worker_key(worker_id: str) -> str:
    return f"jobs:worker:{worker_id}"


def index_key(tenant: str) -> str:
    """A tenant's jobs, scored by enqueue time in µs (the only way jobs are listed)."""
    return f"jobs:index:{tenant}"


def ready_key(tenant: str) -> str:
    """A tenant's unfinished jobs (queued, deferred, running), scored by due time in ms: its claim order
    and, by its size, its count of unfinished jobs."""
    return READY_PREFIX + tenant


def webhooks_key(tenant: str) -> str:
    """A tenant's webhook settings: its signing-secret generations and its receivers (``jobs.webhook_tenants``)."""
    return f"jobs:webhooks:{tenant}"


def idempotency_key(tenant: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"jobs:idempotency:{tenant}:{digest}"

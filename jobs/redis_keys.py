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
    "CRON_JOB_PREFIX",
    "CRON_KEY",
    "FAILURES_KEPT",
    "FAILURES_KEY",
    "IDEMPOTENCY_PATTERN",
    "IDEMPOTENCY_TTL_S",
    "INDEX_PATTERN",
    "IN_PROGRESS_PREFIX",
    "JOB_PREFIX",
    "MAINTENANCE_CURSORS_KEY",
    "MAINTENANCE_FINDINGS_KEY",
    "MAINTENANCE_STATS_SAMPLE_KEY",
    "MINUTE_STATS_PREFIX",
    "MINUTE_STATS_TTL_S",
    "QUEUE_KEY",
    "READY_PREFIX",
    "RESULT_PREFIX",
    "RETRY_PREFIX",
    "SYSTEM_TENANT",
    "TENANTS_KEY",
    "WAKE_KEY",
    "WAKE_TOKENS_MAX",
    "WORKERS_KEY",
    "cron_runs_key",
    "idempotency_key",
    "index_key",
    "minute_stats_key",
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
# worker's last look at the queue and its next BLPOP (wake.lua pushes none past WAKE_TOKENS_MAX).
WAKE_KEY = "jobs:wake"
WAKE_TOKENS_MAX = 8

# Tenants with unfinished jobs, scored by the order in which claims last looked at them.
TENANTS_KEY = "jobs:tenants"
READY_PREFIX = "jobs:ready:"
# The tenant of jobs that no API caller enqueued (cron runs): a name no API key can have.
SYSTEM_TENANT = "@system"

# The set of worker ids; each worker's heartbeat is its own key with a TTL.
WORKERS_KEY = "jobs:workers"


# The maintenance jobs' last finding per check (a hash: check -> JSON), read by every
# process's /metrics; the previous INFO stats sample, from which any worker computes rates;
# and where each bounded cleanup pass left off (a hash: what -> SCAN cursor).
MAINTENANCE_FINDINGS_KEY = "jobs:maintenance:findings"
MAINTENANCE_STATS_SAMPLE_KEY = "jobs:maintenance:stats-sample"
MAINTENANCE_CURSORS_KEY = "jobs:maintenance:cursors"

# SCAN patterns of the per-tenant keys below.
INDEX_PATTERN = "jobs:index:*"
IDEMPOTENCY_PATTERN = "jobs:idempotency:*"

# Cron runs are jobs whose ids start with this (``jobs.cron.RunId``); no tenant's index holds them.
CRON_JOB_PREFIX = "cron:"
# One hash of every cron job's state: ``<name>`` the id of its current run (pending or running),
# ``<name>:paused``, ``<name>:schedule`` (the text of the schedule in force), ``<name>:ok`` (the
# end of its last successful run, ms), ``<name>:n:<outcome>`` (runs by outcome).
CRON_KEY = "jobs:cron"


# What the dashboard shows of the work (``jobs.failures``): jobs finished per minute by outcome,
# a hash per Unix minute kept MINUTE_STATS_TTL_S, and the latest failed tries, newest first.
MINUTE_STATS_PREFIX = "jobs:minute:"
MINUTE_STATS_TTL_S = 7200
FAILURES_KEY = "jobs:failures"
FAILURES_KEPT = 30


def minute_stats_key(minute: int) -> str:
    """Jobs finished in one Unix minute (``epoch s // 60``), by outcome."""
    return f"{MINUTE_STATS_PREFIX}{minute}"


def cron_runs_key(name: str) -> str:
    """A cron job's last runs, newest first (JSON records)."""
    return f"jobs:cron:runs:{name}"


def worker_key(worker_id: str) -> str:
    return f"jobs:worker:{worker_id}"


def index_key(tenant: str) -> str:
    """A tenant's jobs, scored by enqueue time in µs (the only way jobs are listed)."""
    return f"jobs:index:{tenant}"


# An idempotency record lives this long (s); the cleanup gives one back its TTL if it lost it.
IDEMPOTENCY_TTL_S = 86_400


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

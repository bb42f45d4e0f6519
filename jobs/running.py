"""A worker on its own Redis pools (``create_worker``), and one running in this event loop (``running_worker``).

``python -m jobs``, ``python -m service dev`` and the tests get their workers here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arq.connections import ArqRedis

from jobs.cron import SCHEDULE, Schedule
from jobs.registry import Registry
from jobs.tasks import TASKS
from jobs.worker import Worker
from jobs.worker_settings import WorkerSettings
from service.metrics import Metrics
from service.redis import connection_pool
from service.settings import Settings

__all__ = ["create_worker", "running_worker"]


def create_worker(
    settings: Settings,
    *,
    registry: Registry = TASKS,
    schedule: Schedule = SCHEDULE,
    metrics: Metrics | None = None,
    **options: Any,
) -> Worker:
    """A worker on its own Redis pools, built from ``WorkerSettings`` (``options`` set its fields: ``burst``, ...).

    It runs the cron ``schedule`` with ``ENABLE_CRON``, unless in burst mode (a burst worker
    stops when nothing is due, and a cron job always has a run to come). With ``metrics``
    (the process's registry) it reports its job runs and pools there. Call it inside the
    event loop that will run the worker.
    """
    cron = schedule if settings.enable_cron and not options.get("burst") else None
    worker_settings = WorkerSettings.from_settings(settings, registry=registry, schedule=cron, **options)
    pool = ArqRedis(
        connection_pool(
            settings.require_redis(),
            max_connections=settings.worker_concurrency + 5,
            timeout_s=settings.redis_timeout_s,
            retries=0,  # a claim or a finish must never be sent twice
            client_name="ottoai-worker",
        ),
        job_serializer=worker_settings.job_serializer,
        job_deserializer=worker_settings.job_deserializer,
        default_queue_name=worker_settings.queue_name,
    )
    return Worker(settings, worker_settings, redis_pool=pool, schedule=cron, metrics=metrics)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    *,
    registry: Registry = TASKS,
    schedule: Schedule = SCHEDULE,
    metrics: Metrics | None = None,
    **options: Any,
) -> AsyncIterator[Worker]:
    """A worker running in this event loop; leaving stops it gracefully (``JOB_GRACE_S``)."""
    worker = create_worker(settings, registry=registry, schedule=schedule, metrics=metrics, **options)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(settings.job_grace_s)
